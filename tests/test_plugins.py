"""The plugin system, proven with a plugin installed the way any third-party one is: a
distribution on the path whose entry point is in the ``imm`` group."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from imm.plugins import hookspecs

from backends import LoadClient, free_port
from harness import IMMCTL, Immd
from test_e2e_rollout import BASE, images, instances, register, service  # noqa: F401

REPO = Path(__file__).resolve().parent.parent

PLUGIN = '''
"""A third-party imm plugin used by the tests."""
import json, os
from imm.plugins.hookspecs import hookimpl

LOG = os.environ["TESTPLUG_LOG"]

def _log(kind, data):
    with open(LOG, "a") as f:
        f.write(json.dumps({"hook": kind, **data}) + "\\n")

@hookimpl
def imm_policy_check(image, service, rollout):
    _log("policy", {"image": image["digest"], "service": service["name"]})
    if image["manifest"]["labels"].get("blocked") == "yes":
        return "testplug refuses images labelled blocked=yes"
    return None

@hookimpl
async def imm_health_gate(rollout, step, instances):
    _log("gate", {"step": step["name"], "instances": len(instances)})
    flag = os.environ["TESTPLUG_FAIL_GATE"]
    if os.path.exists(flag):
        at = open(flag).read().strip()
        if at in ("", "x", step["name"]):
            return "testplug canary analysis: error rate too high"
    return True

@hookimpl
def imm_rollout_event(event):
    _log("event", {"action": event["action"], "step": event["step"]})
'''


def install_plugin(root: Path, name: str, source: str) -> Path:
    """A distribution on PYTHONPATH with an entry point in the 'imm' group."""
    site = root / f"site-{name}"
    (site / f"{name}-0.1.dist-info").mkdir(parents=True)
    (site / f"{name}-0.1.dist-info" / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (site / f"{name}-0.1.dist-info" / "entry_points.txt").write_text(
        f"[imm]\n{name} = {name}_mod\n")
    (site / f"{name}_mod.py").write_text(textwrap.dedent(source))
    return site


def test_hooks_are_called_and_status_lists_plugins(tmp_path: Path, images: Path  # noqa: F811
                                                   ) -> None:
    site = install_plugin(tmp_path, "testplug", PLUGIN)
    log = tmp_path / "hooks.jsonl"
    flag = tmp_path / "fail-gate"
    port = free_port()
    d = Immd(tmp_path, BASE + service("web", port, strategy="canary", canary_steps=[50]))
    d.start(extra_env={"PYTHONPATH": str(site), "TESTPLUG_LOG": str(log),
                       "TESTPLUG_FAIL_GATE": str(flag)})
    status = d.json("status")
    names = {p["name"]: p for p in status["plugins"]}
    assert "testplug" in names and "local" in names and "haproxy" in names
    assert set(names["testplug"]["hooks"]) == {"imm_policy_check", "imm_health_gate",
                                               "imm_rollout_event"}
    assert "testplug 0.1" in (names["testplug"]["distribution"] or "")
    assert "testplug" in d.run("status").stdout
    register(d, images, "v1", "v2")
    d.run("rollout", "start", "web", "--image", "web@v1", "--wait")
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert {"hook": "policy", "image": d.json("image", "show", "web@v1")["digest"],
            "service": "web"} in events
    assert any(e["hook"] == "gate" and e["instances"] == 2 for e in events)
    assert any(e["hook"] == "event" and e["action"] == "complete" for e in events)
    # a failing canary analysis gate rolls the rollout back, with no failed request
    flag.write_text("x")
    with LoadClient(f"http://127.0.0.1:{port}/", concurrency=8, pause_s=0.002) as load:
        cp = d.run("rollout", "start", "web", "--image", "web@v2", "--wait", check=False)
        stats = load.stop()
    assert cp.returncode == 1 and "error rate too high" in cp.stderr
    assert stats.failed == 0, stats
    flag.unlink()
    # a policy plugin refuses by its own rule, and nothing is launched
    disk = tmp_path / "img"
    disk.mkdir()
    (disk / "imm-image.json").write_text(json.dumps({"command": ["python3", "-c", "pass"]}))
    d.run("image", "add", str(disk), "--name", "web", "--version", "blk", "--label", "blocked=yes")
    before = instances(d, "web")
    cp = d.fails("rollout", "start", "web", "--image", "web@blk", code=6)
    assert "rule 'plugin'" in cp.stderr and "blocked=yes" in cp.stderr
    assert instances(d, "web") == before


def test_rolling_rollback_after_a_retired_batch_relaunches_the_previous_image(
        tmp_path: Path, images: Path) -> None:  # noqa: F811
    """The gate fails at the second batch, after one old instance was already retired: the
    rollback brings the old image back to full strength before the new instances go."""
    site = install_plugin(tmp_path, "testplug", PLUGIN)
    flag = tmp_path / "fail-gate"
    port = free_port()
    d = Immd(tmp_path, BASE + service("web", port, count=2, strategy="rolling", batch="1"))
    d.start(extra_env={"PYTHONPATH": str(site), "TESTPLUG_LOG": str(tmp_path / "log"),
                       "TESTPLUG_FAIL_GATE": str(flag)})
    register(d, images, "v1", "v2")
    first = d.json("rollout", "start", "web", "--image", "web@v1", "--wait")
    flag.write_text("5-attach")
    with LoadClient(f"http://127.0.0.1:{port}/", concurrency=8, pause_s=0.002) as load:
        cp = d.run("rollout", "start", "web", "--image", "web@v2", "--wait", check=False)
        stats = load.stop()
    assert cp.returncode == 1 and "5-attach" in cp.stderr, cp.stderr
    assert stats.failed == 0, stats
    live = instances(d, "web")
    v1 = d.json("image", "show", "web@v1")["digest"]
    assert len(live) == 2 and {i["tags"]["imm:digest"] for i in live} == {v1}, live
    assert first["id"] in {i["tags"]["imm:rollout"] for i in live}
    with LoadClient(f"http://127.0.0.1:{port}/", concurrency=4) as load:
        import time
        time.sleep(1)
        after = load.stop()
    assert after.failed == 0 and {json.loads(k)["version"] for k in after.by_backend} == {"v1"}


def test_blocked_plugin_is_not_loaded(tmp_path: Path) -> None:
    site = install_plugin(tmp_path, "testplug", PLUGIN)
    d = Immd(tmp_path, BASE)
    d.start(extra_env={"PYTHONPATH": str(site), "TESTPLUG_LOG": str(tmp_path / "l"),
                       "TESTPLUG_FAIL_GATE": str(tmp_path / "f"),
                       "IMM_BLOCK_PLUGINS": "testplug"})
    assert "testplug" not in {p["name"] for p in d.json("status")["plugins"]}
    d.stop()
    (tmp_path / "immd.toml").write_text(BASE + '[plugins]\nblock = ["testplug"]\n')
    d.start(extra_env={"PYTHONPATH": str(site)})
    assert "testplug" not in {p["name"] for p in d.json("status")["plugins"]}


@pytest.mark.parametrize("source,needle", [
    ("from imm.plugins.hookspecs import hookimpl\n@hookimpl\ndef imm_helth_gate(rollout):\n"
     "    return None\n", "imm_helth_gate"),
    ("from imm.plugins.hookspecs import hookimpl\n@hookimpl\n"
     "def imm_policy_check(image, servise, rollout):\n    return None\n", "servise"),
    ("raise ImportError('boom: missing dependency')\n", "boom"),
])
def test_bad_plugin_fails_startup_naming_it(tmp_path: Path, source: str, needle: str) -> None:
    site = install_plugin(tmp_path, "badplug", source)
    d = Immd(tmp_path, BASE)
    with pytest.raises(RuntimeError):
        d.start(extra_env={"PYTHONPATH": str(site)})
    log = d.log.read_text()
    assert "badplug" in log and needle in log, log
    assert "Traceback" not in log


SIGNER_PLUGIN = """
from pathlib import Path
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from imm.plugins.hookspecs import hookimpl

