"""Point libcloud's unchanged EC2 compute driver at a local ``moto_server``.

Test-side only: production code resolves ``get_driver("ec2")`` and talks to real AWS (or to the
endpoint in the provider's ``endpoint`` setting). What moto needs that libcloud 3.9 does not do
(see /work/shared/TESTING.md):

- moto answers in the namespace ``http://ec2.amazonaws.com/doc/2016-11-15`` (no trailing slash);
  libcloud parses with ``.../2016-11-15/``, so every list would come back empty. Success bodies
  get libcloud's namespace; error bodies lose the namespace altogether, as real EC2 sends them
  (libcloud reads ``Errors/Error`` without a namespace).
- libcloud numbers ``ResourceId.0`` / ``Tag.0.Key`` from 0 in CreateTags/DeleteTags; moto wants
  them from 1 (400 MissingParameter otherwise). They are renumbered before the request is signed.

The provider itself signs with SigV4 and takes host/port from ``endpoint``, so nothing else is
needed. Register with :func:`register` and configure ``libcloud_driver = DRIVER_NAME`` and
``endpoint = "http://127.0.0.1:PORT"``.
"""

from __future__ import annotations

import re
from typing import Any

from libcloud.compute.drivers import ec2
from libcloud.compute.providers import set_driver

DRIVER_NAME = "ec2_moto"
MOTO_NAMESPACE = "http://ec2.amazonaws.com/doc/2016-11-15"
_ZERO_BASED = re.compile(r"^(ResourceId|Tag)\.(\d+)(\..*)?$")


def _text(body: Any) -> str:
    return body.decode("utf-8") if isinstance(body, bytes) else (body or "")


class MotoEC2Response(ec2.EC2Response):
    def parse_body(self) -> Any:
        body = _text(self.body)
        self.body = body.replace(f'xmlns="{MOTO_NAMESPACE}"', f'xmlns="{ec2.NAMESPACE}"')
        return super().parse_body()

    def parse_error(self) -> Any:
        self.body = re.sub(r'\sxmlns="[^"]*"', "", _text(self.body), count=1)
        return super().parse_error()


class MotoEC2Connection(ec2.EC2Connection):
    responseCls = MotoEC2Response

    def request(self, action: str, params: Any = None, *args: Any, **kwargs: Any) -> Any:
        if params and params.get("Action") in ("CreateTags", "DeleteTags") and (
                "ResourceId.0" in params or "Tag.0.Key" in params):
            renumbered = {}
            for key, value in params.items():
                m = _ZERO_BASED.match(key)
                if m:
                    key = f"{m.group(1)}.{int(m.group(2)) + 1}{m.group(3) or ''}"
                renumbered[key] = value
            params = renumbered
        return super().request(action, params, *args, **kwargs)


class MotoEC2NodeDriver(ec2.EC2NodeDriver):
    connectionCls = MotoEC2Connection


def register() -> str:
    """Make ``get_driver(DRIVER_NAME)`` return the moto-adapted driver; returns the name."""
    try:
        set_driver(DRIVER_NAME, __name__, "MotoEC2NodeDriver")  # type: ignore[arg-type]
    except AttributeError:
        pass  # already registered
    return DRIVER_NAME
