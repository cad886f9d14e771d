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
import os
from collections.abc import Iterable
from typing import Any

import pluggy

from ..errors import PluginError
from . import hookspecs
from .registry import ProviderRegistry, RouterRegistry


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

    async def call_all(self, hook: str, **kwargs: Any) -> list[Any]:
        """Call every implementation; await any that returned an awaitable."""
        results = getattr(self.pm.hook, hook)(**kwargs)
        out = []
        for r in results:
            if inspect.isawaitable(r):
                r = await r
            out.append(r)
        return out
