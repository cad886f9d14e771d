"""The image for channel X on provider P in region R" in one call.

This is what infrastructure code asks (Terraform's ``external`` data source through
``immctl channel resolve``, or ``GET /v1/channels/{name}/resolve``): the provider's own image id,
ready to launch, or a refusal that says what is missing and how to fix it.
"""

from __future__ import annotations

from typing import Any

from ..errors import Conflict, NotFound
from ..store import Connection, query
from .service import Catalog


def resolve_artifact(conn: Connection, catalog: Catalog, channel: str, provider: str,
                     region: str | None = None) -> dict[str, Any]:
    """The artifact of ``channel``'s current image in ``provider``/``region``.

    ``region`` may be left out when the image has exactly one artifact in ``provider``. A revoked
    head is refused: infrastructure code must not launch it.
    """
    head = catalog.channel(conn, channel)
    digest = head["digest"]
    label = f"{head['image'] or digest} ({digest[:19]})"
    rev = catalog.revocation_of(conn, digest)
    if rev:
        raise Conflict(f"channel {channel} points at {label}, which is revoked (reason: "
                       f"{rev['reason']}, by {rev['actor']} at {rev['at']}); move the channel "
                       f"with 'immctl channel set {channel} REF'",
                       detail={"channel": channel, "digest": digest})
    arts = query(conn, "SELECT provider, region, image_id FROM artifacts WHERE digest=? "
                       "ORDER BY provider, region", (digest,))
    mine = [a for a in arts if a["provider"] == provider
            and (region is None or a["region"] == region)]
    if len(mine) == 1:
        a = mine[0]
        return {"channel": channel, "image": head["image"], "digest": digest,
                "provider": provider, "region": a["region"], "image_id": a["image_id"],
                "seq": head["seq"], "ledger_index": head["ledger_index"]}
    where = f"{provider}/{region}" if region else provider
    have = [f"{a['provider']}/{a['region']}" for a in arts]
    if len(mine) > 1:
        raise NotFound(f"{label} has artifacts in several regions of {provider} "
                       f"({', '.join(a['region'] for a in mine)}); pass --region",
                       detail={"candidates": have})
    hint = ("; it has none anywhere: record one with 'immctl image artifact add'" if not have
            else f"; it has {', '.join(have)}")
    elsewhere = [a for a in arts if a["provider"] != provider
                 and (region is None or a["region"] == region)]
    if elsewhere:
        other = elsewhere[0]
        hint += (f". The image is recorded under provider {other['provider']!r} in "
                 f"{other['region']} ({other['image_id']}): import it under this provider's "
                 f"name with 'immctl image import-packer FILE --provider {provider}', or record "
                 f"it with 'immctl image artifact add {digest[:19]} --provider {provider} "
                 f"--region {other['region']} --image-id {other['image_id']}'")
    raise NotFound(f"channel {channel} points at {label}, which has no artifact in {where}"
                   + hint, detail={"channel": channel, "digest": digest, "available": have})


def other_provider_hint(conn: Connection, digest: str, provider: str, region: str,
                        ref: str) -> str:
    """When an artifact is missing in provider/region but recorded there under another provider
    name (a Packer import under the builder's cloud name, say), the words that say so."""
    rows = query(conn, "SELECT provider, image_id FROM artifacts WHERE digest=? AND region=? "
                       "AND provider != ? ORDER BY provider", (digest, region, provider))
    if not rows:
        return ""
    r = rows[0]
    return (f"; it is recorded in {region} under provider {r['provider']!r} ({r['image_id']}), "
            f"not {provider!r}: re-import with 'immctl image import-packer FILE --provider "
            f"{provider}' or 'immctl image artifact add {ref} --provider {provider} "
            f"--region {region} --image-id {r['image_id']}'")
