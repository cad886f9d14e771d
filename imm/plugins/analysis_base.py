"""The interface of an analysis kind, its registry, templates and the condition language.

A kind is built once per ``[[services.NAME.analysis]]`` entry when the config is loaded (its
constructor validates the entry and raises :class:`~imm.errors.ConfigError` naming the bad
value) and asked to ``measure`` a target as often as the analysis says. ``measure`` may block
(it runs in a worker thread) and raises :class:`MeasureError` when the measurement could not be
taken; the runner counts that as an error, never a crash.

Conditions (``success_condition``, ``failure_condition``) are expressions over the kind's
variables (``result`` for one value, ``canary`` and ``stable`` for a comparison): numbers,
comparisons, ``and``/``or``/``not``, arithmetic and ``abs``/``min``/``max``. They are checked
against that grammar at load time and evaluated by ``asteval`` with nothing else in its symbol
table: never ``eval``.
"""

from __future__ import annotations

import ast
import math
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from asteval import Interpreter

from ..errors import ConfigError, PluginError

ROLES = ("canary", "stable")
# ``wave``: the wave's number ("" outside waves); ``targets``: the provider/region targets
# measured (a wave's, else the service's) joined by "|", for a regex match on ``imm_target``
TEMPLATE_VARS = ("service", "rollout", "role", "digest", "wave", "targets")
_FUNCS = ("abs", "min", "max")
_NODES = (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.UAdd,
          ast.BinOp, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Compare, ast.Lt, ast.LtE, ast.Gt,
          ast.GtE, ast.Eq, ast.NotEq, ast.Name, ast.Load, ast.Constant, ast.Call)


class MeasureError(Exception):
    """A measurement could not be taken (peer unreachable, bad answer); counted as an error."""


@dataclass(frozen=True)
class AnalysisTarget:
    """What an analysis measures: one role of one rollout of one service."""

    service: str
    rollout: str
    role: str  # canary | stable
    digest: str  # the image digest of that role ("" for a first rollout's stable set)
    stable_digest: str = ""
    wave: str = ""  # the wave measured ("1", "2", ...), "" outside waves
    targets: str = ""  # its targets (or the service's), "provider/region" joined by "|"

    def variables(self) -> dict[str, str]:
        return {"service": self.service, "rollout": self.rollout, "role": self.role,
                "digest": self.digest, "wave": self.wave, "targets": self.targets}

    def as_role(self, role: str) -> AnalysisTarget:
        digest = self.stable_digest if role == "stable" else self.digest
        return AnalysisTarget(self.service, self.rollout, role, digest, self.stable_digest,
                              self.wave, self.targets)


@dataclass
class Measured:
    """One measurement: a value per variable (None: no data) and what was asked."""

    values: dict[str, float | None]
    query: str
    extra: dict[str, Any] = field(default_factory=dict)


class Template:
    """``${service}``, ``${rollout}``, ``${role}``, ``${digest}``, ``${wave}``, ``${targets}``
    in a query, URL or body."""

    def __init__(self, where: str, text: Any) -> None:
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{where} must be a non-empty string, got {text!r}")
        t = string.Template(text)
        if not t.is_valid():
            raise ConfigError(f"{where} {text!r}: a '$' must start ${{name}} (one of "
                              f"{', '.join(TEMPLATE_VARS)}) or be written '$$'")
        unknown = sorted(set(t.get_identifiers()) - set(TEMPLATE_VARS))
        if unknown:
            raise ConfigError(f"{where} {text!r}: unknown variable(s) {', '.join(unknown)}; "
                              f"known: {', '.join(TEMPLATE_VARS)}")
        self.text = text
        self._t = t

    def render(self, target: AnalysisTarget) -> str:
        return self._t.substitute(target.variables())


