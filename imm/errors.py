"""One error hierarchy for the whole of imm.

Every error carries a stable ``code`` (machine-readable), a human ``message`` that names the
offending value and says what to do, an optional ``detail`` (JSON-able), the HTTP status the
daemon answers with, and the exit code ``immctl`` ends with. The daemon turns these into
``{"error": {"code", "message", "detail"}}``; anything else becomes a 500 without a traceback.
"""

from __future__ import annotations

# Exit codes immctl uses (in a module of their own: immctl's read commands need them without
# the classes below). Stable: scripts rely on them.
from .exit_codes import (  # noqa: F401 - re-exported: imm.errors is where they are looked up
    EXIT_CONFLICT,
    EXIT_ERROR,
    EXIT_FORBIDDEN,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    EXIT_VERIFY_FAILED,
)

TYPE_CHECKING = False  # typing is not imported at run time: immctl starts quicker
if TYPE_CHECKING:
    from typing import Any


class ImmError(Exception):
    code = "error"
    status = 500
    exit_code = EXIT_ERROR

    def __init__(self, message: str, *, detail: Any = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "detail": self.detail}}


class BadRequest(ImmError):
    """The caller sent something malformed: fix the input and try again."""

    code = "bad-request"
    status = 400
    exit_code = EXIT_USAGE


class NotFound(ImmError):
    code = "not-found"
    status = 404
    exit_code = EXIT_NOT_FOUND


class Ambiguous(ImmError):
    code = "ambiguous"
    status = 409
    exit_code = EXIT_CONFLICT


class Conflict(ImmError):
    code = "conflict"
    status = 409
    exit_code = EXIT_CONFLICT


class Forbidden(ImmError):
    code = "forbidden"
    status = 403
    exit_code = EXIT_FORBIDDEN


class PolicyRefused(ImmError):
    """A rollout or channel move was refused by a named policy rule."""

    code = "policy-refused"
    status = 422
    exit_code = EXIT_REFUSED


class VerificationFailed(ImmError):
    code = "verification-failed"
    status = 422
    exit_code = EXIT_VERIFY_FAILED


class PayloadTooLarge(ImmError):
    code = "payload-too-large"
    status = 413
    exit_code = EXIT_USAGE


class Unauthorized(ImmError):
    """No identity could be established (a loopback TCP request without a valid token)."""

    code = "unauthorized"
    status = 401
    exit_code = EXIT_FORBIDDEN


class NoSpace(ImmError):
    """The state directory's file system is full; the write was rolled back."""

    code = "no-space"
    status = 507
    exit_code = EXIT_ERROR


class StoreCorrupted(ImmError):
    """The database file fails SQLite's integrity check: restore it from a backup."""

    code = "store-corrupted"
    status = 500
    exit_code = EXIT_VERIFY_FAILED


class Unavailable(ImmError):
    code = "unavailable"
    status = 503
    exit_code = EXIT_UNAVAILABLE


class NotLeader(Conflict):
    """This immd is not (or no longer) the leader of the immd sharing its database: a write of
    the engine under a stale epoch, or a provider or router change after the lease lapsed or on a
    follower, is refused (fencing). The current leader carries the work on; an operator's
    change of instances is given to the leader ('immctl status' names it)."""

    code = "not_leader"


class ProviderError(ImmError):
    """A cloud or local provider call failed; the message names cloud, region and call."""

    code = "provider-error"
    status = 502
    exit_code = EXIT_ERROR


class RouterError(ImmError):
    code = "router-error"
    status = 502
    exit_code = EXIT_ERROR


class HealthTimeout(RouterError):
    """Backends did not pass their health check in time (``Router.wait_health``); ``detail``
    holds the route and the backends still unhealthy (``unhealthy``)."""

    code = "health-timeout"
    status = 504


class Unsupported(ImmError):
    """A configured provider or router lacks an optional operation (see its ``features``)."""

    code = "unsupported"
    status = 501
    exit_code = EXIT_ERROR


class ConfigError(ImmError):
    code = "config-error"
    status = 500
    exit_code = EXIT_USAGE


class PluginError(ImmError):
    code = "plugin-error"
    status = 500
    exit_code = EXIT_ERROR


ERROR_CLASSES: dict[str, type[ImmError]] = {
    cls.code: cls
    for cls in (
        ImmError, BadRequest, NotFound, Ambiguous, Conflict, Forbidden, PolicyRefused,
        VerificationFailed, PayloadTooLarge, Unauthorized, NoSpace, StoreCorrupted, Unavailable,
        ProviderError, RouterError, HealthTimeout, Unsupported, ConfigError, PluginError,
    )
}
