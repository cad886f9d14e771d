"""The exit codes immctl ends with (imm.errors maps each error class to one).

Stable: scripts rely on them. A module of its own so that immctl's read commands can name
them without importing the error classes.
"""

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4
EXIT_FORBIDDEN = 5
EXIT_REFUSED = 6
EXIT_VERIFY_FAILED = 7
EXIT_UNAVAILABLE = 69  # sysexits EX_UNAVAILABLE: the daemon cannot be reached
