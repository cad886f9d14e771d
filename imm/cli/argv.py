"""The options immctl takes anywhere on its line (``--json``, ``--socket``), for the fast path
(imm/cli/fast.py) and the argparse one (imm/cli/main.py) alike. Standard library only."""


def split_globals(argv: list[str]) -> tuple[list[str], bool, str | None]:
    """Take --json and --socket from anywhere on the line (both paths use this). A --socket
    without its value stays on the line, for argparse to say "expected one argument"."""
    rest: list[str] = []
    as_json, sock = False, None
    args = iter(argv)
    for arg in args:
        if arg == "--json":
            as_json = True
        elif arg == "--socket":
            sock = next(args, None)
            if sock is None:
                rest.append(arg)
        elif arg.startswith("--socket="):
            sock = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return rest, as_json, sock
