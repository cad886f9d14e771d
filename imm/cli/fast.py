"""immctl's entry point: the hot read commands without argparse.

``image list``, ``image show REF`` and ``status --json`` are what scripts and people run most,
and argparse (with the json and re it brings) costs more than the rest of such a run. ``run``
recognises exactly those argument lines (with their options, ``--json`` and ``--socket``
anywhere, as imm.cli.main takes them) and runs the same command functions with the same
client; any other line (help, a typo, an abbreviated or repeated-in-a-strange-way option, a
value that looks like an option) is declined, and so is a run that fails (daemon unreachable,
an API error): imm.cli.main then runs the line from the start, so help, usage errors and error
messages are argparse's and main's, byte for byte.
"""

from __future__ import annotations

import sys

from .argv import split_globals

TYPE_CHECKING = False  # typing is not imported at run time: immctl starts quicker
if TYPE_CHECKING:
    from typing import Any


class Args:
    """The attributes a command function reads from argparse's Namespace."""

    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


def _options(words: list[str], valued: tuple[str, ...],
             flags: tuple[str, ...]) -> tuple[dict[str, Any], list[str]] | None:
    """Options (``--opt VALUE``, ``--opt=VALUE``, flags) and positionals, as argparse would
    read them for a parser with just these options; None for anything argparse might read
    otherwise or refuse (``-h``, ``--``, abbreviations, a value that starts with '-')."""
    opts: dict[str, Any] = {}
    pos: list[str] = []
    it = iter(words)
    for w in it:
        if not w.startswith("-"):
            pos.append(w)
            continue
        name, eq, value = w.partition("=")
        if name in valued:
            if not eq:
                nxt = next(it, None)
                if nxt is None or nxt.startswith("-"):
                    return None
                value = nxt
            opts[name] = value
        elif name in flags and not eq:
            opts[name] = True
        else:
            return None
    return opts, pos


def _image_list(words: list[str], as_json: bool) -> Args | None:
    got = _options(words, ("--name", "--status", "--limit"), ("--all",))
    if got is None or got[1]:
        return None
    opts = got[0]
    status = opts.get("--status")
    if status not in (None, "active", "revoked"):
        return None
    limit = opts.get("--limit", "100")
    if not limit.isascii() or not limit.isdigit():  # imm.cli.client.ascii_int, without '-'
        return None
    return Args(name=opts.get("--name"), status=status, limit=int(limit),
                all=opts.get("--all", False), json=as_json)


def _image_show(words: list[str], as_json: bool) -> Args | None:
    got = _options(words, (), ())
    if got is None or len(got[1]) != 1:
        return None
    return Args(ref=got[1][0], json=as_json)


def run(argv: list[str]) -> int | None:
    """Run ``argv`` if it is one of the lines this module knows; None when it is not, or when
    the run failed before printing anything (imm.cli.main then runs it from the start)."""
    rest, as_json, sock = split_globals(argv)
    if "--socket" in rest:
        return None  # a --socket without its value: argparse's message
    fn: Any = None
    args: Args | None
    if rest == ["status"] and as_json:
        args = Args(json=True)
    elif rest[:2] == ["image", "list"]:
        from .catalog_cmds import cmd_image_list as fn

        args = _image_list(rest[2:], as_json)
    elif rest[:2] == ["image", "show"]:
        from .catalog_cmds import cmd_image_show as fn

        args = _image_show(rest[2:], as_json)
    else:
        return None
    if args is None:
        return None
    from .client import ApiError, Client, DaemonUnreachable, Fail

    client = Client(sock)
    try:
        if fn is None:  # status --json (its table is imm.cli.main's)
            from .render import emit_json

            emit_json(client.request("GET", "/v1/status"))
            return 0
        return int(fn(client, args))
    except (DaemonUnreachable, ApiError, Fail):
        return None  # main's messages and exit codes, from main
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rc = run(argv)
    if rc is not None:
        return rc
    from .main import main as full

    return full(argv)


if __name__ == "__main__":
    sys.exit(main())