class PemElsewhere:
    # a third party's key store: a PEM key kept outside the state dir (stands for a KMS)
    kind = "pem-elsewhere"

    def __init__(self, config, directory):
        self.description = "pem-elsewhere " + config["path"]
        self.key = serialization.load_pem_private_key(Path(config["path"]).read_bytes(), None)
        self.next = None

    def load_or_create(self):
        return self.key, False

    def stage(self):
        self.next = Ed25519PrivateKey.generate()
        return self.next

    def staged(self):
        return self.next

    def commit(self, new):
        self.key, self.next = new, None

    def abort(self):
        self.next = None

    def close(self):
        pass

@hookimpl
def imm_register_signers(registry):
    registry.add(PemElsewhere)
"""


def test_a_third_party_signer_signs_the_catalog(tmp_path: Path, images: Path  # noqa: F811
                                                ) -> None:
    import hashlib

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = tmp_path / "outside.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    site = install_plugin(tmp_path, "signplug", SIGNER_PLUGIN)
    (tmp_path / "d").mkdir()
    d = Immd(tmp_path / "d", f'[signer]\nkind = "pem-elsewhere"\npath = "{pem}"\n')
    d.start(extra_env={"PYTHONPATH": str(site)})
    try:
        assert d.json("status")["keyid"] == hashlib.sha256(raw).hexdigest()
        assert d.run("ledger", "verify").returncode == 0
        rot = d.json("keys", "rotate")
        assert rot["previous"] == hashlib.sha256(raw).hexdigest()
        assert d.json("status")["keyid"] == rot["keyid"]
        assert d.run("ledger", "verify").returncode == 0
    finally:
        d.stop()
    assert not (d.state / "keys" / "signing.pem").exists()
    # an unknown kind names it and the known ones (exit 2)
    d2 = Immd(tmp_path / "d", '[signer]\nkind = "kms"\n')
    with pytest.raises(RuntimeError, match="exited with 2"):
        d2.start()
    assert "no signer of kind 'kms'" in d2.log.read_text()


def test_every_hook_is_documented_and_tested() -> None:
    tests = "\n".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    hooks = [n for n, f in inspect.getmembers(hookspecs, inspect.isfunction)
             if n.startswith("imm_")]
    assert len(hooks) >= 6
    for name in hooks:
        fn = getattr(hookspecs, name)
        doc = inspect.getdoc(fn) or ""
        for param in inspect.signature(fn).parameters:
            assert f":param {param}:" in doc, f"{name} does not document {param}"
        assert re.search(rf"\b{name}\b", tests.replace("test_every_hook", "")), \
            f"no test calls {name}"


def test_every_immctl_command_has_help() -> None:
    from imm.cli.main import build_parser

    parser = build_parser()
    seen = 0

    def walk(p: object, path: list[str]) -> None:
        nonlocal seen
        for action in getattr(p, "_actions", []):
            choices = getattr(action, "choices", None)
            if isinstance(choices, dict):
                helps = {a.dest: a.help for a in getattr(action, "_choices_actions", [])}
                for name, sub in choices.items():
                    assert helps.get(name), f"immctl {' '.join(path + [name])} has no help"
                    seen += 1
                    walk(sub, path + [name])

    walk(parser, [])
    assert seen > 30
    out = subprocess.run([IMMCTL, "--help"], capture_output=True, text=True, check=True).stdout
    for group in ("image", "channel", "ledger", "keys", "rollout", "service", "instance"):
        assert group in out



def test_docs_give_every_hook_with_its_exact_signature() -> None:
    docs = (REPO / "docs" / "plugins.md").read_text()
    sys.path.insert(0, str(REPO / "scripts"))
    from plugin_docs import render

    assert docs == render(), "docs/plugins.md is stale: run scripts/plugin_docs.py"
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction):
        if name.startswith("imm_"):
            sig = str(inspect.signature(fn)).replace("'", "")
            assert f"### `{name}{sig}`" in docs, f"docs/plugins.md lacks {name}{sig}"
            assert (inspect.getdoc(fn) or "").split("\n")[0] in docs


def test_docs_name_every_builtin_and_every_base_class_method() -> None:
    from imm.plugins import base

    docs = (REPO / "docs" / "plugins.md").read_text()
    assert "- providers: `local`, `aws`, `azure`, `openstack` and `gcp`" in docs
    assert "- routers: `haproxy`, `dns` and `cloudlb`" in docs
    for cls in (base.Provider, base.Router):
        for name, member in vars(cls).items():
            if name.startswith("_") and name != "__init__":
                continue
            if inspect.isfunction(member) or isinstance(member, property):
                assert inspect.getdoc(member), f"{cls.__name__}.{name} has no docstring"
                assert f"#### `{cls.__name__}.{name}" in docs, f"{cls.__name__}.{name}"


def test_analysis_kinds_and_notifiers_register_like_any_plugin() -> None:
    from imm.plugins.analysis import AnalysisKind, AnalysisTarget, Measured
    from imm.plugins.hookspecs import hookimpl
    from imm.plugins.manager import Plugins
    from imm.plugins.notify_base import Notifier

    class Constant(AnalysisKind):
        kind = "constant"

        def measure(self, target: AnalysisTarget) -> Measured:
            return Measured({"result": 1.0}, "1")

    class Console(Notifier):
        kind = "console"

    class Plug:
        @hookimpl
        def imm_register_analysis_kinds(self, registry: Any) -> None:
            registry.add(Constant)

        @hookimpl
        def imm_register_notifiers(self, registry: Any) -> None:
            registry.add(Console)

    p = Plugins(extra=[Plug()])
    assert p.analysis.kinds() == ["compare", "constant", "http", "prometheus"]
    assert p.notifiers.kinds() == ["console", "webhook"]
