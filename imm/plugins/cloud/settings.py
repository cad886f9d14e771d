"""Reading and checking a cloud plugin's settings; every error names the plugin and the key."""

from __future__ import annotations

import datetime
import logging
import urllib.parse
from collections.abc import Collection, Mapping, Set
from typing import Any

from ...errors import ConfigError


def warn_unknown(settings: Mapping[str, Any], known: Set[str], where: str,
                 log: logging.Logger) -> None:
    """A setting the plugin does not know (a typo, most often) is logged by name, not dropped
    silently."""
    unknown = sorted(set(settings) - set(known))
    if unknown:
        log.warning("%s: ignoring unknown settings %s", where, ", ".join(unknown))


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


def one_str(value: Any, key: str, where: str, per: str = "region") -> str:
    """One non-empty string of a setting given once or as a table per region (zone, location)."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: {key} = {value!r} must be a non-empty string "
                          f"(or a table of them per {per})")
    return value.strip()


def required(settings: Mapping[str, Any], key: str, where: str) -> str:
    """A string setting that must be there."""
    value = setting_str(settings, key, where)
    if not value:
        raise ConfigError(f"{where}: set {key}")
    return value
