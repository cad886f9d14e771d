"""Point libcloud's unchanged ELB (classic) and ALB load-balancer drivers at a local ``moto_server``.

Test-side only: production code resolves ``get_driver("elb")`` / ``get_driver("alb")``. The
``cloudlb`` router already points a driver at its ``endpoint`` setting the way TESTING.md says
(``connection.host/port/secure`` then ``connection.connect()``: the drivers take no host/port).
What is left for moto: it routes ELB/ALB calls only on path ``/`` while libcloud sends them to
``/2012-06-01/`` (ELB) and ``/2015-12-01/`` (ALB); the path is rewritten here. Responses already
use the namespaces libcloud expects.

Register with :func:`register` and configure ``libcloud_driver = ELB_DRIVER`` (or
``ALB_DRIVER``) and ``endpoint = "http://127.0.0.1:PORT"``.
"""

from __future__ import annotations

from libcloud.loadbalancer.drivers import alb, elb
from libcloud.loadbalancer.providers import set_driver

ELB_DRIVER = "elb_moto"
ALB_DRIVER = "alb_moto"


class MotoELBConnection(elb.ELBConnection):
    def morph_action_hook(self, action: str) -> str:
        return "/"


class MotoELBDriver(elb.ElasticLBDriver):
    connectionCls = MotoELBConnection


class MotoALBConnection(alb.ALBConnection):
    def morph_action_hook(self, action: str) -> str:
        return "/"


class MotoALBDriver(alb.ApplicationLBDriver):
    connectionCls = MotoALBConnection


def register() -> tuple[str, str]:
    """Make ``get_driver(ELB_DRIVER/ALB_DRIVER)`` return the moto-adapted drivers."""
    for name, klass in ((ELB_DRIVER, "MotoELBDriver"), (ALB_DRIVER, "MotoALBDriver")):
        try:
            set_driver(name, __name__, klass)
        except AttributeError:
            pass  # already registered
    return ELB_DRIVER, ALB_DRIVER
