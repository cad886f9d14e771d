"""What an operator sees of immctl: one JSON shape for every list, help and an example on every
command, a manual page and shell completions generated from the parser (and kept current),
errors that say things once. Driven against a real immd."""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness import IMMCTL, REPO, Immd

sys.path.insert(0, str(REPO / "scripts"))

from cli_docs import FILES, SHARE, render  # noqa: E402

from imm.cli.main import build_parser  # noqa: E402


def leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[
        tuple[tuple[str, ...], argparse.ArgumentParser]]:
    out = []
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs and path:
        return [(path, parser)]
    for action in subs:
        for name, sub in action.choices.items():
            out += leaves(sub, (*path, name))
    return out


def test_every_option_has_help_and_every_command_an_example() -> None:
    commands = leaves(build_parser())
    assert len(commands) > 40
    for path, parser in commands:
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"immctl {' '.join(path)}: {action.dest} has no help text"
        assert parser.epilog and "example:" in parser.epilog, f"immctl {' '.join(path)}"
        example = parser.epilog.split("example:", 1)[1].strip().splitlines()[0]
        assert example.startswith("immctl " + " ".join(path)), (path, example)


def test_help_topics_and_commands() -> None:
    out = subprocess.run([IMMCTL, "help", "rollout", "start"], capture_output=True, text=True)
    assert out.returncode == 0 and "example:" in out.stdout and "--wait" in out.stdout
    out = subprocess.run([IMMCTL, "help", "json"], capture_output=True, text=True)
    assert out.returncode == 0 and '{"items": [ ... ], "next": CURSOR-or-null}' in out.stdout
    out = subprocess.run([IMMCTL, "help", "rollout", "bogus"], capture_output=True, text=True)
    assert out.returncode == 2 and "'bogus'" in out.stderr and "start" in out.stderr
    assert "Traceback" not in out.stderr


def test_generated_manual_and_completions_are_current() -> None:
    fresh = render()
    for name in FILES:
        assert (SHARE / name).read_text() == fresh[name], (
            f"imm/cli/share/{name} is stale: run scripts/cli_docs.py")
    assert "immctl rollout start web \\-\\-image web@v2 \\-\\-wait" in fresh["man/immctl.1"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_bash_completion_completes_commands_and_subcommands() -> None:
    script = SHARE / "bash-completion" / "immctl"
    printed = subprocess.run([IMMCTL, "completion", "bash"], capture_output=True, text=True)
    assert printed.stdout == script.read_text()

    def complete(*words: str) -> set[str]:
        line = " ".join(words)
        out = subprocess.run(
            ["bash", "-c", f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1};"
             " _shtab_immctl; printf '%s\\n' \"${COMPREPLY[@]}\""],
            capture_output=True, text=True, check=True)
        return set(out.stdout.split())

    assert {"rollout", "image", "instance"} <= complete("immctl", "")
    assert {"start", "status", "watch", "abort"} <= complete("immctl", "rollout", "")
    assert "--wait" in complete("immctl", "rollout", "start", "--w")


@pytest.mark.skipif(shutil.which("zsh") is None, reason="no zsh")
def test_zsh_completion_parses() -> None:
    subprocess.run(["zsh", "-n", str(SHARE / "zsh" / "_immctl")], check=True)


