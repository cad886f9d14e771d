"""Command groups beyond the catalog (rollouts, services, instances, audit) register here."""

from __future__ import annotations

from typing import Any


def register(sub: Any, add: Any, group: Any) -> None:
    """Add the command groups of the rollout and audit layers to immctl's parser."""
    from . import rollout_cmds

    rollout_cmds.register(sub, add, group)
    from . import audit_cmds

    audit_cmds.register(sub, add, group)
    from . import trust_cmds

    trust_cmds.register(sub, add, group)
