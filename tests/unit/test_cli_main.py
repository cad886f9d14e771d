"""immctl's entry point: stdlib only on the way to the socket, every group in the parser, the
exit codes of a failure that happens before (or instead of) the request."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import webbrowser
from pathlib import Path

import pytest

from imm.cli.client import Fail
from imm.cli.main import build_parser, cmd_dashboard, main
from imm.errors import EXIT_UNAVAILABLE, EXIT_USAGE

# what immctl may load of imm: its own package, the errors, and the rollout vocabulary
ALLOWED_IMM = ("imm", "imm.errors", "imm.exit_codes", "imm.cli", "imm.rollout", "imm.rollout.states")


def test_immctl_imports_only_the_standard_library() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import json, sys; import imm.cli.main; "
                               "print(json.dumps(sorted(sys.modules)))"],
        capture_output=True, text=True, check=True).stdout
    loaded = json.loads(out)
    foreign = sorted(m for m in {m.split(".")[0] for m in loaded} - set(sys.stdlib_module_names)
                     - {"imm", "__main__", "_distutils_hack", "sitecustomize", "usercustomize"}
                     if not m.startswith("__editable__"))  # the editable install's finder
    assert foreign == [], f"immctl imports non-stdlib modules: {foreign}"
    imm = [m for m in loaded if m == "imm" or m.startswith("imm.")]
    stray = [m for m in imm if m not in ALLOWED_IMM and not m.startswith("imm.cli.")]
    assert stray == [], f"immctl imports more of imm than it needs: {stray}"
    assert "imm.audit.bundle_verify" not in imm  # imported only when 'audit verify' runs


def test_every_command_group_is_in_the_parser() -> None:
    parser = build_parser()
    groups = next(a for a in parser._actions if a.dest == "cmd").choices  # noqa: SLF001
    assert {"image", "keys", "channel", "ledger", "rollout", "service", "instance",
            "audit"} <= set(groups)


def test_build_parser_with_only_one_group_still_parses_it() -> None:
    args = build_parser(only="rollout").parse_args(["rollout", "start", "web", "--image",
                                                    "app@2", "--strategy", "canary"])
    assert (args.service, args.image, args.strategy) == ("web", "app@2", "canary")
    with pytest.raises(SystemExit):
        build_parser(only="rollout").parse_args(["rollout", "start", "web", "--image", "x",
                                                 "--strategy", "sideways"])


def test_a_missing_path_is_bad_input_before_any_request(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMM_SOCKET", str(tmp_path / "none.sock"))
    rc = main(["image", "add", str(tmp_path / "absent.raw"), "--name", "x", "--version", "1"])
    assert rc == EXIT_USAGE
    assert "absent.raw does not exist" in capsys.readouterr().err


def test_no_daemon_is_exit_69_with_a_hint(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMM_SOCKET", str(tmp_path / "none.sock"))
    assert main(["status"]) == EXIT_UNAVAILABLE
    err = capsys.readouterr().err
    assert "none.sock" in err and "--socket" in err
    assert main(["status", "--json"]) == EXIT_UNAVAILABLE
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "unavailable"


def test_audit_verify_failures_are_usage_errors(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["audit", "verify", str(tmp_path / "bundle.jsonl"), "--key",
               str(tmp_path / "absent.pem")])
    assert rc == EXIT_USAGE
    assert "cannot read key" in capsys.readouterr().err


def test_fail_carries_its_exit_code() -> None:
    assert Fail("x").code == 1 and Fail("x", EXIT_USAGE).code == EXIT_USAGE


def test_dashboard_open_hands_the_link_to_the_browser(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """``immctl dashboard --open`` starts $BROWSER (webbrowser's own convention) with the link."""
    got = tmp_path / "opened"
    browser = tmp_path / "browser"
    browser.write_text(f"#!/bin/sh\nprintf '%s' \"$1\" > {got}\n")
    browser.chmod(0o755)
    monkeypatch.setenv("BROWSER", str(browser))
    monkeypatch.delenv("DISPLAY", raising=False)
    url = "http://127.0.0.1:8780/ui/login?t=abc"

    class Link:
        def request(self, method: str, path: str) -> dict[str, object]:
            assert (method, path) == ("GET", "/v1/dashboard/link")
            return {"url": url, "actor": "a (uid 1)", "role": "reader", "expires_in_s": 60}

    monkeypatch.setattr(webbrowser, "_tryorder", None)  # re-read $BROWSER
    assert cmd_dashboard(Link(), argparse.Namespace(json=False, open=True)) == 0  # type: ignore
    assert capsys.readouterr().out.strip() == url
    for _ in range(100):
        if got.exists() and got.read_text():
            break
        time.sleep(0.05)
    assert got.read_text() == url


def _choices(parser: argparse.ArgumentParser) -> set[str]:
    return set(next(a for a in parser._actions  # noqa: SLF001
                    if isinstance(a, argparse._SubParsersAction)).choices)  # noqa: SLF001


def test_only_the_invoked_command_and_subcommand_are_built() -> None:
    parser = build_parser("image", "list")
    assert _choices(parser) == {"image"}
    group = next(a for a in parser._actions  # noqa: SLF001
                 if isinstance(a, argparse._SubParsersAction)).choices["image"]
    assert _choices(group) == {"list"}
    args = parser.parse_args(["image", "list", "--name", "web", "--limit", "5"])
    assert (args.name, args.limit, args.fn.__name__) == ("web", 5, "cmd_image_list")
    # a name argparse must refuse: everything is built, so its message lists every choice
    group = next(a for a in build_parser("image", "lst")._actions  # noqa: SLF001
                 if isinstance(a, argparse._SubParsersAction)).choices["image"]
    assert {"add", "list", "show", "verify", "revoke"} <= _choices(group)
    assert {"image", "rollout", "audit", "witness"} <= _choices(build_parser("imagex"))


def test_a_mistyped_subcommand_lists_the_group_s_choices(capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    with pytest.raises(SystemExit) as e:
        main(["image", "lst"])
    assert e.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "invalid choice: 'lst'" in err and "'list'" in err and "'revoke'" in err
