"""Shared machinery for every libcloud-based provider and router (AWS, GCP, Azure, OpenStack).

What it gives a plugin:

- :class:`CallPolicy` — ``timeout_s`` (default 30: the socket timeout of every HTTP request the
  driver makes), ``retries`` (default 5), ``backoff_base_s`` (0.5) and ``backoff_max_s`` (10),
  read and checked from the plugin's settings.
- :func:`load_credentials` — credentials from environment variables or files named in the
  settings (``key_env`` / ``key_file``, ``secret_env`` / ``secret_file``, ...), each with a
  default environment variable. Values never reach a log line, an error message or ``repr``.
- :class:`Scrubber` — removes credential values (and anything shaped like an AWS access key id,
  a SigV4 ``Credential=`` scope, a signature or a session token) from any text.
- :class:`CloudCaller` — runs one blocking libcloud call: retries throttling (libcloud
  ``RateLimitReachedError``, HTTP 429, ``RequestLimitExceeded`` / ``Throttling`` and similar
  error codes), HTTP 5xx, garbled answers, timeouts and connection errors with jittered
  exponential backoff; never retries any other 4xx; turns every failure into an
  ``imm.errors.ProviderError`` (or ``RouterError``) whose message names the cloud, the
  configured provider, the region, the call, what went wrong and what to check, with the
  failure's kind, HTTP status and cloud error code in ``detail``.

Retries of calls that are not idempotent by themselves: a timeout or a dropped connection leaves
it unknown whether the cloud applied the call. ``call(..., recover=fn)`` runs ``fn`` before every
retry; when it finds the effect of the earlier attempt (e.g. instances carrying the launch's
client token) that is returned instead of calling again. ``idempotent=False`` without
``recover`` retries only answers that say the call was refused (throttling).

Timeouts: ``timeout_s`` bounds each HTTP request of a call (connect and read), not the call as a
whole; a call that makes several requests, retried, takes at most about
``(retries + 1) * requests * timeout_s`` plus the backoff sleeps (at most ``backoff_max_s`` each).
libcloud's own retry layer (``LIBCLOUD_RETRY_FAILED_HTTP_REQUESTS``) should stay off: with it on,
every attempt here would be retried again inside libcloud.
"""

from __future__ import annotations

import datetime
import http.client
import logging
import os
import random
import re
import socket
import ssl
import stat
import time
import urllib.parse
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ...errors import ConfigError, ImmError, ProviderError, RouterError

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_RETRIES = 5
DEFAULT_BACKOFF_BASE_S = 0.5
DEFAULT_BACKOFF_MAX_S = 10.0
MAX_RETRY_AFTER_S = 60.0  # a server's Retry-After is honoured up to this

# Error codes (AWS, GCP, Azure, OpenStack spellings) that mean "slow down", whatever the status.
THROTTLING_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestLimitExceeded",
    "RequestThrottled", "RequestThrottledException", "TooManyRequestsException",
    "TooManyRequests", "SlowDown", "PriorRequestNotComplete", "EC2ThrottledException",
    "BandwidthLimitExceeded", "RateLimitExceeded", "rateLimitExceeded", "userRateLimitExceeded",
    "LimitExceededException", "ServerBusy", "OverLimit",
})
_THROTTLING_TEXT = re.compile(r"rate exceeded|too many requests|throttl|rate limit", re.I)
_ERRNO = re.compile(r"\[Errno -?\d+\][^'\")\]]*")
# "Code: message", the way libcloud's AWS responses word an error (one line per error).
_CODE_RE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_.]*(?:\.[A-Za-z0-9_]+)*):\s")


# --------------------------------------------------------------------------- settings


def setting_str(settings: Mapping[str, Any], key: str, where: str,
                default: str | None = None) -> str | None:
    value = settings.get(key, default)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: setting {key} = {value!r} must be a non-empty string")
    return value.strip()


def setting_num(settings: Mapping[str, Any], key: str, where: str, default: float,
                lo: float, hi: float) -> float:
    value = settings.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise ConfigError(f"{where}: setting {key} = {value!r} must be a number {lo:g}..{hi:g}")
    return float(value)


def setting_int(settings: Mapping[str, Any], key: str, where: str, default: int,
                lo: int, hi: int) -> int:
    value = settings.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{where}: setting {key} = {value!r} must be an integer {lo}..{hi}")
    return value


