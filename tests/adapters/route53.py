"""Point libcloud's unchanged Route53 DNS driver at a local ``moto_server``.

Test-side only: production code resolves ``get_driver("route53")`` and talks to real AWS. What
moto needs that libcloud 3.9 does not do (see /work/shared/TESTING.md):

- moto routes a request to its Route53 backend only when the ``Authorization`` header carries a
  SigV4 credential scope ``<key>/<date>/us-east-1/route53/aws4_request``; libcloud signs Route53
  the legacy way (``X-Amzn-Authorization: AWS3-HTTPS``), so moto would send it to S3. moto does
  not verify signatures, so a header carrying the scope is enough.
- libcloud calls ``/2012-02-29/...``; moto answers ``/2013-04-01/...`` (the path is rewritten).
- moto answers in the ``https://route53.amazonaws.com/doc/2013-04-01/`` namespace while libcloud
  parses with the 2012-02-29 one (the response body is rewritten before parsing).

Register it with :func:`register` and configure the router with
``libcloud_driver = DRIVER_NAME`` and ``endpoint = "http://127.0.0.1:PORT"``.
"""

from __future__ import annotations

import datetime
from typing import Any

from libcloud.dns.drivers import route53 as r53
from libcloud.dns.providers import set_driver

DRIVER_NAME = "route53_moto"
MOTO_API_VERSION = "2013-04-01"
MOTO_NAMESPACE = f"https://route53.amazonaws.com/doc/{MOTO_API_VERSION}/"


class MotoRoute53Response(r53.Route53DNSResponse):
    def parse_body(self) -> Any:
        if isinstance(self.body, bytes):
            self.body = self.body.decode("utf-8")
        if self.body:
            self.body = self.body.replace(MOTO_NAMESPACE, r53.NAMESPACE)
        return super().parse_body()

    def parse_error(self) -> Any:
        if isinstance(self.body, bytes):
            self.body = self.body.decode("utf-8")
        if self.body:
            self.body = self.body.replace(MOTO_NAMESPACE, r53.NAMESPACE)
        return super().parse_error()


class MotoRoute53Connection(r53.Route53Connection):
    responseCls = MotoRoute53Response

    def morph_action_hook(self, action: str) -> str:
        action = super().morph_action_hook(action)
        return action.replace(r53.API_ROOT, f"/{MOTO_API_VERSION}/", 1)

    def pre_connect_hook(self, params: Any, headers: Any) -> Any:
        params, headers = super().pre_connect_hook(params, headers)
        day = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d")
        headers["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={self.user_id}/{day}/us-east-1/route53/aws4_request, "
            "SignedHeaders=host, Signature=0"
        )
        return params, headers


class MotoRoute53DNSDriver(r53.Route53DNSDriver):
    connectionCls = MotoRoute53Connection


def register() -> str:
    """Make ``get_driver(DRIVER_NAME)`` return the moto-adapted driver; returns the name."""
    try:
        set_driver(DRIVER_NAME, __name__, "MotoRoute53DNSDriver")  # type: ignore[arg-type]
    except AttributeError:
        pass  # already registered
    return DRIVER_NAME
