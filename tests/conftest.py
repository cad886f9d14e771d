"""pytest's view of tests/harness.py: its fixtures and hooks. Tests import helpers from
``harness`` (not from ``conftest``: tests/unit has a conftest of its own, and two modules named
conftest cannot both be imported by that name)."""

from harness import *  # noqa: F403
from harness import _reap_daemons  # noqa: F401  (autouse fixture; a star import skips it)
