"""The canary's "approve" step: parsed from the config, planned at its place, tied to the
service's protect block."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from imm.errors import ConfigError
from imm.rollout import approve
from imm.rollout.plan import make_plan
from imm.rollout.services import parse_service

RAW = {"targets": [{"provider": "local", "count": 2}], "strategy": "canary",
       "canary_steps": [20, "approve", 50], "approve_timeout_s": 90}


def test_plan_holds_the_split_at_approve() -> None:
    svc = parse_service("web", RAW, {"local"}, set())
    ops = [(s["op"], s.get("pct"), s.get("seconds")) for s in make_plan(svc, "canary")
           if s["op"] in ("shift", "pause", "approve")]  # launches and retirements between
    assert ops == [("shift", 20, None), ("pause", None, 5.0), ("approve", None, 90.0),
                   ("shift", 50, None), ("pause", None, 5.0), ("shift", 100, None)]


@pytest.mark.parametrize("steps", [["approve", "later"], [50, "approve", 20], [True]])
def test_bad_canary_steps(steps: list) -> None:
    with pytest.raises(ConfigError, match="canary_steps"):
        parse_service("web", {**RAW, "canary_steps": steps}, {"local"}, set())


def test_protect_block_is_required_and_bounds_the_wait() -> None:
    svc = parse_service("web", RAW, {"local"}, set())
    ctx = SimpleNamespace(settings=SimpleNamespace(raw={}, source="t.toml"))
    with pytest.raises(ConfigError, match=r"no \[protect.web\] block"):
        approve.protect_for(ctx, svc)  # type: ignore[arg-type]
    ctx.settings.raw = {"protect": {"web": {"approvals": 2, "approvers": ["a", "b"]}}}
    p = approve.protect_for(ctx, svc)  # type: ignore[arg-type]
    assert p.approvals == 2 and p.expires_s == 90
