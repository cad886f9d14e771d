"""Shared machinery for every libcloud-based provider and router (AWS, GCP, Azure, OpenStack):
the one home of settings parsing, credentials, per-region driver caching, retries and error
naming. Modules: ``settings``, ``credentials``, ``calls``, ``drivers``, ``gcp``.

What it gives a plugin:

- :class:`CallPolicy` — ``timeout_s`` (default 30: the socket timeout of every HTTP request the
  driver makes), ``retries`` (default 5), ``backoff_base_s`` (0.5) and ``backoff_max_s`` (10),
  read and checked from the plugin's settings.
- :func:`load_credentials` — credentials from environment variables or files named in the
  settings (``key_env`` / ``key_file``, ``secret_env`` / ``secret_file``, ...), each with a
  default environment variable. Values never reach a log line, an error message or ``repr``.
- :class:`Scrubber` — removes credential values (and anything shaped like an AWS access key id,
  a SigV4 ``Credential=`` scope, a signature or a session token) from any text.
- :class:`DriverCache` — one libcloud driver per region, built on first use, behind a lock.
- :class:`CredentialCache` — credentials read once on first use, their values scrubbed.
- :class:`~imm.plugins.cloud.gcp.GCPAuth` — Google auth for the gcp provider and cloudlb's GCE.
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

from .calls import (
    DEFAULT_BACKOFF_BASE_S,
    DEFAULT_BACKOFF_MAX_S,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT_S,
    MAX_RETRY_AFTER_S,
    THROTTLING_CODES,
    CallPolicy,
    CloudCaller,
    CloudProviderError,
    CloudRouterError,
    Failure,
    classify,
    failure_of,
)
from .credentials import (
    REDACTED,
    CredentialCache,
    Credentials,
    CredentialSpec,
    Scrubber,
    check_credential_settings,
    credential_settings,
    credentials_hint,
    load_credentials,
)
from .drivers import DriverCache
from .settings import (
    one_str,
    parse_endpoint,
    parse_time,
    per_region,
    point_connection,
    required,
    set_timeout,
    setting_bool,
    setting_int,
    setting_num,
    setting_str,
    setting_str_list,
)

__all__ = [
    "DEFAULT_BACKOFF_BASE_S", "DEFAULT_BACKOFF_MAX_S", "DEFAULT_RETRIES", "DEFAULT_TIMEOUT_S",
    "MAX_RETRY_AFTER_S", "REDACTED", "THROTTLING_CODES", "CallPolicy", "CloudCaller",
    "CloudProviderError", "CloudRouterError", "CredentialCache", "CredentialSpec", "Credentials",
    "DriverCache", "Failure", "Scrubber", "check_credential_settings", "classify",
    "credential_settings", "credentials_hint", "failure_of", "load_credentials", "one_str",
    "parse_endpoint", "parse_time", "per_region", "point_connection", "required", "set_timeout",
    "setting_bool", "setting_int", "setting_num", "setting_str", "setting_str_list",
]
