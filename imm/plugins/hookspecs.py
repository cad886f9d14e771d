"""imm's hook specifications. Every hook is prefixed ``imm_``.

Built-in providers and routers implement these exactly like third-party plugins do, with
``@hookimpl(trylast=True)`` so an outside plugin can override them. A hook implementation may
return an awaitable where noted; the daemon awaits it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .analysis_base import AnalysisRegistry
    from .notify_base import NotifierRegistry
    from .registry import ProviderRegistry, RouterRegistry, SignerRegistry

PROJECT = "imm"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def imm_register_providers(registry: ProviderRegistry) -> None:
    """Register provider classes: ``registry.add(ProviderClass)``.

    :param registry: keyed by ``ProviderClass.kind``; a later registration of the same kind
        (from a plugin without ``trylast``) wins over the built-in one.
    """


@hookspec
def imm_register_routers(registry: RouterRegistry) -> None:
    """Register router classes: ``registry.add(RouterClass)``.

    :param registry: keyed by ``RouterClass.kind``.
    """


@hookspec
def imm_register_analysis_kinds(registry: AnalysisRegistry) -> None:
    """Register analysis kinds: ``registry.add(AnalysisKindClass)``.

    :param registry: keyed by ``AnalysisKindClass.kind`` (built in: ``prometheus``, ``http``,
        ``compare``); a subclass of :class:`imm.plugins.analysis.AnalysisKind`.
    """


@hookspec
def imm_register_notifiers(registry: NotifierRegistry) -> None:
    """Register notifier kinds: ``registry.add(NotifierClass)`` (built in: ``webhook``).

    :param registry: keyed by ``NotifierClass.kind``; a subclass of
        :class:`imm.plugins.notify_base.Notifier` configured by ``[notifications.NAME]``.
    """


@hookspec
def imm_register_signers(registry: SignerRegistry) -> None:
    """Register signing-key stores: ``registry.add(KeyStoreClass)`` (imm.catalog.keys.KeyStore).

    :param registry: keyed by ``KeyStoreClass.kind``, chosen by ``[signer] kind``; the class is
        built with ``(config, keys_dir)``: the ``[signer]`` table and the directory of public keys.
        It must sign Ed25519 (pure, RFC 8032) and keep the private key to itself.
    """


@hookspec
def imm_health_gate(rollout: dict[str, Any], step: dict[str, Any],
                    instances: list[dict[str, Any]]) -> Any:
    """Judge a rollout step (canary analysis). Every implementation is called.

    Called after the new instances of a batch pass the router's health check, and after each
    canary pause. A failing verdict rolls the rollout back.

    :param rollout: ``{"id", "service", "image" (digest), "strategy"}``.
    :param step: the step being gated: ``{"name" (e.g. "3-pause"), "op" ("attach" | "pause")}``.
    :param instances: the new instances of the step (``Instance.to_dict()``: id, provider,
        region, image_id, state, launched_at, tags, address, extra).
    :return: None (no opinion), True (pass), or a string giving the reason to fail. May be an
        awaitable resolving to the same.
    """


@hookspec
def imm_policy_check(image: dict[str, Any], service: dict[str, Any],
                     rollout: dict[str, Any]) -> Any:
    """Add a precondition to rollouts. Every implementation is called.

    :param image: the image record (``immctl image show --json``).
    :param service: the service's settings.
    :param rollout: the rollout about to start (id, strategy, actor).
    :return: None to allow, or a string naming the rule and why it refuses.
    """


@hookspec
def imm_rollout_event(event: dict[str, Any]) -> None:
    """Observe a rollout's journal entry after it is written (notify chat, page, metrics).

    :param event: the signed journal record: ``{"type": "rollout", "rollout", "service", "seq",
        "step", "action" (start | begin | done | fail | pause | resume | promote | abort |
        complete), "detail", "actor", "time"}``.
    """


@hookspec
def imm_audit_finding(finding: dict[str, Any]) -> None:
    """Observe an audit finding when it is opened or resolved.

    :param finding: ``{"id", "instance", "provider", "region", "verdict", "detail", "status",
        "opened_at", "resolved_at"}``.
    """
