"""pytest's view of tests/harness.py: its fixtures and hooks. Tests import helpers from
``harness`` (not from ``conftest``: tests/unit has a conftest of its own, and two modules named
conftest cannot both be imported by that name)."""

import pytest

from harness import *  # noqa: F403
from harness import _reap_daemons  # noqa: F401  (autouse fixture; a star import skips it)


def pytest_configure(config: pytest.Config) -> None:
    """A short base directory for every test's tmp_path unless --basetemp is given: tests that
    talk to an embedded haproxy through ``<state>/haproxy/<name>/admin.sock`` find the socket
    there only while that path fits the 97 bytes haproxy allows (beyond, the router moves it to
    a short private directory under /tmp and links it), and pytest-xdist adds a directory per
    worker to pytest's own (longer) default. Removed after a run that passed; kept for a look
    after one that failed."""
    if config.option.basetemp or hasattr(config, "workerinput"):
        return  # given by the caller, or by the xdist controller to its workers
    import tempfile

    config.option.basetemp = tempfile.mkdtemp(prefix="t", dir="/tmp")
    config._imm_own_basetemp = config.option.basetemp  # type: ignore[attr-defined]


def pytest_unconfigure(config: pytest.Config) -> None:
    own = getattr(config, "_imm_own_basetemp", None)
    if own and getattr(config, "_imm_failed", 0) == 0:
        import shutil

        shutil.rmtree(own, ignore_errors=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config._imm_failed = int(exitstatus)  # type: ignore[attr-defined]
