"""Cloud credentials: read from environment variables or files named in the settings, never from
the config file itself; values never reach a log line, an error message or ``repr``."""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from .settings import setting_str


@dataclass(frozen=True)
class CredentialSpec:
    """One credential value a driver needs, read from ``<name>_env`` or ``<name>_file``."""

    name: str  # "key", "secret", "token": settings keys are <name>_env / <name>_file
    label: str  # for messages: "access key id"
    default_env: str | None = None
    required: bool = True


_AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AIDA|AROA|AGPA|ANPA|ANVA|AIPA)[A-Z0-9]{12,}\b")
_SIGV4_CREDENTIAL = re.compile(r"(Credential=)[^\s,&\"'<]+")
_SIGNATURE = re.compile(r"((?:X-Amz-)?Signature=)[^\s,&\"'<]+", re.I)
_TOKEN_PARAM = re.compile(r"((?:x-amz-security-token|X-Amz-Security-Token|SecurityToken)"
                          r"[\"']?\s*[=:]\s*[\"']?)[^\s,&\"'<]+")
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]{8,}")
REDACTED = "<redacted>"


class Scrubber:
    """Removes secrets from text: known values, and anything shaped like a credential."""

    def __init__(self, values: Sequence[str | None] = ()) -> None:
        self._values: list[str] = []
        self.add(*values)

    def add(self, *values: str | None) -> None:
        for v in values:
            if v and len(v) >= 4 and v not in self._values:
                self._values.append(v)
        self._values.sort(key=len, reverse=True)  # longest first: a secret may contain another

    def __call__(self, text: Any) -> str:
        out = str(text)
        for v in self._values:
            out = out.replace(v, REDACTED)
        out = _AWS_KEY_ID.sub(REDACTED, out)
        out = _SIGV4_CREDENTIAL.sub(rf"\g<1>{REDACTED}", out)
        out = _SIGNATURE.sub(rf"\g<1>{REDACTED}", out)
        out = _TOKEN_PARAM.sub(rf"\g<1>{REDACTED}", out)
        return _BEARER.sub(rf"\g<1>{REDACTED}", out)


class Credentials:
    """Resolved credential values. ``repr``/``str`` never show them; ``hint`` names where they
    came from (``$AWS_ACCESS_KEY_ID``, ``file /etc/imm/aws.key``) for error messages."""

    def __init__(self, values: Mapping[str, str | None], sources: Mapping[str, str]) -> None:
        self._values = dict(values)
        self.sources = dict(sources)

    def get(self, name: str) -> str | None:
        return self._values.get(name)

    def secrets(self) -> list[str]:
        return [v for v in self._values.values() if v]

    @property
    def hint(self) -> str:
        return "/".join(self.sources[n] for n in self.sources)

    def __repr__(self) -> str:
        return f"Credentials({', '.join(f'{n} from {s}' for n, s in self.sources.items())})"

    __str__ = __repr__


def credential_settings(specs: Sequence[CredentialSpec]) -> set[str]:
    """The settings keys :func:`load_credentials` reads, for unknown-key checks."""
    return {f"{s.name}_{suffix}" for s in specs for suffix in ("env", "file")}


def check_credential_settings(settings: Mapping[str, Any], specs: Sequence[CredentialSpec],
                              where: str) -> None:
    """Validate the shape of the credential settings (without reading any secret)."""
    for spec in specs:
        env = setting_str(settings, f"{spec.name}_env", where)
        path = setting_str(settings, f"{spec.name}_file", where)
        if env and path:
            raise ConfigError(f"{where}: set {spec.name}_env or {spec.name}_file, not both")
        if spec.name in settings:
            raise ConfigError(
                f"{where}: credentials do not belong in the config file; name an environment "
                f"variable ({spec.name}_env) or a file readable only by immd ({spec.name}_file) "
                f"that holds the {spec.label}")


def load_credentials(settings: Mapping[str, Any], specs: Sequence[CredentialSpec], where: str,
                     log: logging.Logger | None = None) -> Credentials:
    """Read every credential from its environment variable or file. Messages name the variable
    or file, never the value; a file readable by group or others is warned about."""
    check_credential_settings(settings, specs, where)
    values: dict[str, str | None] = {}
    sources: dict[str, str] = {}
    missing: list[str] = []
    for spec in specs:
        env = setting_str(settings, f"{spec.name}_env", where)
        path = setting_str(settings, f"{spec.name}_file", where)
        value: str | None = None
        if path:
            sources[spec.name] = f"file {path}"
            value = _read_secret_file(path, spec, where, log)
        else:
            env = env or spec.default_env
            if env:
                sources[spec.name] = f"${env}"
                value = os.environ.get(env, "").strip() or None
        if value is None and spec.required:
            src = sources.get(spec.name) or f"{spec.name}_env / {spec.name}_file"
            missing.append(f"{spec.label} ({src})")
        values[spec.name] = value
    if missing:
        raise ConfigError(f"{where}: credentials missing: {', '.join(missing)} not set or "
                          f"empty; set the environment variable(s) for immd or point "
                          f"<name>_file at a file holding the value")
    required = {sp.name for sp in specs if sp.required}
    return Credentials(values, {n: src for n, src in sources.items()
                                if values.get(n) or n in required})


def _read_secret_file(path: str, spec: CredentialSpec, where: str,
                      log: logging.Logger | None) -> str | None:
    p = Path(path)
    try:
        st = p.stat()
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {spec.name}_file {path} ({spec.label}): "
                          f"{exc.strerror or type(exc).__name__}; check the path and that immd "
                          f"may read it") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO) and log is not None:
        log.warning("%s: %s_file %s is readable by group or others (mode %o); chmod 600 it",
                    where, spec.name, path, stat.S_IMODE(st.st_mode))
    return text.strip() or None


def credentials_hint(settings: Mapping[str, Any], specs: Sequence[CredentialSpec]) -> str:
    """Where the credentials come from, for error messages: ``$AWS_ACCESS_KEY_ID/file /k``."""
    names = []
    for spec in specs:
        path = settings.get(f"{spec.name}_file")
        env = settings.get(f"{spec.name}_env") or spec.default_env
        names.append(f"file {path}" if path else f"${env}")
    return "/".join(names)


class CredentialCache:
    """Credentials read once, on first use (not at start-up: no I/O in a constructor), their
    values added to ``scrub``; ``clear()`` forgets them (a provider's ``close``)."""

    def __init__(self, settings: Mapping[str, Any], specs: Sequence[CredentialSpec], where: str,
                 scrub: Scrubber, log: logging.Logger | None = None) -> None:
        self.settings, self.specs, self.where, self.scrub, self.log = \
            settings, specs, where, scrub, log
        self._lock = threading.Lock()
        self._creds: Credentials | None = None

    def get(self) -> Credentials:
        with self._lock:
            if self._creds is None:
                creds = load_credentials(self.settings, self.specs, self.where, self.log)
                self.scrub.add(*creds.secrets())
                self._creds = creds
            return self._creds

    def set(self, creds: Credentials) -> Credentials:
        """Use credentials read some other way (an AWS shared credentials file)."""
        with self._lock:
            self.scrub.add(*creds.secrets())
            self._creds = creds
            return creds

    def loaded(self) -> bool:
        return self._creds is not None

    def clear(self) -> None:
        with self._lock:
            self._creds = None
