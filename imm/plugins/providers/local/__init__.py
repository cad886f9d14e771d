"""The ``local`` provider, imm's embedded default: an instance is a process on this machine.

An image is a directory holding ``imm-image.json``::

    {"command": ["python3", "app.py"], "health_path": "/healthz", "volumes": ["data"]}

``store_image`` copies it once into ``<root>/images/<image_id>/`` (read-only). ``launch`` copies
the stored image into the instance's own ``<root>/instances/<id>/root/`` (read-only) and starts
``command`` there, in a session of its own so the instance outlives immd (even ``kill -9``).
What must survive the instance lives outside it: ``<root>/logs/<id>.log`` (stdout and stderr)
and ``<root>/data/<service>/<volume>/`` for every declared volume (the persistent layer).

The process gets a small environment, not immd's own (which may hold cloud credentials):
``PATH``, locale and ``TZ`` from immd, ``PORT``, ``IMM_INSTANCE_ID``, ``IMM_SERVICE``,
``IMM_SLOT``, ``IMM_DATA_DIR`` (the first volume), ``IMM_VOLUME_<NAME>`` per volume,
``PYTHONDONTWRITEBYTECODE=1`` and ``PYTHONUNBUFFERED=1``, plus ``LaunchRequest.settings["env"]``.
A leading ``python3`` (or ``python``) in the command is replaced by ``sys.executable``: images
run on the same interpreter as immd, whatever ``PATH`` says.

Read-only copies are a courtesy, not a guarantee: root ignores file modes. What proves an
instance runs its image unchanged is ``rehash``, which the audit compares with the image's
manifest (the ``tampered`` verdict).

Instances are found again by scanning ``<root>/instances`` (after an immd restart too). A
process counts as running only if its pid is alive with the start time (``/proc/<pid>/stat``
field 22) and boot id recorded at launch, so a recycled pid is never mistaken for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...hookspecs import hookimpl
from .provider import LocalProvider

if TYPE_CHECKING:
    from ...registry import ProviderRegistry

__all__ = ["LocalProvider", "imm_register_providers"]


@hookimpl(trylast=True)
def imm_register_providers(registry: ProviderRegistry) -> None:
    registry.add(LocalProvider)
