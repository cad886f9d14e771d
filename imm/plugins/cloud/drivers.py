"""Per-region libcloud drivers: made on first use, shared, each behind its own lock."""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from typing import Any

from ...errors import BadRequest


class DriverCache:
    """One driver per region (AWS region, OpenStack region, Azure location), built by ``make``
    the first time a call needs it and kept until ``clear()``.

    A libcloud driver keeps per-request state on its connection (paging, tokens), so a call
    holds the region's lock while it uses the driver; calls to different regions run at once.
    A region outside ``regions`` is refused naming the configured ones (``what`` is the word the
    cloud uses: "region", "location").
    """

    def __init__(self, where: str, regions: Collection[str], make: Callable[[str], Any],
                 what: str = "region") -> None:
        self.where = where
        self.regions = regions
        self.what = what
        self._make = make
        self._lock = threading.Lock()
        self._drivers: dict[str, tuple[Any, threading.Lock]] = {}

    def check(self, region: str) -> None:
        if region not in self.regions:
            plural = "locations" if self.what == "location" else f"{self.what}s"
            raise BadRequest(f"{self.where}: {self.what} {region!r} is not configured "
                             f"({plural}: {', '.join(self.regions)})")

    def get(self, region: str) -> tuple[Any, threading.Lock]:
        """``(driver, lock)`` of ``region``; builds the driver on first use (outside any other
        region's lock; a failed build is not cached)."""
        self.check(region)
        with self._lock:
            found = self._drivers.get(region)
            if found is None:
                found = (self._make(region), threading.Lock())
                self._drivers[region] = found
            return found

    def cached(self) -> list[str]:
        with self._lock:
            return sorted(self._drivers)

    def clear(self) -> None:
        """Forget every driver (``close``): the next call builds a new one."""
        with self._lock:
            self._drivers.clear()
