"""``[signer] kind = "file"`` (the default): the key in ``<state>/keys/signing.pem``."""

from __future__ import annotations

from ...catalog.keys import FileKeyStore
from ..hookspecs import hookimpl
from ..registry import SignerRegistry


@hookimpl(trylast=True)
def imm_register_signers(registry: SignerRegistry) -> None:
    registry.add(FileKeyStore)
