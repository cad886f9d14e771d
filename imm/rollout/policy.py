"""Preconditions every rollout must pass before anything is launched.

Each rule has a name; a refusal names the rule, the value and what to do.
"""

from __future__ import annotations

from typing import Any

from ..catalog.keys import KeyRing
from ..catalog.service import Catalog
from ..catalog.verify import check_row
from ..errors import PolicyRefused
from ..store import Connection, query, query_one
from .services import Service


def refuse(rule: str, message: str, **detail: Any) -> PolicyRefused:
    return PolicyRefused(f"refused by rule '{rule}': {message}", detail={"rule": rule, **detail})


def check(conn: Connection, catalog: Catalog, keyring: KeyRing, service: Service,
          digest: str) -> dict[str, Any]:
    """Run the built-in rules; return the image row and its artifact per target. Raises."""
    row = query_one(conn, "SELECT * FROM images WHERE digest=?", (digest,))
    assert row is not None  # resolved by the caller
    label = f"{row['name']}@{row['version']} ({digest[:19]})"
    problems = check_row(conn, keyring, "images", row)
    if problems:
        raise refuse("signed-by-trusted-key",
                     f"image {label} has no valid signature from a trusted key: "
                     f"{problems[0]['problem']}; re-register it or restore the catalog",
                     image=digest)
    rev = catalog.revocation_of(conn, digest)
    if rev:
        raise refuse("not-revoked", f"image {label} is revoked (reason: {rev['reason']}, by "
                     f"{rev['actor']} at {rev['at']}); pick another or restore it", image=digest)
    artifacts: dict[str, str] = {}
    missing = []
    for t in service.targets:
        a = query_one(conn, "SELECT image_id FROM artifacts WHERE digest=? AND provider=? AND "
                            "region=?", (digest, t.provider, t.region))
        if a is None:
            missing.append(f"{t.provider}/{t.region}")
        else:
            artifacts[f"{t.provider}/{t.region}"] = a["image_id"]
    if missing:
        raise refuse("artifact-in-every-region",
                     f"image {label} has no artifact in {', '.join(missing)}; copy it there and "
                     "record it with 'immctl image artifact add'", image=digest, missing=missing)
    if row["ladder_step"] < service.min_ladder_step:
        raise refuse("min-ladder-step",
                     f"image {label} is at ladder step {row['ladder_step']} but service "
                     f"{service.name} needs at least {service.min_ladder_step}; bake more of it "
                     "into the image", image=digest)
    if service.channel:
        on = query(conn, "SELECT seq FROM channel_history WHERE name=? AND digest=?",
                   (service.channel, digest))
        if not on:
            raise refuse("allowed-channel",
                         f"image {label} was never published on channel {service.channel}, the "
                         f"only channel service {service.name} takes; 'immctl channel set "
                         f"{service.channel} REF' first", image=digest)
    return {"image": row, "artifacts": artifacts}