def setting_bool(settings: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = settings.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: setting {key} = {value!r} must be true or false")
    return value


def setting_str_list(settings: Mapping[str, Any], key: str, where: str) -> list[str]:
    value = settings.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(
            isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"{where}: setting {key} = {value!r} must be a list of strings")
    return [v.strip() for v in value]


def per_region(settings: Mapping[str, Any], key: str, where: str,
               regions: Collection[str]) -> dict[str, Any]:
    """A setting given once for every region or as a table ``{ "us-east-1" = ... }``.

    Returns ``{region: value}`` for the regions it applies to (a table may leave regions out).
    """
    value = settings.get(key)
    if value is None:
        return {}
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(regions))
        if unknown:
            raise ConfigError(f"{where}: setting {key} names regions {', '.join(unknown)} that "
                              f"are not in regions ({', '.join(regions)})")
        return dict(value)
    return {r: value for r in regions}


def parse_endpoint(url: str, where: str) -> tuple[str, int, bool]:
    """``http(s)://host[:port]`` -> (host, port, secure)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: endpoint {url!r} must be an http(s) URL such as "
                          f"https://ec2.us-east-1.amazonaws.com or http://127.0.0.1:5000")
    if parts.path not in ("", "/") or parts.query:
        raise ConfigError(f"{where}: endpoint {url!r} must not have a path or query")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"{where}: endpoint {url!r} has an invalid port") from None
    secure = parts.scheme == "https"
    return parts.hostname, port or (443 if secure else 80), secure


def point_connection(driver: Any, host: str, port: int, secure: bool,
                     timeout: float | None = None) -> None:
    """Aim an already built driver's connection at another endpoint (for drivers that take no
    host/port in their constructor, e.g. libcloud's ELB/ALB and GCE drivers)."""
    conn = driver.connection
    conn.host, conn.port, conn.secure = host, port, secure
    if timeout is not None:
        conn.timeout = timeout
    conn.connect()


def set_timeout(driver: Any, timeout: float) -> None:
    """Give a built driver's connection a request timeout (drivers without a timeout arg)."""
    conn = driver.connection
    conn.timeout = timeout
    conn.connect()


def parse_time(text: Any) -> int | None:
    """An RFC 3339 / ISO 8601 time (``2024-05-01T10:00:00.000Z``) -> Unix seconds."""
    if isinstance(text, datetime.datetime):
        when = text
    elif isinstance(text, str) and text.strip():
        try:
            when = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return int(when.timestamp())


