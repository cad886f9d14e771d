"""The README's quickstart, run as written against a fresh immd.

The commands are read from README.md when the test runs (never copied here): the immd command
line after "Start the daemon", then every command of the block after "In another terminal:".
Each command's outcome is checked against what its comment in the README promises. A command
the README adds, drops or changes without this file knowing fails the test, and so does a
promise the program no longer keeps. Two things are moved so the test can run beside others:
the haproxy port (8080 -> a free one) and the image directory (/tmp/imm-images -> a temp dir).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from backends import free_port
from harness import BIN, IMMD, REPO, have, processes_under, reap_under, wait_for_socket

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not have("haproxy"), reason="haproxy is not installed")]

PROGRESS = re.compile(r"^\[\s*\d+s\] (\S+)\s+step (\d+)/(\d+) .* new (\d+) launched, (\d+) "
                      r"healthy, traffic to new (\S+)$")


@dataclass
class Command:
    text: str  # as written, continuation lines joined with their newlines
    comment: str  # every comment on its lines, joined


def code_block_after(readme: str, marker: str) -> list[str]:
    """The indented code block that follows the paragraph holding ``marker``."""
    lines = readme.splitlines()
    at = next(i for i, line in enumerate(lines) if marker in line)
    block: list[str] = []
    for line in lines[at + 1:]:
        if line.startswith("    "):
            block.append(line[4:])
        elif block and not line.strip():
            break
        elif block:
            break
    assert block, f"no code block after {marker!r} in README.md"
    return block


def split_comment(line: str) -> tuple[str, str]:
    m = re.match(r"^(.*?)(?:\s+#\s?(.*))?$", line)
    assert m
    return m.group(1).rstrip(), (m.group(2) or "").strip()


def commands(block: list[str]) -> list[Command]:
    """Shell commands: a line, a line continued with a backslash, or a for ... done loop.
    A comment-only line adds to the comment of the command before it."""
    out: list[Command] = []
    pending: list[str] = []
    comments: list[str] = []
    depth = 0
    for raw in block:
        code, comment = split_comment(raw)
        if not code.strip():
            if out and comment:
                out[-1].comment += " " + comment
            continue
        pending.append(code)
        if comment:
            comments.append(comment)
        word = code.strip().split()[0]
        depth += word in ("for", "while", "if")
        depth -= word in ("done", "fi")
        if code.endswith("\\") or depth > 0:
            continue
        out.append(Command("\n".join(pending), " ".join(comments)))
        pending, comments = [], []
    assert not pending, f"unfinished command in README.md: {pending}"
    return out


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    reap_under(tmp_path)


def progress_lines(stderr: str) -> list[tuple[str, ...]]:
    return [m.groups() for m in map(PROGRESS.match, stderr.splitlines()) if m]


def test_the_quickstart_as_written(sandbox: Path) -> None:
    readme = (REPO / "README.md").read_text()
    (start,) = code_block_after(readme, "Start the daemon with the quickstart config")
    assert start.startswith("./scripts/run "), start
    immd_args = start.split()[1:]
    config = immd_args[immd_args.index("--config") + 1]
    port = free_port()
    quickstart = (REPO / config).read_text()
    assert "127.0.0.1:8080" in quickstart
    (sandbox / "quickstart.toml").write_text(quickstart.replace("127.0.0.1:8080",
                                                                f"127.0.0.1:{port}"))
    immd_args[immd_args.index("--config") + 1] = str(sandbox / "quickstart.toml")
    sock = sandbox / "run" / "immd.sock"
    log = open(sandbox / "immd.log", "wb")  # noqa: SIM115 - closed at the end
    immd = subprocess.Popen([IMMD, *immd_args, "--state-dir", str(sandbox / "state"),
                             "--socket", str(sock)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_socket(sock, immd)
        run_quickstart(readme, sandbox, port, sock)
        # "Then stop immd with Ctrl-C ... nothing the quickstart started is left running"
        immd.send_signal(signal.SIGINT)
        assert immd.wait(60) == 0
        deadline = time.monotonic() + 10
        while processes_under(sandbox) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = processes_under(sandbox)
        assert not left, [Path(f"/proc/{p}/cmdline").read_bytes() for p in left]
        assert subprocess.run(["curl", "-s", f"127.0.0.1:{port}/"]).returncode != 0
    finally:
        if immd.poll() is None:
            immd.kill()
            immd.wait()
        log.close()
    text = (sandbox / "immd.log").read_text()
    assert "Traceback" not in text, text
    # immd says at INFO when a rollout starts and completes
    assert re.search(r"INFO imm\.rollout: rollout web-\S+ of web started", text), text
    assert re.search(r"INFO imm\.rollout: rollout web-\S+ of web completed", text), text


def run_quickstart(readme: str, sandbox: Path, port: int, sock: Path) -> None:
    images = sandbox / "imm-images"
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "IMM_SOCKET": str(sock)}
    block = code_block_after(readme, "In another terminal:")
    seen: set[str] = set()
    for cmd in commands(block):
        shell = cmd.text.replace("/tmp/imm-images", str(images)).replace(
            "127.0.0.1:8080", f"127.0.0.1:{port}")
        done = subprocess.run(["bash", "-c", shell], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=240)
        check = EXPECT.get(cmd.text)
        assert check is not None, (
            f"README.md's quickstart runs {cmd.text!r}, which tests/test_readme.py does not "
            "know: add what its comment promises to EXPECT")
        check(done, cmd.comment)
        assert "Traceback" not in done.stderr, done.stderr
        seen.add(cmd.text)
    missing = set(EXPECT) - seen
    assert not missing, f"README.md's quickstart no longer runs {sorted(missing)}"


# -- what each command's comment promises ------------------------------------------------------

Check = Callable[[subprocess.CompletedProcess[str], str], None]


def ok(done: subprocess.CompletedProcess[str], comment: str = "") -> None:
    assert done.returncode == 0, done.stdout + done.stderr


def version_served(done: subprocess.CompletedProcess[str], comment: str) -> None:
    ok(done)
    promised = json.loads(comment.replace(", ...}", "}"))  # {"version": "v1", ...}
    assert json.loads(done.stdout)["version"] == promised["version"], (done.stdout, comment)


def last_progress(done: subprocess.CompletedProcess[str]) -> tuple[str, ...]:
    lines = progress_lines(done.stderr)
    assert lines, done.stderr
    return lines[-1]


def deployed(instances: int) -> Check:
    def check(done: subprocess.CompletedProcess[str], comment: str) -> None:
        ok(done)
        state, step, steps, launched, healthy, traffic = last_progress(done)
        assert (state, step) == ("completed", steps), done.stderr
        assert (launched, healthy, traffic) == (str(instances), str(instances), "100%"), \
            done.stderr
        assert re.search(r"rollout web-\S+ completed: web runs web@v\d", done.stdout)
    return check


def first_deploy(done: subprocess.CompletedProcess[str], comment: str) -> None:
    n = int(re.search(r"(\d+) instances", comment).group(1))  # "first deploy: 3 instances"
    deployed(n)(done, comment)


def rolled_back(done: subprocess.CompletedProcess[str], comment: str) -> None:
    assert "rolled back by itself" in comment
    assert done.returncode == 1, done.stdout + done.stderr
    state, _, _, launched, healthy, traffic = last_progress(done)
    assert (state, launched, healthy, traffic) == ("rolled-back", "3", "0", "0%"), done.stderr
    assert "did not pass the health check" in done.stderr


def names_first(done: subprocess.CompletedProcess[str], comment: str) -> None:
    ok(done)
    rows = done.stdout.splitlines()
    header = rows[0].split()
    assert header[:7] == ["ID", "SERVICE", "STRATEGY", "STATE", "IMAGE", "DIGEST", "STARTED"]
    states = {(r.split()[3], r.split()[4]) for r in rows[1:]}
    assert ("rolled-back", "web@v3") in states and ("completed", "web@v2") in states, rows
    assert all(r.split()[5].startswith("sha256:") for r in rows[1:])


def status_by_service(done: subprocess.CompletedProcess[str], comment: str) -> None:
    ok(done)
    assert re.search(r"^state\s+completed$", done.stdout, re.M), done.stdout
    assert re.search(r"^image\s+web@v2 \(sha256:", done.stdout, re.M), done.stdout
    assert re.search(r"^previous\s+web@v1 \(sha256:", done.stdout, re.M), done.stdout
    assert "new 3 launched, 3 healthy, traffic to new 100%" in done.stdout


def verified(done: subprocess.CompletedProcess[str], comment: str) -> None:
    ok(done)
    assert done.stdout.count("ok: ") == 2, done.stdout


def audited(done: subprocess.CompletedProcess[str], comment: str) -> None:
    ok(done)
    n = re.search(r"(\d+) instances", comment).group(1)
    assert re.search(rf"^instances\s+{n}$", done.stdout, re.M), done.stdout
    assert "open findings: none" in comment and "open findings: none" in done.stdout
    assert done.stderr.strip().splitlines()[-1].startswith("sweep "), done.stderr
    assert f": {n} instance(s)" in done.stderr.strip().splitlines()[-1], done.stderr


def service_down(done: subprocess.CompletedProcess[str], comment: str) -> None:
    ok(done)
    n = re.search(r"terminates all (\d+)", comment).group(1)
    assert f"drained and terminated {n} instance(s)" in done.stdout, done.stdout
    assert "recorded at ledger leaf" in done.stdout


EXPECT: dict[str, Check] = {
    "export PATH=$PWD/.venv/bin:$PATH": ok,
    "python3 examples/bake.py /tmp/imm-images --all": ok,
    "for v in v1 v2 v3; do\n"
    "  immctl image add /tmp/imm-images/$v --name web --version $v \\\n"
    "    --layer os=debian@12 --layer runtime=python@3.11 --layer app=web@$v\n"
    "  immctl channel set web/production web@$v\n"
    "done": ok,
    "immctl channel set web/production web@v2": ok,
    "immctl rollout start web --image web@v1 --wait": first_deploy,
    "curl -s 127.0.0.1:8080/": version_served,
    "immctl rollout start web --image web@v2 --wait": deployed(3),
    "immctl rollout start web --image web@v3 --wait": rolled_back,
    "immctl rollout list": names_first,
    "immctl rollout start web --image web@v1 --strategy canary --wait": deployed(3),
    "immctl rollout undo web --wait": deployed(3),
    "immctl rollout status web": status_by_service,
    "immctl image verify --all && immctl ledger verify": verified,
    "immctl audit run --wait": audited,
    "immctl service down web": service_down,
}