class Condition:
    """A boolean expression over named numbers, checked at load and run by asteval."""

    def __init__(self, where: str, text: Any, names: tuple[str, ...]) -> None:
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{where} must be an expression like 'result < 0.05', got {text!r}")
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except SyntaxError as e:
            raise ConfigError(f"{where} {text!r} is not an expression: {e.msg}") from None
        for node in ast.walk(tree):
            if not isinstance(node, _NODES):
                raise ConfigError(f"{where} {text!r}: {type(node).__name__} is not allowed; use "
                                  f"numbers, comparisons, and/or/not, + - * / and "
                                  f"{'/'.join(_FUNCS)} over {', '.join(names)}")
            if isinstance(node, ast.Name) and node.id not in names + _FUNCS:
                raise ConfigError(f"{where} {text!r}: unknown name {node.id!r}; use "
                                  f"{', '.join(names)}")
            if isinstance(node, ast.Call) and not (
                    isinstance(node.func, ast.Name) and node.func.id in _FUNCS and not node.keywords):
                raise ConfigError(f"{where} {text!r}: only {', '.join(_FUNCS)} may be called")
            if isinstance(node, ast.Constant) and (
                    isinstance(node.value, bool) or not isinstance(node.value, (int, float))):
                raise ConfigError(f"{where} {text!r}: constant {node.value!r} is not a number")
        self.text = text.strip()
        self.names = names

    def __call__(self, values: Mapping[str, float]) -> bool:
        """True or False for these values (all present and finite; the caller checks)."""
        interp = Interpreter(minimal=True, use_numpy=False, builtins_readonly=True)
        interp.symtable.clear()
        interp.symtable.update({"abs": abs, "min": min, "max": max, **dict(values)})
        out = interp.eval(self.text, show_errors=False, raise_errors=False)
        if interp.error:
            msg = interp.error[0].get_error()
            raise MeasureError(f"condition {self.text!r}: {msg[0]}: {msg[1]}")
        return bool(out)


def number(value: Any) -> float | None:
    """A measured value as a float; None for no data (NaN, absent)."""
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise MeasureError(f"value {value!r} is not a number") from None
    return None if math.isnan(f) else f


def option(spec: Mapping[str, Any], where: str, key: str, default: Any, kind: type,
           lo: float | None = None) -> Any:
    value = spec.get(key, default)
    ok = isinstance(value, kind) and not isinstance(value, bool) if kind is not bool \
        else isinstance(value, bool)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok or (lo is not None and value < lo):
        bound = f" ≥ {lo:g}" if lo is not None else ""
        raise ConfigError(f"{where} {key} must be a {kind.__name__}{bound}, got {value!r}")
    return value


class AnalysisKind:
    """One configured analysis of a kind. Subclasses set ``kind`` and implement ``measure``.

    :param where: how to name the entry in messages, e.g. ``[[services.web.analysis]] error-ratio``.
    :param spec: the entry's table (common keys such as ``when`` and ``count`` included; a kind
        reads its own).
    :param defaults: the config's ``[analysis]`` table (e.g. ``prometheus_url``).
    """

    kind: ClassVar[str] = ""
    variables: ClassVar[tuple[str, ...]] = ("result",)
    keys: ClassVar[frozenset[str]] = frozenset()  # the kind's own keys in the entry

    def __init__(self, where: str, spec: Mapping[str, Any], defaults: Mapping[str, Any]) -> None:
        self.where = where

    def measure(self, target: AnalysisTarget) -> Measured:
        raise NotImplementedError


class AnalysisRegistry:
    """Analysis kinds by name, handed to ``imm_register_analysis_kinds``."""

    def __init__(self) -> None:
        self._kinds: dict[str, type[AnalysisKind]] = {}

    def add(self, cls: type[AnalysisKind]) -> None:
        if not isinstance(getattr(cls, "kind", None), str) or not cls.kind:
            raise PluginError(f"analysis kind class {cls.__qualname__} has no 'kind' string")
        self._kinds[cls.kind] = cls

    def get(self, kind: str, where: str) -> type[AnalysisKind]:
        try:
            return self._kinds[kind]
        except KeyError:
            raise ConfigError(f"{where}: unknown analysis kind {kind!r} (known: "
                              f"{', '.join(sorted(self._kinds)) or 'none'}); install the plugin "
                              "that provides it or fix 'kind'") from None

    def kinds(self) -> list[str]:
        return sorted(self._kinds)
