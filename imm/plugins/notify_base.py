"""The interface of a notifier kind and its registry (``imm_register_notifiers``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from ..errors import ConfigError, PluginError


class DeliveryError(Exception):
    """One delivery failed; the dispatcher retries it with backoff."""


class Notifier:
    """One ``[notifications.NAME]`` entry of a kind. ``deliver`` may block (worker thread)."""

    kind: ClassVar[str] = ""
    keys: ClassVar[frozenset[str]] = frozenset()  # the kind's own keys

    def __init__(self, name: str, spec: Mapping[str, Any]) -> None:
        self.name = name

    def deliver(self, event: Mapping[str, Any]) -> str:
        """Send one event; a short description of the answer (e.g. ``HTTP 200``)."""
        raise NotImplementedError


class NotifierRegistry:
    def __init__(self) -> None:
        self._kinds: dict[str, type[Notifier]] = {}

    def add(self, cls: type[Notifier]) -> None:
        if not isinstance(getattr(cls, "kind", None), str) or not cls.kind:
            raise PluginError(f"notifier class {cls.__qualname__} has no 'kind' string")
        self._kinds[cls.kind] = cls

    def get(self, kind: Any, where: str) -> type[Notifier]:
        try:
            return self._kinds[kind]
        except (KeyError, TypeError):
            raise ConfigError(f"{where}: unknown notifier kind {kind!r} (known: "
                              f"{', '.join(sorted(self._kinds)) or 'none'})") from None

    def kinds(self) -> list[str]:
        return sorted(self._kinds)
