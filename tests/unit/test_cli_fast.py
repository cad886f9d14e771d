"""immctl's fast path (imm.cli.fast, imm.cli.fastjson) against the argparse path and the json
and urllib packages.

One real immd for the module: for each argument line of a table, the fast path either
declines it (and sends nothing) or sends exactly the requests imm.cli.main sends and prints
the same bytes with the same exit code. The JSON and query-string replacements are checked
against json and urllib.parse on random values and on the daemon's own answers, and a run of
the fast path is checked to import none of the modules it exists to avoid.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imm.cli import fast, fastjson
from imm.cli import main as slow
from imm.cli.client import Client, UnixHTTPConnection

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

from daemon import Immd  # noqa: E402

# what the fast path exists to leave out (argparse, json, and what they bring)
HEAVY = ("argparse", "json", "json.decoder", "re", "enum", "typing", "dataclasses", "pathlib",
         "urllib.parse", "gettext", "locale")


@pytest.fixture(scope="module")
def immd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Immd]:
    root = tmp_path_factory.mktemp("immd")
    files = root / "files"
    files.mkdir()
    d = Immd(root, f'[daemon]\nimage_roots = ["{files}"]\n').start()
    try:
        c = Client(str(d.sock))
        for i in range(7):
            p = files / f"{i}.raw"
            p.write_bytes(b"image %d\n" % i)
            c.request("POST", "/v1/images", {
                "path": str(p), "name": f"svc{i % 3}", "version": f"1.{i}",
                "layers": ["os=debian@12"] if i % 2 else [], "labels": [f"team=t{i}"]})
        c.request("POST", "/v1/images/svc0%401.0/revoke", {"reason": "CVE-2026-1", "cascade": False})
        yield d
    finally:
        d.stop()
        log = d.log.read_bytes()
        assert b"Traceback (most recent call last)" not in log, log.decode(errors="replace")


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch, immd: Immd) -> list[tuple[str, str]]:
    """Every request line sent, as (method, path with query)."""
    log: list[tuple[str, str]] = []
    real = UnixHTTPConnection.request

    def record(self: UnixHTTPConnection, method: str, path: str, *a: Any, **kw: Any) -> None:
        log.append((method, path))
        real(self, method, path, *a, **kw)

    monkeypatch.setattr(UnixHTTPConnection, "request", record)
    monkeypatch.setenv("IMM_SOCKET", str(immd.sock))
    return log


HANDLED = [
    ["status", "--json"],
    ["--json", "status"],
    ["image", "list"],
    ["image", "list", "--json"],
    ["image", "--json", "list"],
    ["image", "list", "--limit", "2"],
    ["image", "list", "--limit=3", "--json"],
    ["image", "list", "--name", "svc1"],
    ["image", "list", "--name=svc2", "--json"],
    ["image", "list", "--name", "svc1", "--name", "svc2"],
    ["image", "list", "--status", "revoked"],
    ["image", "list", "--status=active", "--limit", "2", "--json"],
    ["image", "list", "--all", "--limit", "2"],
    ["image", "list", "--all", "--json"],
    ["image", "list", "--name", "nobody"],
    ["image", "list", "--name", ""],
    ["image", "list", "--name", "a b/é&=?"],
    ["image", "list", "--name", "a b/é&=?", "--json"],
    ["image", "show", "svc1@1.1"],
    ["image", "show", "svc0@1.0", "--json"],
    ["image", "show", "svc1@1.4"],
]
DECLINED = [
    [], ["status"], ["--help"], ["status", "--json", "-h"], ["status", "extra", "--json"],
    ["image"], ["image", "list", "--help"], ["image", "list", "-h"], ["image", "list", "--lim", "2"],
    ["image", "list", "--limit", "two"], ["image", "list", "--limit", "-2"],
    ["image", "list", "--limit", "٣"], ["image", "list", "--limit"],
    ["image", "list", "--status", "gone"], ["image", "list", "--name", "--all"],
    ["image", "list", "--all=yes"], ["image", "list", "extra"], ["image", "list", "--", "x"],
    ["image", "show"], ["image", "show", "a", "b"], ["image", "show", "-x"],
    ["image", "show", "--", "svc1@1.1"], ["image", "verify", "--all"], ["images", "list"],
    ["image", "list", "--socket"], ["keys", "list", "--json"],
]
# lines the fast path takes up but that fail: imm.cli.main runs them again and says why
FAILING = [
    ["image", "show", "nosuch@9"],
    ["image", "show", "nosuch@9", "--json"],
    ["image", "show", "svc"],
    ["image", "list", "--limit", "0"],
    ["image", "list", "--limit", "0", "--json"],
]


def both(argv: list[str], sent: list[tuple[str, str]], capsys: pytest.CaptureFixture[str],
         first: Any) -> tuple[tuple[Any, str, str, list[tuple[str, str]]], ...]:
    out = []
    for fn in (first, slow.main):
        sent.clear()
        rc = fn(list(argv))
        cap = capsys.readouterr()
        out.append((rc, cap.out, cap.err, list(sent)))
    return tuple(out)


@pytest.mark.parametrize("argv", HANDLED, ids=" ".join)
def test_the_fast_path_sends_and_prints_what_argparse_path_does(
        argv: list[str], sent: list[tuple[str, str]], capsys: pytest.CaptureFixture[str]) -> None:
    got, want = both(argv, sent, capsys, fast.run)
    assert got[0] is not None, "declined"
    assert got == want
    assert got[0] == 0 and got[1]


def test_the_socket_option_anywhere(immd: Immd, sent: list[tuple[str, str]],
                                    capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IMM_SOCKET", str(tmp_path / "none.sock"))
    for argv in (["image", "list", "--socket", str(immd.sock)],
                 ["--socket=" + str(immd.sock), "image", "show", "svc1@1.1", "--json"]):
        got, want = both(argv, sent, capsys, fast.run)
        assert got == want and got[0] == 0


@pytest.mark.parametrize("argv", DECLINED, ids=" ".join)
def test_other_lines_are_declined_untouched(argv: list[str], sent: list[tuple[str, str]],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert fast.run(argv) is None
    assert sent == []
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("argv", FAILING, ids=" ".join)
def test_failures_keep_main_s_messages_and_exit_codes(
        argv: list[str], sent: list[tuple[str, str]], capsys: pytest.CaptureFixture[str]) -> None:
    assert fast.run(argv) is None
    capsys.readouterr()
    got, want = both(argv, sent, capsys, fast.main)
    assert got[:3] == want[:3]
    assert got[0] != 0
    assert got[2].startswith("immctl: ") or got[1].startswith('{\n  "error"')


def test_no_daemon_is_main_s_exit_69(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("IMM_SOCKET", str(tmp_path / "none.sock"))
    for argv in (["image", "list"], ["status", "--json"], ["image", "show", "x", "--json"]):
        assert fast.main(argv) == slow.main(argv) == 69
        err = capsys.readouterr().err
        assert err.count("none.sock") == 2, err


def test_json_output_is_json_dumps_of_the_daemon_s_answer(immd: Immd, sent: Any,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    c = Client(str(immd.sock))
    for argv, path, wrap in (
            (["image", "list", "--json"], "/v1/images", True),
            (["image", "show", "svc1@1.1", "--json"], "/v1/images/svc1%401.1", False),
            (["status", "--json"], "/v1/status", False)):
        c._conn = UnixHTTPConnection(str(immd.sock), 30)
        c._conn.request("GET", path, headers={"Accept": "application/json"})
        raw = c._conn.getresponse().read()
        c._conn.close()
        data = json.loads(raw)
        assert fastjson.loads(raw) == data
        if wrap:
            data = {"items": data["images"], "next": data["next"]}
        assert fast.run(argv) == 0
        assert capsys.readouterr().out == json.dumps(data, indent=2, ensure_ascii=False,
                                                     default=str) + "\n"


def test_the_fast_path_imports_none_of_the_heavy_modules(immd: Immd) -> None:
    # -S: without site, so nothing an environment loads at start-up (an editable install's
    # finder imports re and pathlib) hides what immctl itself imports
    code = ("import sys\nsys.path.insert(0, sys.argv[1])\nfrom imm.cli.fast import run\n"
            "rc = run(sys.argv[2:])\nsys.stdout = sys.__stderr__\n"
            "print(rc, *sorted(sys.modules), file=sys.stderr)\n")
    for argv in (["image", "list", "--json"], ["image", "list", "--all"],
                 ["image", "show", "svc1@1.1"], ["status", "--json"]):
        cp = subprocess.run([sys.executable, "-S", "-c", code, str(REPO), *argv],
                            capture_output=True, text=True, check=True,
                            env={"IMM_SOCKET": str(immd.sock), "PATH": "/usr/bin:/bin"})
        rc, *loaded = cp.stderr.split()
        assert rc == "0", cp.stderr
        assert cp.stdout
        assert [m for m in HEAVY if m in loaded] == [], argv


# -- fastjson against json and urllib.parse -----------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=8), kids,
                                                               max_size=5),
    max_leaves=30)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_dumps_is_json_dumps_indent_2(value: Any) -> None:
    assert fastjson.dumps(value) == json.dumps(value, indent=2, ensure_ascii=False, default=str)


@settings(max_examples=200, deadline=None)
@given(json_values, st.sampled_from(["", " ", "\n", " \r\n\t"]))
def test_loads_is_json_loads(value: Any, ws: str) -> None:
    for text in (json.dumps(value), json.dumps(value, ensure_ascii=False, indent=1)):
        raw = (ws + text + ws).encode("utf-8", "surrogatepass")
        # compared through json.dumps: NaN is not equal to itself
        assert json.dumps(fastjson.loads(raw)) == json.dumps(json.loads(raw))


def test_dumps_of_other_values_is_json_s() -> None:
    odd: list[Any] = [{"p": Path("/x")}, {1: [2]}, {(1, 2): 3}, [b"x"], {"t": (1, {"a": ()})},
                      {"a": [float("inf"), -math.inf, math.nan]}, {None: 1, 2.5: {"x": [1]}}]
    for v in odd:
        try:
            want = json.dumps(v, indent=2, ensure_ascii=False, default=str)
        except TypeError as e:
            with pytest.raises(TypeError, match=str(e)):
                fastjson.dumps(v)
        else:
            assert fastjson.dumps(v) == want


@pytest.mark.parametrize("raw", [b"", b"{", b'{"a": 1} x', b"\xef\xbb\xbf{}", b'"\xff"',
                                 b"[1, 2", b"nul", "{}".encode("utf-16"), b"[1e5, -0, 1E-2]"])
def test_loads_of_bad_or_odd_input_is_json_s(raw: bytes) -> None:
    try:
        want = json.loads(raw)
    except ValueError as e:
        with pytest.raises(type(e)) as got:
            fastjson.loads(raw)
        assert str(got.value) == str(e)
    else:
        assert fastjson.loads(raw) == want


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=6), st.text() | st.integers(), max_size=4))
def test_urlencode_is_urllib_s(query: dict[str, Any]) -> None:
    try:
        want = urllib.parse.urlencode(query)
    except UnicodeEncodeError:
        with pytest.raises(UnicodeEncodeError):
            fastjson.urlencode(query)
    else:
        assert fastjson.urlencode(query) == want


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_quote_is_urllib_s(value: str) -> None:
    try:
        want = urllib.parse.quote(value, safe="")
    except UnicodeEncodeError:
        with pytest.raises(UnicodeEncodeError):
            fastjson.quote(value)
    else:
        assert fastjson.quote(value) == want
