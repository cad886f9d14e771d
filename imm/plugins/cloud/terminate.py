"""What every cloud provider checks before it terminates: which ids are already gone (logged,
not an error) and which instances imm did not launch (no ``imm:service`` tag), which it refuses
unless the provider's ``terminate_untagged`` allows it."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from ...errors import BadRequest
from ..base import TAG_SERVICE


def screen(where: str, ids: Sequence[str], tags: Mapping[str, Mapping[str, str]], *,
           terminate_untagged: bool, log: logging.Logger, marked_by: str = "tag",
           verb: str = "terminate") -> None:
    """``tags``: the instances found, by id, with their tags (``marked_by`` says where the cloud
    keeps them, for the message). Logs the ids not found; refuses untagged ones, naming them."""
    gone = sorted(set(ids) - set(tags))
    if gone:
        log.info("%s: %s already gone", where, ", ".join(gone))
    if terminate_untagged:
        return
    foreign = sorted(i for i, t in tags.items() if TAG_SERVICE not in t)
    if foreign:
        raise BadRequest(f"{where}: refusing to {verb} {', '.join(foreign)}: no {TAG_SERVICE} "
                         f"{marked_by}, so imm did not launch them (set terminate_untagged = "
                         "true on the provider to allow it)")