def test_immctl_does_not_import_the_generators() -> None:
    code = ("import sys\nfrom imm.cli.main import main\n"
            "for argv in (['help', 'rollout', 'start'], ['completion', 'zsh']):\n"
            "    main(argv)\n"
            "bad = [m for m in ('shtab', 'argparse_manpage') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


LISTS = [
    ("keys", "list"), ("image", "list"), ("image", "list", "--all"), ("channel", "list"),
    ("channel", "history", "web/production"), ("rollout", "list"), ("service", "list"),
    ("instance", "list"), ("instance", "list", "--quarantined"), ("audit", "findings"),
    ("audit", "instances"), ("token", "list"), ("operator", "list"), ("change", "list"),
    ("change", "list", "--all"), ("image", "attestations", "web@1"),
]
# list commands whose shape another test holds (they need a rollout first), by command
ELSEWHERE = {("rollout", "analysis"): "tests/test_e2e_analysis.py"}
LISTING = {"list", "history", "findings", "instances", "attestations", "analysis"}


def test_the_shape_test_knows_every_list_command() -> None:
    """A new list command cannot slip past the {items, next} check below."""
    covered = {args[:2] for args in LISTS} | set(ELSEWHERE)
    listing = {path for path, _ in leaves(build_parser()) if path[-1] in LISTING}
    assert listing - covered == set(), "add these to LISTS (or ELSEWHERE with its test)"


def test_every_list_prints_items_and_next(tmp_path: Path) -> None:
    d = Immd(tmp_path).start()
    for v in ("1", "2", "3"):
        p = tmp_path / f"{v}.raw"
        p.write_bytes(hashlib.sha256(v.encode()).digest() * 100)
        d.run("image", "add", str(p), "--name", "web", "--version", v)
    d.run("channel", "set", "web/production", "web@2")
    for args in LISTS:
        out = d.json(*args)
        assert isinstance(out, dict) and set(out) == {"items", "next"}, (args, out)
        assert isinstance(out["items"], list), args
    assert sorted(i["version"] for i in d.items("image", "list")) == ["1", "2", "3"]
    page = d.json("image", "list", "--limit", "2")
    assert len(page["items"]) == 2 and page["next"].startswith("sha256:")
    assert d.json("image", "list", "--all")["next"] is None
    assert [h["image"] for h in d.items("channel", "history", "web/production")] == ["web@2"]

    table = d.run("image", "list").stdout.splitlines()
    assert table[0].split()[:2] == ["IMAGE", "DIGEST"] and table[1].startswith("web@")
    assert table[1].split()[1].startswith("sha256:")


def test_a_missing_version_lists_the_known_versions_once(tmp_path: Path) -> None:
    d = Immd(tmp_path).start()
    for v in ("1.0", "1.1"):
        p = tmp_path / f"{v}.raw"
        p.write_bytes(hashlib.sha256(v.encode()).digest() * 100)
        d.run("image", "add", str(p), "--name", "base", "--version", v)
    err = d.fails("image", "show", "base@2.0", code=3).stderr
    assert err.count("1.1") == 1 and err.count("1.0") == 1, err
    assert "known versions: " in err and "candidates" not in err


# -- progress lines ------------------------------------------------------------------------------

def status(state: str, journal: list[dict], running: str | None = None,
           instances: list[dict] | None = None) -> dict:
    plan = [{"name": "0-launch", "op": "launch"}, {"name": "1-attach", "op": "attach"},
            {"name": "2-shift", "op": "shift", "pct": 20},
            {"name": "3-pause", "op": "pause", "seconds": 5},
            {"name": "4-shift", "op": "shift", "pct": 100},
            {"name": "5-retire", "op": "retire", "count": "all"}]
    done = {j["step"] for j in journal if j["action"] == "done"}
    for s in plan:
        s["status"] = "done" if s["name"] in done else "running" if s["name"] == running \
            else "pending"
    return {"state": state, "plan": plan, "journal": journal, "instances": instances or [],
            "elapsed_s": 12, "step": running or (journal[-1]["step"] if journal else None)}


LAUNCHED = {"step": "0-launch", "action": "done", "detail": {"instances": ["i-1", "i-2", "i-3"]}}
ATTACHED = {"step": "1-attach", "action": "done",
            "detail": {"instances": ["i-1", "i-2", "i-3"], "healthy": True}}


def test_a_finished_rollout_ends_with_its_real_counts() -> None:
    from imm.cli.rollout_cmds import progress_line

    journal = [LAUNCHED, ATTACHED] + [{"step": s, "action": "done", "detail": {}}
                                      for s in ("2-shift", "3-pause", "4-shift", "5-retire")]
    line = progress_line(status("completed", journal))
    assert line.endswith("step 6/6 5-retire   new 3 launched, 3 healthy, traffic to new 100%")
    failed = [LAUNCHED, {"step": "1-attach", "action": "begin", "detail": {}},
              {"step": "rollback", "action": "done", "detail": {"removed": ["i-1"]}}]
    line = progress_line(status("rolled-back", failed))
    assert "rolled-back" in line and line.endswith("new 3 launched, 0 healthy, traffic to new 0%")


def test_a_canary_pause_counts_down() -> None:
    from imm.cli.rollout_cmds import progress_line

    now = 1_800_000_000.0
    journal = [LAUNCHED, ATTACHED, {"step": "2-shift", "action": "done", "detail": {}},
               {"step": "3-pause", "action": "begin", "detail": {"at_ms": int((now - 2) * 1000)}}]
    live = [{"new": True, "healthy": True, "weight": 64}] * 3 + \
           [{"new": False, "healthy": True, "weight": 256}] * 3
    line = progress_line(status("running", journal, "3-pause", live), now=now)
    assert "3-pause 3s left" in line and "new 3 launched, 3 healthy, traffic to new 20%" in line
    assert "3-pause 0s left" in progress_line(status("running", journal, "3-pause", live),
                                              now=now + 60)
