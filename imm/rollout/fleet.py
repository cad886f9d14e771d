"""The live view of the services: their configuration, instances and route backends.

What is really running is never stored: it is asked of the providers (by the ``imm:service`` /
``imm:rollout`` tags every launched instance carries) and of the routers, through the context's
handles.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from ..context import Context, RouterHandle
from ..errors import ImmError, NotFound
from ..plugins.base import TAG_ROLLOUT, TAG_SERVICE, Backend, Instance
from .services import Service, load_services

log = logging.getLogger("imm.rollout")

LIVE_STATES = ("pending", "running")  # instance states that count as part of a service

View = tuple[list[Instance], dict[str, Backend], str | None]


class Fleet:
    """The configured services and what runs for them."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.services: dict[str, Service] = {}
        self._views: dict[str, tuple[float, View]] = {}
        self._up: set[str] = set()  # routes declared as configured (see ``ready``)
        self.reload()

    def reload(self) -> None:
        """Read the services from the context's settings (raises ConfigError, changes nothing)."""
        self.services = load_services(self.ctx.settings.services, set(self.ctx.providers),
                                      set(self.ctx.routers), self.ctx.plugins.analysis,
                                      self.ctx.settings.analysis)

    def service(self, name: str) -> Service:
        try:
            return self.services[name]
        except KeyError:
            known = ", ".join(sorted(self.services)) or "none configured"
            raise NotFound(f"no service named {name!r} (services: {known}); declare it under "
                           f"[services.{name}] in the config") from None

    def router(self, svc: Service) -> tuple[RouterHandle, str] | None:
        """The service's router and route, or None when it has none."""
        if svc.router is None or not svc.route:
            return None
        return self.ctx.router(svc.router), svc.route

    async def bring_up(self, svc: Service) -> None:
        """Start the service's router and declare its route as configured (idempotent; raises
        ImmError when the router cannot)."""
        routed = self.router(svc)
        if routed is None:
            return
        router, route = routed
        key = _route_key(svc)
        self._up.discard(key)
        await router.start()
        await router.ensure_route(route, svc.route_settings)
        self._up.add(key)

    async def ready(self, svc: Service) -> None:
        """Bring the service's route up unless it already is as configured: a route start-up
        could not declare (its router was down or slow then), or one a reload added or
        changed. Before a rollout step, a rollback or a repair uses the route."""
        if self.router(svc) is not None and _route_key(svc) not in self._up:
            await self.bring_up(svc)
            log.info("service %s: route %s is up", svc.name, svc.route)

    async def instances(self, svc: Service, rollout: str | None = None) -> list[Instance]:
        """The service's live instances (only those of ``rollout`` when given)."""
        tags = {TAG_SERVICE: svc.name}
        if rollout:
            tags[TAG_ROLLOUT] = rollout
        out: list[Instance] = []
        for p in sorted({t.provider for t in svc.targets}):
            got = await self.ctx.provider(p).list_instances(tags)
            out.extend(i for i in got if i.state in LIVE_STATES)
        return out

    async def live_view(self, svc: Service) -> View:
        """The service's instances and route backends, as status shows them.

        Watchers poll status several times a second; the view is shared and kept for
        ``timings.view_ttl_s`` so they do not turn into a stream of cloud API calls competing
        with the rollout for the provider's concurrency limit. The steps never use it.
        """
        ttl = self.ctx.timings.view_ttl_s
        cached = self._views.get(svc.name)
        if cached is not None and time.monotonic() - cached[0] < ttl:
            return cached[1]
        backends: dict[str, Backend] = {}
        routed = self.router(svc)
        if routed is not None:
            router, route = routed
            try:
                backends = {b.name: b for b in await router.backends(route)}
            except ImmError:
                backends = {}
        error: str | None = None
        try:
            live = await self.instances(svc)
        except ImmError as e:
            live, error = [], e.message
        view: View = (live, backends, error)
        self._views[svc.name] = (time.monotonic(), view)
        return view

    def describe(self, svc: Service) -> dict[str, Any]:
        return {**svc.to_dict(), "count": svc.count}


def _route_key(svc: Service) -> str:
    return json.dumps([svc.router, svc.route, svc.route_settings], sort_keys=True, default=str)
