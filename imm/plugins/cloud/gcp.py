"""Google Cloud credentials and drivers, shared by the gcp provider and the cloudlb router's GCE
flavour: one reading of the auth settings, one key loader, one OAuth2 driver builder, one way of
naming Google's errors."""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from .credentials import CredentialSpec, Scrubber, check_credential_settings, load_credentials
from .settings import point_connection, set_timeout, setting_str

DEFAULT_CREDENTIALS_ENV = "GOOGLE_APPLICATION_CREDENTIALS"
AUTH_TYPES = ("SA", "GCE", "IA")
GOOGLE_API = "https://www.googleapis.com"
API_SCOPE = "https://www.googleapis.com/auth/compute"  # all imm asks its token for
CLIENT_SECRET = CredentialSpec("client_secret", "OAuth client secret", "GCP_CLIENT_SECRET")
# The settings GCPAuth reads (and the secrets it refuses to find in the config file).
AUTH_SETTINGS = ("project", "auth_type", "service_account_file", "credentials_env",
                 "client_id", "client_secret_env", "client_secret_file", "token_cache_file",
                 "private_key", "key", "client_secret", "access_token")


class GCPAuth:
    """How one plugin authenticates to Google: a service account key (``SA``, the default), the
    VM's own service account (``GCE``) or an installed-app token cache (``IA``).

    The constructor checks the settings only; the key is read on the first ``credentials()``.
    ``scrub`` learns every secret it reads (the key, the OAuth2 tokens).
    """

    def __init__(self, settings: Mapping[str, Any], where: str, token_cache: Path,
                 scrub: Scrubber, log: logging.Logger, sa_email: str | None = None) -> None:
        s = settings
        self.where, self.scrub, self.log, self.sa_email = where, scrub, log, sa_email
        self.project_setting = setting_str(s, "project", where)
        self._project = self.project_setting
        self.auth_type = (setting_str(s, "auth_type", where, "SA") or "SA").upper()
        if self.auth_type not in AUTH_TYPES:
            raise ConfigError(f"{where}: auth_type = {s.get('auth_type')!r}; use one of "
                              f"{', '.join(AUTH_TYPES)}")
        self.sa_file = setting_str(s, "service_account_file", where)
        self.credentials_env = setting_str(s, "credentials_env", where, DEFAULT_CREDENTIALS_ENV)
        if self.sa_file and "credentials_env" in s:
            raise ConfigError(f"{where}: set service_account_file or credentials_env, not both")
        for secret in ("private_key", "key", "client_secret", "access_token"):
            if secret in s:
                raise ConfigError(f"{where}: credentials do not belong in the config file; "
                                  f"point service_account_file (or credentials_env) at the "
                                  f"JSON key, readable only by immd")
        check_credential_settings(s, [CLIENT_SECRET], where)
        self.settings = s
        self.client_id = setting_str(s, "client_id", where)
        if self.auth_type == "IA" and not self.client_id:
            raise ConfigError(f"{where}: auth_type = \"IA\" needs client_id (and "
                              f"client_secret_env or client_secret_file)")
        if self.auth_type != "SA" and not self._project:
            raise ConfigError(f"{where}: set project (auth_type {self.auth_type} has no key "
                              f"file to take it from)")
        cache = setting_str(s, "token_cache_file", where)
        self.token_cache_default = cache is None
        self.token_cache = Path(cache) if cache else token_cache
        self._lock = threading.Lock()
        self._auth: tuple[str, Any] | None = None

    @property
    def hint(self) -> str:
        """What to check when Google refuses the credentials (names, never values)."""
        if self.auth_type == "GCE":
            return "the service account of this GCE VM (metadata server) and its scopes"
        if self.auth_type == "IA":
            return f"client_id, the client secret and the refresh token in {self.token_cache}"
        src = f"file {self.sa_file}" if self.sa_file else f"${self.credentials_env}"
        return f"the service account key ({src}) and its IAM roles in the project"

    def credentials(self) -> tuple[str, Any]:
        """(user_id, key) for libcloud; reads the key file once."""
        with self._lock:
            if self._auth is not None:
                return self._auth
            if self.auth_type == "SA":
                self._auth = self._service_account()
            elif self.auth_type == "GCE":
                self._auth = (self.sa_email or "default", None)
            else:
                creds = load_credentials(self.settings, [CLIENT_SECRET], self.where, self.log)
                self.scrub.add(*creds.secrets())
                self._check_ia_token_cache()
                self._auth = (str(self.client_id), creds.get("client_secret"))
            return self._auth

    def forget(self) -> None:
        with self._lock:
            self._auth = None

    @property
    def project(self) -> str:
        if not self._project:
            self.credentials()
        assert self._project
        return self._project

    def _service_account(self) -> tuple[str, Any]:
        path = self.sa_file
        if not path:
            path = os.environ.get(self.credentials_env or DEFAULT_CREDENTIALS_ENV, "").strip()
            if not path:
                raise ConfigError(
                    f"{self.where}: no service account key: set service_account_file, or the "
                    f"environment variable ${self.credentials_env} to the path of the JSON key")
        p = Path(path)
        try:
            st = p.stat()
            text = p.read_text()
        except OSError as exc:
            raise ConfigError(f"{self.where}: cannot read the service account key {path}: "
                              f"{exc.strerror or type(exc).__name__}; check the path and that "
                              f"immd may read it") from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            self.log.warning("%s: service account key %s is readable by group or others "
                             "(mode %o); chmod 600 it", self.where, path, stat.S_IMODE(st.st_mode))
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise ConfigError(f"{self.where}: {path} is not a JSON service account key (create "
                              f"one with: gcloud iam service-accounts keys create)")
        for secret in (data.get("private_key"), data.get("private_key_id")):
            if isinstance(secret, str):
                self.scrub.add(secret, secret.replace("\n", "\\n"),
                               *(line for line in secret.splitlines() if len(line) >= 16))
        missing = [k for k in ("client_email", "private_key") if not data.get(k)]
        if data.get("type", "service_account") != "service_account" or missing:
            raise ConfigError(f"{self.where}: {path} is not a service account key (type "
                              f"{data.get('type')!r}; missing {', '.join(missing) or 'nothing'})")
        if not self._project:
            self._project = data.get("project_id") or None
            if not self._project:
                raise ConfigError(f"{self.where}: set project (the key {path} names none)")
        return str(data["client_email"]), {"private_key": data["private_key"],
                                           "client_email": data["client_email"]}

    def _check_ia_token_cache(self) -> None:
        try:
            token = json.loads(self.token_cache.read_text())
        except (OSError, ValueError):
            token = None
        if not isinstance(token, dict) or not token.get("refresh_token"):
            raise ConfigError(f"{self.where}: auth_type \"IA\" needs a token cache "
                              f"{self.token_cache} holding a refresh token (made once by an "
                              f"interactive libcloud login); immd never starts one itself")
        self.scrub.add(token.get("refresh_token"), token.get("access_token"))

    def compute_driver(self, endpoint: tuple[str, int, bool] | None, timeout_s: float,
                       poll_interval: float) -> Any:
        """A libcloud GCE compute driver, authenticated (fetching the OAuth2 token is a network
        call: run it through a CloudCaller) and aimed at ``endpoint`` when one is set (the GCE
        driver takes no host/port in its constructor: they are set on its connection)."""
        from libcloud.compute.providers import get_driver

        user_id, key = self.credentials()
        if self.token_cache_default:
            self.token_cache.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        driver: Any = get_driver("gce")(
            user_id, key, datacenter=None, project=self.project, auth_type=self.auth_type,
            credential_file=str(self.token_cache), scopes=[API_SCOPE])
        if endpoint:
            host, port, secure = endpoint
            point_connection(driver, host, port, secure, timeout_s)
        else:
            set_timeout(driver, timeout_s)
        driver.connection.poll_interval = poll_interval
        self.note_token(driver)
        return driver

    def note_token(self, driver: Any) -> None:
        """Teach the scrubber the driver's current OAuth2 tokens (they are refreshed)."""
        token = getattr(getattr(driver.connection, "oauth2_credential", None), "token", None)
        if isinstance(token, dict):
            self.scrub.add(token.get("access_token"), token.get("refresh_token"))


def with_reason(exc: Any) -> Any:
    """The libcloud Google error, its message prefixed with the GCE reason code (so that
    :func:`~imm.plugins.cloud.classify` finds it: ``rateLimitExceeded: ...``)."""
    code = getattr(exc, "code", None)
    value = exc.value
    if isinstance(value, dict):  # libcloud keeps the error item when it has no "code" key
        code = code or value.get("reason") or value.get("code")
        text = str(value.get("message") or json.dumps(value))
    else:
        text = str(value)
    if isinstance(code, str) and code and not text.startswith(code):
        text = f"{code}: {text}"
    exc.value = text
    exc.args = (text,)
    if isinstance(code, str) and code:
        exc.code = code  # ResourceNotFoundError loses it in libcloud's constructor chain
    if getattr(exc, "http_code", None) == 200:
        exc.http_code = None  # an operation that ended in an error: no HTTP status to show
    return exc
