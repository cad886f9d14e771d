"""Write immctl's manual page and its bash and zsh completion from immctl's own parser.

    .venv/bin/python scripts/cli_docs.py

The files land in imm/cli/share/ (package data: `immctl completion bash|zsh` prints them, and a
pip install copies them to share/man/man1 and the shells' completion directories). They are
generated here, once, so immctl never imports shtab or argparse-manpage when it runs;
tests/test_cli.py fails when they are stale.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

SHARE = Path(__file__).resolve().parent.parent / "imm" / "cli" / "share"
FILES = {"bash-completion/immctl": "bash", "zsh/_immctl": "zsh", "man/immctl.1": "man"}


def render() -> dict[str, str]:
    os.environ["COLUMNS"] = "100"  # argparse wraps help to the terminal: make it fixed
    import shtab
    from argparse_manpage.manpage import Manpage

    from imm import __version__
    from imm.cli.main import build_parser

    out: dict[str, str] = {}
    for name, kind in FILES.items():
        parser = build_parser()
        if kind == "man":
            page = Manpage(parser, _data={
                "project_name": "imm", "version": __version__, "date": "2026-12-05",
                "manual_title": "imm manual", "manual_section": 1,
                "description": "drive immd, the control plane of an immutable fleet"})
            page.add_section("examples", "=", "\n".join(
                f".TP\n\\fB{path}\\fR\n{example}\n" for path, example in examples(parser)))
            out[name] = str(page)
        else:
            out[name] = shtab.complete(parser, shell=kind)
    return out


def examples(parser: argparse.ArgumentParser, path: str = "immctl") -> list[tuple[str, str]]:
    """(command, example) of every command, from the "example:" of its help."""
    out: list[tuple[str, str]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                epilog = sub.epilog or ""
                if "example:" in epilog and not any(
                        isinstance(a, argparse._SubParsersAction) for a in sub._actions):
                    text = epilog.split("example:", 1)[1].strip().replace("-", "\\-")
                    out.append((f"{path} {name}", "\n.br\n".join(x.strip() for x in text.splitlines())))
                out += examples(sub, f"{path} {name}")
    return out


def main() -> int:
    for name, text in render().items():
        (SHARE / name).parent.mkdir(parents=True, exist_ok=True)
        (SHARE / name).write_text(text)
        print(f"wrote {SHARE / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
