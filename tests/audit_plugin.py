"""A test plugin: a ``synthetic`` provider listing N generated instances, and a recorder of
``imm_audit_finding`` calls.

immd loads plugins only from the ``imm`` entry-point group, so tests give it this module through a
throw-away ``*.dist-info`` on ``PYTHONPATH`` (:func:`install`); in-process users (the bench) pass
the module to ``Daemon(settings, extra_plugins=[audit_plugin])``.

Provider settings: ``count`` (or ``count_file``, a file holding the count, read at each listing,
so a test can make instances disappear), ``region``, ``image_id``, ``digest`` (the imm:digest
tag), ``rollout``, ``service``, ``launched_at``, ``page_size`` and ``page_delay_s`` (a pause per
page, like a cloud API's pagination latency).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from imm.plugins.base import ImageInfo, Instance, LaunchRequest, Provider
from imm.plugins.hookspecs import hookimpl
from imm.plugins.registry import ProviderRegistry

FINDINGS_LOG_ENV = "IMM_TEST_FINDINGS_LOG"


class SyntheticProvider(Provider):
    kind: ClassVar[str] = "synthetic"

    def count(self) -> int:
        path = self.settings.get("count_file")
        if path:
            return int(Path(path).read_text().strip())
        return int(self.settings.get("count", 100))

    def list_instances(self, tags: Mapping[str, str] | None = None) -> Iterator[Instance]:
        s = self.settings
        base_tags = {k: str(s[v]) for k, v in (("imm:digest", "digest"), ("imm:rollout", "rollout"),
                                                ("imm:service", "service")) if s.get(v)}
        page = int(s.get("page_size", 1000))
        delay = float(s.get("page_delay_s", 0))
        launched = int(s.get("launched_at", time.time()))
        region, image_id = str(s.get("region", "synth-1")), str(s.get("image_id", "ami-synth"))
        for n in range(self.count()):
            if delay and n % page == 0:
                time.sleep(delay)
            yield Instance(id=f"i-{n:08x}", provider=self.name, region=region,
                           image_id=image_id, state="running", launched_at=launched,
                           tags=dict(base_tags), address=None)

    def launch(self, request: LaunchRequest) -> list[Instance]:
        raise NotImplementedError("the synthetic provider only lists")

    def terminate(self, instance_ids: Sequence[str]) -> None:
        raise NotImplementedError("the synthetic provider only lists")

    def describe_image(self, region: str, image_id: str) -> ImageInfo | None:
        return ImageInfo(region=region, image_id=image_id)


@hookimpl
def imm_register_providers(registry: ProviderRegistry) -> None:
    registry.add(SyntheticProvider)


@hookimpl
def imm_audit_finding(finding: dict[str, Any]) -> None:
    path = os.environ.get(FINDINGS_LOG_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(finding, sort_keys=True) + "\n")


def install(where: Path) -> dict[str, str]:
    """Make immd load this module as plugin ``audit_test``; returns the env to start it with."""
    dist = where / "imm_test_audit-0.0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: imm-test-audit\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text("[imm]\naudit_test = audit_plugin\n")
    paths = [str(where), str(Path(__file__).resolve().parent)]
    old = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": os.pathsep.join(paths + ([old] if old else []))}