@dataclass(frozen=True)
class CallPolicy:
    timeout_s: float = DEFAULT_TIMEOUT_S
    retries: int = DEFAULT_RETRIES
    backoff_base_s: float = DEFAULT_BACKOFF_BASE_S
    backoff_max_s: float = DEFAULT_BACKOFF_MAX_S

    KEYS = frozenset({"timeout_s", "retries", "backoff_base_s", "backoff_max_s"})

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], where: str) -> CallPolicy:
        policy = cls(
            timeout_s=setting_num(settings, "timeout_s", where, DEFAULT_TIMEOUT_S, 0.05, 3600),
            retries=setting_int(settings, "retries", where, DEFAULT_RETRIES, 0, 20),
            backoff_base_s=setting_num(settings, "backoff_base_s", where,
                                       DEFAULT_BACKOFF_BASE_S, 0, 60),
            backoff_max_s=setting_num(settings, "backoff_max_s", where,
                                      DEFAULT_BACKOFF_MAX_S, 0, 600),
        )
        if policy.backoff_max_s < policy.backoff_base_s:
            raise ConfigError(f"{where}: backoff_max_s ({policy.backoff_max_s:g}) must be at "
                              f"least backoff_base_s ({policy.backoff_base_s:g})")
        return policy

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Sleep before retry number ``attempt`` (1-based): exponential, capped, "equal jitter"
        (half fixed, half random) so that many callers throttled together spread out."""
        ceiling = min(self.backoff_max_s, self.backoff_base_s * (2 ** (attempt - 1)))
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not crypto
        if retry_after:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER_S))
        return delay


# --------------------------------------------------------------------------- credentials


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


# --------------------------------------------------------------------------- failures


@dataclass(frozen=True)
class Failure:
    """What a failed cloud call tells us, already scrubbed."""

    kind: str  # auth | throttled | server | timeout | network | malformed | client | other
    retryable: bool
    message: str
    status: int | None = None
    cloud_code: str | None = None
    retry_after: float | None = None
    applied_unknown: bool = False  # the call may have reached the cloud (timeout, cut)


def _cloud_code(text: str) -> str | None:
    m = _CODE_RE.match(text)
    return m.group(1) if m else None


def _is_throttling(code: str | None, text: str) -> bool:
    return (code in THROTTLING_CODES) or bool(_THROTTLING_TEXT.search(text))


def classify(exc: BaseException, scrub: Callable[[Any], str]) -> Failure:
    """Sort a libcloud / network exception into a :class:`Failure`."""
    from libcloud.common.exceptions import BaseHTTPError, RateLimitReachedError
    from libcloud.common.types import InvalidCredsError, LibcloudError, MalformedResponseError
    from libcloud.common.types import ProviderError as LCProviderError

    if isinstance(exc, RateLimitReachedError):
        return Failure("throttled", True, scrub(exc.message or "HTTP 429 rate limit exceeded"),
                       429, None, getattr(exc, "retry_after", None) or None)
    if isinstance(exc, InvalidCredsError):
        text = scrub(getattr(exc, "value", None) or exc)
        return Failure("auth", False, text, getattr(exc, "http_code", 401), _cloud_code(text))
    if isinstance(exc, BaseHTTPError) or isinstance(exc, LCProviderError):
        if isinstance(exc, BaseHTTPError):
            status, raw = exc.code, exc.message
        else:
            status, raw = exc.http_code, exc.value
        text = scrub(raw or "").strip() or f"HTTP {status}"
        code = _cloud_code(text)
        retry_after = _retry_after(getattr(exc, "headers", None))
        try:
            status = int(status)
        except (TypeError, ValueError):
            status = None
        if status == 429 or _is_throttling(code, text):
            return Failure("throttled", True, text, status, code, retry_after)
        if status in (401, 403) or code in ("AuthFailure", "InvalidClientTokenId",
                                            "SignatureDoesNotMatch", "UnrecognizedClientException",
                                            "ExpiredToken", "InvalidAccessKeyId"):
            return Failure("auth", False, text, status, code)
        if status is not None and status >= 500:
            return Failure("server", True, text, status, code, retry_after, applied_unknown=True)
        return Failure("client", False, text, status, code)
    if isinstance(exc, MalformedResponseError):
        body = scrub(getattr(exc, "body", "") or "")
        snippet = " ".join(body.split())[:200]
        return Failure("malformed", True, f"unparseable answer ({scrub(exc.value)})"
                       + (f": {snippet}" if snippet else ""), applied_unknown=True)
    if isinstance(exc, LibcloudError):
        text = scrub(getattr(exc, "value", None) or exc) or type(exc).__name__
        code = _cloud_code(text)
        if _is_throttling(code, text):
            return Failure("throttled", True, text, None, code)
        return Failure("other", False, text, None, code)
    if _is_timeout(exc):
        return Failure("timeout", True, f"timed out ({type(exc).__name__})",
                       applied_unknown=True)
    if isinstance(exc, OSError | http.client.HTTPException):
        reason = scrub(getattr(exc, "strerror", None) or exc) or type(exc).__name__
        errno = _ERRNO.search(reason)  # requests wraps "[Errno 111] Connection refused" deeply
        not_sent = isinstance(exc, socket.gaierror | ConnectionRefusedError) or any(
            s in reason for s in ("Failed to establish a new connection", "NameResolution"))
        return Failure("network", True, f"{type(exc).__name__}: "
                       f"{errno.group(0).strip() if errno else reason}",
                       applied_unknown=not not_sent)
    return Failure("other", False, f"{type(exc).__name__}: {scrub(exc)}")


def _is_timeout(exc: BaseException) -> bool:
    if isinstance(exc, TimeoutError):  # socket.timeout is an alias
        return True
    try:
        import requests

        if isinstance(exc, requests.exceptions.Timeout):
            return True
    except ImportError:  # pragma: no cover - libcloud depends on requests
        pass
    return isinstance(exc, ssl.SSLError) and "timed out" in str(exc)


def _retry_after(headers: Any) -> float | None:
    if not headers:
        return None
    value = headers.get("retry-after") if hasattr(headers, "get") else None
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


class CloudProviderError(ProviderError):
    """A provider call failed; ``failure`` says how (kind, status, cloud error code)."""

    failure: Failure


class CloudRouterError(RouterError):
    """A router (load balancer) call failed; ``failure`` says how."""

    failure: Failure


def failure_of(exc: BaseException) -> Failure | None:
    return getattr(exc, "failure", None)


# --------------------------------------------------------------------------- the caller


@dataclass
class CloudCaller:
    """Runs blocking libcloud calls with retries and turns failures into imm errors.

    :param cloud: "AWS", "GCP", ... as people call it.
    :param name: the configured provider or router name (``aws-prod``).
    :param credentials_hint: what to check when credentials are refused, e.g.
        ``"$AWS_ACCESS_KEY_ID/$AWS_SECRET_ACCESS_KEY"`` (names, never values).
    :param endpoint: region -> the endpoint it talks to, for network error messages.
    """

    cloud: str
    name: str
    policy: CallPolicy
    scrub: Scrubber
    log: logging.Logger
    credentials_hint: str = "the credentials"
    endpoint: Callable[[str], str] | None = None
    error_cls: type[CloudProviderError] | type[CloudRouterError] = CloudProviderError
    kind_word: str = "provider"
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    def call(self, region: str, call: str, fn: Callable[..., T], *args: Any,
             recover: Callable[[], T | None] | None = None, idempotent: bool = True,
             **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` with retries; see the module docstring."""
        attempt = 0
        started = time.monotonic()
        while True:
            attempt += 1
            try:
                return fn(*args, **kwargs)
            except ImmError:
                raise  # already an imm error (raised by the plugin's own code inside fn)
            except Exception as exc:  # noqa: BLE001 - every failure is classified below
                failure = classify(exc, self.scrub)
            may_retry = failure.retryable and attempt <= self.policy.retries and (
                idempotent or recover is not None or not failure.applied_unknown)
            if not may_retry:
                raise self.error(region, call, failure, attempt, time.monotonic() - started)
            delay = self.policy.delay(attempt, failure.retry_after)
            self.log.warning("%s %s %s, region %s: %s failed (%s: %s); retry %d of %d in %.2fs",
                             self.cloud, self.kind_word, self.name, region, call, failure.kind,
                             failure.message, attempt, self.policy.retries, delay)
            self.sleep(delay)
            if recover is not None and failure.applied_unknown:
                try:
                    found = recover()
                except (ProviderError, RouterError) as exc:
                    self.log.warning("%s %s %s, region %s: could not check whether %s took "
                                     "effect (%s); calling it again", self.cloud,
                                     self.kind_word, self.name, region, call, exc.message)
                    found = None
                if found is not None:
                    self.log.info("%s %s %s, region %s: %s had taken effect before it failed; "
                                  "using its result", self.cloud, self.kind_word, self.name,
                                  region, call)
                    return found

    def error(self, region: str, call: str, failure: Failure, attempts: int = 1,
              elapsed: float = 0.0) -> CloudProviderError | CloudRouterError:
        where = f"{self.cloud} {self.kind_word} {self.name}, region {region}"
        after = f" after {attempts} attempts ({elapsed:.1f}s)" if attempts > 1 else ""
        endpoint = self.endpoint(region) if self.endpoint else "the API endpoint"
        hint = {
            "auth": f"check {self.credentials_hint}: are they valid, not expired, and allowed "
                    f"to call {call}?",
            "throttled": "the API kept throttling; raise retries or backoff_max_s, or lower "
                         "imm's concurrency for this provider",
            "server": "the cloud API is failing (HTTP 5xx); retry later and check the cloud's "
                      "status page",
            "timeout": f"no answer within timeout_s={self.policy.timeout_s:g}s; check network "
                       f"access to {endpoint} or raise timeout_s",
            "network": f"cannot talk to {endpoint}; check DNS, proxy and firewall (and "
                       f"endpoint if set)",
            "malformed": f"{endpoint} did not answer like the {self.cloud} API (a proxy or "
                         f"captive portal?); check endpoint and proxy settings",
            "client": "the request was rejected; check the ids and settings it names",
            "other": "see the message; this may be a bug in imm or libcloud",
        }[failure.kind]
        status = f" (HTTP {failure.status})" if failure.status and failure.kind != "throttled" \
            else ""
        message = self.scrub(f"{where}: {call} failed{after}{status}: {failure.message}. {hint}")
        err = self.error_cls(message, detail={
            "cloud": self.cloud, self.kind_word: self.name, "region": region, "call": call,
            "attempts": attempts, "kind": failure.kind, "http_status": failure.status,
            "cloud_code": failure.cloud_code,
        })
        err.failure = failure
        return err
