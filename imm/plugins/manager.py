"""The plugin manager: loads the ``imm`` entry-point group, built-ins included.

Built-in providers and routers are registered through the same entry points as third-party
plugins (see pyproject.toml) with ``trylast=True``, so an outside plugin of the same kind wins.
A misspelled or unknown ``imm_*`` hook fails start-up naming the plugin (pluggy's
``check_pending``). Plugins can be blocked by name in the config (``[plugins] block = [...]``) or
with ``IMM_BLOCK_PLUGINS=a,b``.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pluggy

from ..errors import PluginError
from . import hookspecs
from .registry import ProviderRegistry, RouterRegistry

log = logging.getLogger("imm.plugins")


@dataclass(frozen=True)
class Refusal:
    """One plugin's "no" from a gate hook (``imm_health_gate``, ``imm_policy_check``)."""

    plugin: str  # the plugin's registered name
    reason: str

    def __str__(self) -> str:
        return f"{self.plugin}: {self.reason}"


def _blocked(config_block: Iterable[str]) -> set[str]:
    env = os.environ.get("IMM_BLOCK_PLUGINS", "")
    return {n.strip() for n in env.split(",") if n.strip()} | set(config_block)


class Plugins:
    def __init__(self, block: Iterable[str] = (), extra: Iterable[Any] = ()) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.blocked = _blocked(block)
        for name in self.blocked:
            self.pm.set_blocked(name)
        self.distributions: dict[str, str] = {}
        self._load_entry_points()
        for plugin in extra:
            self.pm.register(plugin)
        self._check()
        self.providers = ProviderRegistry()
        self.routers = RouterRegistry()
        self.pm.hook.imm_register_providers(registry=self.providers)
        self.pm.hook.imm_register_routers(registry=self.routers)

    def _load_entry_points(self) -> None:
        """Load the ``imm`` entry-point group, naming the plugin that fails."""
        for ep in importlib.metadata.entry_points(group=hookspecs.PROJECT):
            if self.pm.is_blocked(ep.name) or self.pm.get_plugin(ep.name) is not None:
                continue
            dist = getattr(ep, "dist", None)
            origin = f"{dist.name} {dist.version}" if dist is not None else "unknown distribution"
            try:
                plugin = ep.load()
            except Exception as e:  # noqa: BLE001 - a broken plugin must not crash with a traceback
                raise PluginError(f"plugin {ep.name!r} ({ep.value}, from {origin}) failed to "
                                  f"load: {type(e).__name__}: {e}; fix or uninstall it, or block "
                                  f"it with IMM_BLOCK_PLUGINS={ep.name}") from None
            try:
                self.pm.register(plugin, name=ep.name)
            except (ValueError, pluggy.PluginValidationError) as e:
                raise PluginError(f"plugin {ep.name!r} (from {origin}): {e}") from None
            self.distributions[ep.name] = origin

    def _check(self) -> None:
        for name, plugin in self.pm.list_name_plugin():
            if plugin is None:
                continue
            for attr in dir(plugin):
                if attr.startswith("imm_") and not hasattr(self.pm.hook, attr):
                    raise PluginError(
                        f"plugin {name!r} implements unknown hook {attr!r}; known hooks: "
                        + ", ".join(sorted(h for h in dir(self.pm.hook) if h.startswith("imm_")))
                    )
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as e:
            raise PluginError(f"plugin {self.pm.get_name(e.plugin)!r}: {e}") from None

    def register(self, plugin: Any, name: str | None = None) -> None:
        try:
            self.pm.register(plugin, name=name)
        except ValueError as e:
            raise PluginError(str(e)) from None
        except pluggy.PluginValidationError as e:
            raise PluginError(f"plugin {name or plugin!r}: {e}") from None
        self._check()

    def listing(self) -> list[dict[str, Any]]:
        out = []
        for name, plugin in self.pm.list_name_plugin():
            if plugin is None:  # pluggy's mark for a blocked name
                continue
            hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or ())
            out.append({
                "name": name,
                "module": getattr(plugin, "__name__", type(plugin).__name__),
                "distribution": self.distributions.get(name),
                "hooks": hooks,
            })
        out.sort(key=lambda p: str(p["name"]))
        return out

    # -- typed hooks: what the domain calls. Each implementation is called on its own, so one
    # plugin's failure is named and does not hide the others' answers.

    async def _each(self, hook: str, kwargs: Mapping[str, Any]) -> list[tuple[str, Any]]:
        """Call every implementation of ``hook`` in pluggy's order; ``(plugin, result or the
        exception it raised)`` each, awaiting results that are awaitable."""
        caller = getattr(self.pm.hook, hook)
        out: list[tuple[str, Any]] = []
        for impl in reversed(caller.get_hookimpls()):  # pluggy calls the last registered first
            if impl.hookwrapper or getattr(impl, "wrapper", False):
                continue  # wrappers wrap a whole hook call; the typed hooks call one at a time
            args = [kwargs[name] for name in impl.argnames]
            try:
                result = impl.function(*args)
                if inspect.isawaitable(result):
                    result = await result
            except Exception as e:  # noqa: BLE001 - a plugin's failure is reported by name
                result = e
            out.append((impl.plugin_name, result))
        return out

    async def _observe(self, hook: str, kwargs: Mapping[str, Any]) -> None:
        for plugin, result in await self._each(hook, kwargs):
            if isinstance(result, Exception):
                log.error("plugin %r failed in %s: %s: %s", plugin, hook, type(result).__name__,
                          result)

    async def _gate(self, hook: str, kwargs: Mapping[str, Any]) -> list[Refusal]:
        """Gate hooks answer None (no opinion), True (pass) or a reason string. A plugin that
        raises or answers anything else refuses: a gate fails closed."""
        refusals = []
        for plugin, result in await self._each(hook, kwargs):
            if result is None or result is True:
                continue
            if isinstance(result, str):
                refusals.append(Refusal(plugin, result))
            elif isinstance(result, Exception):
                refusals.append(Refusal(plugin, f"{hook} raised {type(result).__name__}: {result}"))
            else:
                refusals.append(Refusal(plugin, f"{hook} answered {result!r}; a gate answers "
                                                f"None, True or a reason string"))
        return refusals

    async def health_gate(self, rollout: Mapping[str, Any], step: Mapping[str, Any],
                          instances: Sequence[Mapping[str, Any]]) -> list[Refusal]:
        """Every ``imm_health_gate`` judgement of a step; empty when all pass."""
        return await self._gate("imm_health_gate", {
            "rollout": dict(rollout), "step": dict(step), "instances": [dict(i) for i in instances]})

    async def policy_check(self, image: Mapping[str, Any], service: Mapping[str, Any],
                           rollout: Mapping[str, Any]) -> list[Refusal]:
        """Every ``imm_policy_check`` refusal of a rollout about to start; empty to allow."""
        return await self._gate("imm_policy_check", {
            "image": dict(image), "service": dict(service), "rollout": dict(rollout)})

    async def rollout_event(self, event: Mapping[str, Any]) -> None:
        """Tell every ``imm_rollout_event`` observer; a failing observer is logged, not raised."""
        await self._observe("imm_rollout_event", {"event": dict(event)})

    async def audit_finding(self, finding: Mapping[str, Any]) -> None:
        """Tell every ``imm_audit_finding`` observer; a failing observer is logged, not raised."""
        await self._observe("imm_audit_finding", {"finding": dict(finding)})
