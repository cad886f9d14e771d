"""Services as the config declares them: ``[services.NAME]``.

    [services.web]
    targets = [{ provider = "local", region = "local", count = 2 }]   # or provider/region/count
    size = ""                       # instance size (cloud instance type)
    router = "haproxy"              # a [routers.NAME]
    route = "web"                   # the route in that router (haproxy backend, DNS name, LB)
    route_settings = { bind = "127.0.0.1:8080", health_path = "/healthz" }
    strategy = "blue-green"         # blue-green | rolling | canary
    health_timeout_s = 60           # a new instance must pass its health check within this
    drain_timeout_s = 30            # how long old instances' sessions may take to finish
    bake_time_s = 0                 # blue-green: keep blue this long after the switch
    batch = "50%"                   # rolling: instances per batch, a count or a percentage
    canary_steps = [10, 50]         # canary: traffic percentages before 100
    canary_pause_s = 5              # canary: pause (and gate) after each step
    min_ladder_step = 0             # refuse images below this ladder step
    channel = "web/production"      # only images published on this channel may roll out
    max_instance_age_s = 0          # audit: instances older than this are 'too-old' (0 = off)
    heal_grace_s = 30               # outside rollouts: replace an instance unhealthy this long
    heal_max_per_min = 3            # ... at most this many replacements a minute, then a finding
    quarantine_keep = 3             # replaced instances kept stopped for inspection (oldest go)
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import BadRequest, ConfigError
from .states import BLUE_GREEN, STRATEGIES

NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@dataclass
class Target:
    provider: str
    region: str
    count: int


@dataclass
class Service:
    name: str
    targets: list[Target]
    router: str | None
    route: str | None
    route_settings: dict[str, Any] = field(default_factory=dict)
    size: str | None = None
    strategy: str = BLUE_GREEN
    health_timeout_s: float = 60.0
    drain_timeout_s: float = 30.0
    bake_time_s: float = 0.0
    batch: str = "1"
    canary_steps: list[int] = field(default_factory=lambda: [10, 50])
    canary_pause_s: float = 5.0
    min_ladder_step: int = 0
    channel: str | None = None
    max_instance_age_s: int = 0
    heal_grace_s: float = 30.0
    heal_max_per_min: int = 3
    quarantine_keep: int = 3
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return sum(t.count for t in self.targets)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("settings")
        return d


def _num(where: str, value: Any, lo: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < lo:
        raise ConfigError(f"{where} must be a number ≥ {lo}, got {value!r}")
    return float(value)


def _int(where: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"{where} must be an integer ≥ {lo}, got {value!r}")
    return value


def parse_service(name: str, raw: dict[str, Any], providers: set[str],
                  routers: set[str]) -> Service:
    where = f"[services.{name}]"
    if not NAME.match(name):
        raise ConfigError(f"{where}: service names are lowercase letters, digits and '-'")
    targets_raw = raw.get("targets")
    if targets_raw is None:
        targets_raw = [{"provider": raw.get("provider"), "region": raw.get("region", "local"),
                        "count": raw.get("count", 1)}]
    if not isinstance(targets_raw, list) or not targets_raw:
        raise ConfigError(f"{where}: targets must be a non-empty list of "
                          "{{provider, region, count}}")
    targets = []
    for i, t in enumerate(targets_raw):
        if not isinstance(t, dict):
            raise ConfigError(f"{where}: targets[{i}] must be a table")
        p = t.get("provider")
        if p not in providers:
            raise ConfigError(f"{where}: targets[{i}].provider {p!r} is not a configured provider "
                              f"(have: {', '.join(sorted(providers)) or 'none'})")
        count = t.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigError(f"{where}: targets[{i}].count must be an integer ≥ 1")
        targets.append(Target(provider=p, region=str(t.get("region", "local")), count=count))
    router = raw.get("router")
    if router is not None and router not in routers:
        raise ConfigError(f"{where}: router {router!r} is not a configured router "
                          f"(have: {', '.join(sorted(routers)) or 'none'})")
    strategy = raw.get("strategy", BLUE_GREEN)
    if strategy not in STRATEGIES:
        raise ConfigError(f"{where}: strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    steps = raw.get("canary_steps", [10, 50])
    if not isinstance(steps, list) or not all(isinstance(s, int) and 0 < s < 100 for s in steps) \
            or steps != sorted(steps):
        raise ConfigError(f"{where}: canary_steps must be increasing percentages between 1 and 99")
    ladder = raw.get("min_ladder_step", 0)
    if not isinstance(ladder, int) or not 0 <= ladder <= 4:
        raise ConfigError(f"{where}: min_ladder_step must be 0..4")
    batch = str(raw.get("batch", "1"))
    parse_batch(batch, 1, where)
    return Service(
        name=name, targets=targets, router=router,
        route=str(raw.get("route", name)) if router else None,
        route_settings=dict(raw.get("route_settings", {})), size=raw.get("size") or None,
        strategy=strategy,
        health_timeout_s=_num(f"{where} health_timeout_s", raw.get("health_timeout_s", 60), 1),
        drain_timeout_s=_num(f"{where} drain_timeout_s", raw.get("drain_timeout_s", 30), 0),
        bake_time_s=_num(f"{where} bake_time_s", raw.get("bake_time_s", 0), 0),
        batch=batch, canary_steps=list(steps),
        canary_pause_s=_num(f"{where} canary_pause_s", raw.get("canary_pause_s", 5), 0),
        min_ladder_step=ladder, channel=raw.get("channel") or None,
        max_instance_age_s=int(raw.get("max_instance_age_s", 0)),
        heal_grace_s=_num(f"{where} heal_grace_s", raw.get("heal_grace_s", 30), 0),
        heal_max_per_min=_int(f"{where} heal_max_per_min", raw.get("heal_max_per_min", 3), 1),
        quarantine_keep=_int(f"{where} quarantine_keep", raw.get("quarantine_keep", 3), 0),
        settings=dict(raw),
    )


def parse_batch(batch: str, total: int, where: str = "batch") -> int:
    """Instances per rolling batch: a count, or a percentage of the service's count."""
    text = batch.strip()
    try:
        if text.endswith("%"):
            pct = float(text[:-1])
            if not 0 < pct <= 100:
                raise ValueError
            return max(1, int(total * pct / 100))
        n = int(text)
        if n < 1:
            raise ValueError
        return n
    except ValueError:
        raise BadRequest(f"{where} {batch!r} must be a count ≥ 1 or a percentage like 25%") from None


def load_services(raw: dict[str, dict[str, Any]], providers: set[str],
                  routers: set[str]) -> dict[str, Service]:
    return {name: parse_service(name, entry, providers, routers) for name, entry in raw.items()}
