"""Registries handed to ``imm_register_providers`` / ``imm_register_routers``."""

from __future__ import annotations

from typing import Generic, TypeVar

from ..catalog.keys import KeyStore
from ..errors import ConfigError, PluginError
from .base import Provider, Router

T = TypeVar("T")


class _Registry(Generic[T]):
    what = "plugin"

    def __init__(self) -> None:
        self._classes: dict[str, type[T]] = {}
        self._origin: dict[str, str] = {}

    def add(self, cls: type[T], *, origin: str | None = None) -> None:
        kind = getattr(cls, "kind", None)
        if not isinstance(kind, str) or not kind:
            raise PluginError(f"{self.what} class {cls.__qualname__} has no 'kind' string")
        self._classes[kind] = cls
        self._origin[kind] = origin or cls.__module__

    def get(self, kind: str) -> type[T]:
        try:
            return self._classes[kind]
        except KeyError:
            known = ", ".join(sorted(self._classes)) or "none"
            raise self.error(
                f"no {self.what} of kind {kind!r} is registered (known: {known}); "
                f"install the plugin that provides it or fix 'kind' in the config"
            ) from None

    error: type[Exception] = PluginError

    def kinds(self) -> dict[str, str]:
        return dict(self._origin)


class ProviderRegistry(_Registry[Provider]):
    what = "provider"


class RouterRegistry(_Registry[Router]):
    what = "router"


class SignerRegistry(_Registry[KeyStore]):
    what = "signer"
    error = ConfigError  # a bad [signer] kind is a configuration mistake (exit 2)
