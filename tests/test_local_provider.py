"""The local provider against real processes and real HTTP: images baked by examples/bake.py."""

from __future__ import annotations

import ctypes
import gc
import http.client
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pluggy
import pytest

from imm.catalog.digest import diff_manifests, tree_digest, tree_manifest
from imm.errors import BadRequest, ConfigError, NotFound, ProviderError
from imm.plugins import hookspecs
from imm.plugins.base import (
    TAG_DIGEST,
    TAG_ROLLOUT,
    TAG_SERVICE,
    TAG_SLOT,
    Feature,
    LaunchRequest,
    PluginContext,
)
from imm.plugins.providers import local as local_module
from imm.plugins.providers.local import LocalProvider
from imm.plugins.registry import ProviderRegistry

REPO = Path(__file__).resolve().parents[1]
BAKE = REPO / "examples" / "bake.py"

pytestmark = pytest.mark.timeout(60)


# -- helpers -----------------------------------------------------------------------------------


def make_provider(state_dir: Path, **settings: Any) -> LocalProvider:
    return LocalProvider("local", settings, PluginContext(state_dir, logging.getLogger("test")))


def request(image_id: str, count: int = 1, token: str = "tok-1", *, service: str = "web",
            slot: str = "blue", rollout: str = "r-1", region: str = "local") -> LaunchRequest:
    tags = {TAG_SERVICE: service, TAG_ROLLOUT: rollout, TAG_SLOT: slot,
            TAG_DIGEST: "sha256:" + "0" * 64}
    return LaunchRequest(region=region, image_id=image_id, count=count, tags=tags,
                         client_token=token)


def http_get(address: str, path: str = "/", wait: float = 10.0) -> tuple[int, bytes]:
    """GET, retrying while the instance is still starting to listen."""
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + wait
    while True:
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        finally:
            conn.close()


def pid_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_running(pid):
            return True
        time.sleep(0.02)
    return False


def refused(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        http.client.HTTPConnection(host, int(port), timeout=2).connect()
    except ConnectionRefusedError:
        return True
    return False


def kill_leftovers(root: Path) -> None:
    """Last resort after a test: SIGKILL every instance process still recorded under root."""
    for meta_path in (root / "instances").glob("*/meta.json"):
        try:
            meta = json.loads(meta_path.read_text())
            env = Path(f"/proc/{meta['pid']}/environ").read_bytes()
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if f"IMM_INSTANCE_ID={meta['id']}".encode() in env.split(b"\0"):
            try:
                os.killpg(meta["pid"], signal.SIGKILL)
            except OSError:
                pass


def write_image(path: Path, spec: Any, files: dict[str, str] | None = None) -> Path:
    path.mkdir(parents=True)
    if spec is not None:
        (path / "imm-image.json").write_text(json.dumps(spec))
    for name, text in (files or {}).items():
        (path / name).write_text(text)
    return path


def digest_of_tree(path: Path) -> str:
    return tree_digest(tree_manifest(path))


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def baked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("images")
    subprocess.run([sys.executable, str(BAKE), str(out), "--all"], check=True,
                   capture_output=True)
    return out


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "state"
    yield state
    root = state / "local"
    if (root / "instances").is_dir():
        provider = make_provider(state, stop_timeout_s=2)
        ids = [i.id for i in provider.list_instances()]
        try:
            provider.terminate(ids)
        finally:
            kill_leftovers(root)


@pytest.fixture
def provider(state_dir: Path) -> LocalProvider:
    return make_provider(state_dir)


def store(provider: LocalProvider, baked: Path, version: str) -> str:
    src = baked / version
    return provider.store_image(src, digest_of_tree(src))


# -- images ------------------------------------------------------------------------------------


def test_bake_is_deterministic(baked: Path, tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(BAKE), str(tmp_path), "--version", "v1"], check=True,
                   capture_output=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v1"]
    assert digest_of_tree(tmp_path / "v1") == digest_of_tree(baked / "v1")
    digests = {digest_of_tree(baked / v) for v in ("v1", "v2", "v3")}
    assert len(digests) == 3
    assert (baked / "v3" / "BROKEN").exists() and not (baked / "v1" / "BROKEN").exists()


def test_store_image_is_idempotent_and_read_only(provider: LocalProvider, baked: Path) -> None:
    digest = digest_of_tree(baked / "v1")
    image_id = provider.store_image(baked / "v1", digest)
    assert image_id == "img-" + digest.removeprefix("sha256:")[:16]
    assert provider.store_image(baked / "v1", digest) == image_id
    stored = provider.root / "images" / image_id
    assert [p.name for p in (provider.root / "images").iterdir() if p.is_dir()] == [image_id]
    assert all(not (p.stat().st_mode & 0o222) for p in [stored, *stored.iterdir()])
    assert digest_of_tree(stored) == digest

    info = provider.describe_image("local", image_id)
    assert info is not None and info.image_id == image_id and info.region == "local"
    assert info.extra["content_digest"] == digest
    assert info.extra["command"] == ["python3", "app.py"]
    assert info.extra["health_path"] == "/healthz"
    assert provider.describe_image("local", "img-0000000000000000") is None
    assert provider.describe_image("local", "../../etc") is None
    assert provider.image_manifest(image_id) == tree_manifest(baked / "v1")
    assert provider.features == {Feature.REHASH, Feature.CLIENT_TOKEN, Feature.STORE_IMAGE,
                                 Feature.IMAGE_MANIFEST}


def test_store_image_bad_inputs_leave_nothing(provider: LocalProvider, tmp_path: Path,
                                              baked: Path) -> None:
    images = provider.root / "images"
    cases: list[tuple[Path, str, str]] = []

    no_spec = write_image(tmp_path / "no-spec", None, {"app.py": "print()"})
    cases.append((no_spec, digest_of_tree(no_spec), "imm-image.json does not exist"))
    bad_cmd = write_image(tmp_path / "bad-cmd", {"command": "python3 app.py"})
    cases.append((bad_cmd, digest_of_tree(bad_cmd), "'command' is 'python3 app.py'"))
    typo = write_image(tmp_path / "typo", {"command": ["x"], "volume": ["data"]})
    cases.append((typo, digest_of_tree(typo), "unknown key(s) volume"))
    bad_vol = write_image(tmp_path / "bad-vol", {"command": ["x"], "volumes": ["../etc"]})
    cases.append((bad_vol, digest_of_tree(bad_vol), "'volumes'"))
    not_json = write_image(tmp_path / "not-json", None, {"imm-image.json": "{nope"})
    cases.append((not_json, digest_of_tree(not_json), "cannot read"))
    cases.append((tmp_path / "missing", "sha256:" + "1" * 64, "does not exist"))
    cases.append((baked / "v1" / "app.py", "sha256:" + "1" * 64, "is not a directory"))
    cases.append((baked / "v1", digest_of_tree(baked / "v2"), "has content digest"))
    cases.append((baked / "v1", "md5:abc", "is not 'sha256:'"))
    for src, digest, needle in cases:
        with pytest.raises(BadRequest) as err:
            provider.store_image(src, digest)
        assert needle in err.value.message, (src, err.value.message)
        assert "local provider 'local' (store_image)" in err.value.message
        if src.name != "app.py" and "sha256:" in digest:
            assert str(src) in err.value.message or "imm-image.json" in err.value.message
    assert list(images.iterdir()) == []


# -- launch, list, terminate -------------------------------------------------------------------


def test_launch_two_instances_answer_http(provider: LocalProvider, baked: Path) -> None:
    image_id = store(provider, baked, "v1")
    instances = provider.launch(request(image_id, count=2))
    assert len(instances) == 2
    assert len({i.address for i in instances}) == 2
    for inst in instances:
        assert inst.state == "running" and inst.region == "local" and inst.provider == "local"
        assert inst.image_id == image_id and inst.tags[TAG_SERVICE] == "web"
        assert inst.address is not None and inst.address.startswith("127.0.0.1:")
        status, body = http_get(inst.address)
        assert status == 200
        assert json.loads(body) == {"version": "v1", "instance": inst.id}
        assert http_get(inst.address, "/healthz") == (200, b"ok\n")
        assert inst.extra["health_url"] == f"http://{inst.address}/healthz"
        root = provider.root / "instances" / inst.id / "root"
        assert (root / "app.py").exists() and not (root.stat().st_mode & 0o222)
        meta = json.loads((provider.root / "instances" / inst.id / "meta.json").read_text())
        assert meta["pid"] == inst.extra["pid"] and meta["pid_start"] > 0
        assert meta["client_token"] == "tok-1" and meta["region"] == "local"

    # HTTP/1.1 keep-alive: two requests on one connection.
    address = instances[0].address
    assert address is not None
    host, port = address.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    for _ in range(2):
        conn.request("GET", "/")
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read())["version"] == "v1"
    conn.close()


def test_launch_is_idempotent_by_client_token(provider: LocalProvider, baked: Path) -> None:
    image_id = store(provider, baked, "v1")
    first = provider.launch(request(image_id, count=1, token="batch-1"))
    # A retry after a crash that launched only part of the batch launches just what is missing.
    second = provider.launch(request(image_id, count=2, token="batch-1"))
    assert [i.id for i in second][:1] == [first[0].id] and len(second) == 2
    third = provider.launch(request(image_id, count=2, token="batch-1"))
    assert sorted(i.id for i in third) == sorted(i.id for i in second)
    assert len(list((provider.root / "instances").iterdir())) == 2
    other = provider.launch(request(image_id, count=1, token="batch-2"))
    assert other[0].id not in {i.id for i in second}
    assert len(list(provider.list_instances())) == 3


def test_concurrent_launches_with_one_token_do_not_double_up(state_dir: Path,
                                                             baked: Path) -> None:
    providers = [make_provider(state_dir) for _ in range(3)]
    image_id = store(providers[0], baked, "v1")
    results: list[set[str]] = []
    errors: list[BaseException] = []

    def run(p: LocalProvider) -> None:
        try:
            results.append({i.id for i in p.launch(request(image_id, 2, token="same"))})
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(p,)) for p in providers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 3 and results[0] == results[1] == results[2]
    assert len(list(providers[0].list_instances())) == 2


def test_restart_finds_instances_by_tags(state_dir: Path, baked: Path) -> None:
    provider = make_provider(state_dir)
    image_id = store(provider, baked, "v1")
    blue = provider.launch(request(image_id, 2, token="t-blue", slot="blue"))
    green = provider.launch(request(image_id, 1, token="t-green", slot="green", rollout="r-2"))
    provider.close()
    del provider
    gc.collect()

    again = make_provider(state_dir)  # immd restarted: a fresh object finds them on disk
    found = {i.id: i for i in again.list_instances()}
    assert set(found) == {i.id for i in blue + green}
    assert all(i.state == "running" for i in found.values())
    assert {i.id for i in again.list_instances({TAG_SLOT: "blue"})} == {i.id for i in blue}
    assert [i.id for i in again.list_instances({TAG_SLOT: "green", TAG_ROLLOUT: "r-2"})] == [
        green[0].id]
    assert list(again.list_instances({TAG_SLOT: "green", TAG_ROLLOUT: "r-1"})) == []
    assert list(again.list_instances({TAG_SERVICE: "other"})) == []
    for inst in found.values():
        assert inst.address is not None
        assert json.loads(http_get(inst.address)[1])["instance"] == inst.id
    # The same client token on the new object returns the same instances.
    assert {i.id for i in again.launch(request(image_id, 2, token="t-blue"))} == {
        i.id for i in blue}


def test_terminate_stops_processes_keeps_logs_and_data(provider: LocalProvider, baked: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    image_id = store(provider, baked, "v1")
    instances = provider.launch(request(image_id, 2))
    for inst in instances:
        assert inst.address is not None
        http_get(inst.address)
    with caplog.at_level(logging.WARNING):
        provider.terminate([instances[0].id, instances[1].id, "i-00000000deadbeef",
                            "nonsense"])
    assert "ignored SIGTERM" not in caplog.text  # the app stops on SIGTERM: no SIGKILL
    for inst in instances:
        assert inst.address is not None
        assert wait_gone(inst.extra["pid"])
        assert refused(inst.address)
        assert not (provider.root / "instances" / inst.id).exists()
        log = (provider.root / "logs" / f"{inst.id}.log").read_text()
        assert f"app v1 instance={inst.id} stopped" in log  # clean SIGTERM shutdown
        assert f"terminated {inst.id}" in log
    starts = (provider.root / "data" / "web" / "data" / "starts.log").read_text()
    assert all(inst.id in starts for inst in instances)
    assert list(provider.list_instances()) == []
    provider.terminate([i.id for i in instances])  # idempotent
    assert [p.name for p in (provider.root / "instances").iterdir()] == []


def test_terminate_kills_what_ignores_sigterm(state_dir: Path, tmp_path: Path) -> None:
    provider = make_provider(state_dir, stop_timeout_s=0.5)
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('stubborn', flush=True); time.sleep(600)")
    src = write_image(tmp_path / "stubborn", {"command": ["python3", "-c", code]})
    image_id = provider.store_image(src, digest_of_tree(src))
    inst = provider.launch(request(image_id))[0]
    log = provider.root / "logs" / f"{inst.id}.log"
    deadline = time.monotonic() + 10
    while "stubborn" not in log.read_text().splitlines():  # SIGTERM is ignored from now on
        assert time.monotonic() < deadline
        time.sleep(0.02)
    t0 = time.monotonic()
    provider.terminate([inst.id])
    assert time.monotonic() - t0 > 0.4  # SIGTERM was given its time before SIGKILL
    assert wait_gone(inst.extra["pid"], 1)
    assert list(provider.list_instances()) == []


def test_data_volume_outlives_instances(provider: LocalProvider, baked: Path) -> None:
    v1 = store(provider, baked, "v1")
    v2 = store(provider, baked, "v2")
    old = provider.launch(request(v1, token="a"))[0]
    assert old.address is not None
    http_get(old.address)
    provider.terminate([old.id])
    new = provider.launch(request(v2, token="b", slot="green"))[0]
    assert new.address is not None
    assert json.loads(http_get(new.address)[1])["version"] == "v2"
    data = provider.root / "data" / "web" / "data"
    assert new.extra["volumes"] == {"data": str(data)}
    lines = (data / "starts.log").read_text().splitlines()
    assert [ln.split()[1:3] for ln in lines] == [
        [f"instance={old.id}", "version=v1"], [f"instance={new.id}", "version=v2"]]
    # Another service gets its own volume.
    other = provider.launch(request(v1, token="c", service="api"))[0]
    assert other.address is not None
    http_get(other.address)
    assert (provider.root / "data" / "api" / "data" / "starts.log").read_text().count(
        "instance=") == 1


def test_rehash_proves_content_and_names_tampered_files(provider: LocalProvider,
                                                         baked: Path) -> None:
    image_id = store(provider, baked, "v1")
    inst = provider.launch(request(image_id))[0]
    assert inst.address is not None
    http_get(inst.address)  # the app ran (no bytecode written into its root)
    digest, manifest = provider.rehash(inst.id)
    assert digest == digest_of_tree(baked / "v1")
    assert diff_manifests(provider.image_manifest(image_id), manifest) == {
        "added": [], "removed": [], "changed": []}

    root = Path(inst.extra["root"])
    os.chmod(root, 0o755)
    os.chmod(root / "app.py", 0o644)  # root would not even need these: modes do not protect
    with open(root / "app.py", "a") as f:
        f.write("# patched in place\n")
    (root / "backdoor.sh").write_text("#!/bin/sh\n")
    tampered, now = provider.rehash(inst.id)
    assert tampered != digest
    assert diff_manifests(provider.image_manifest(image_id), now) == {
        "added": ["backdoor.sh"], "removed": [], "changed": ["app.py"]}
    with pytest.raises(NotFound):
        provider.rehash("i-0000000000000000")


def test_broken_image_health_answers_500(provider: LocalProvider, baked: Path) -> None:
    image_id = store(provider, baked, "v3")
    inst = provider.launch(request(image_id))[0]
    assert inst.address is not None
    assert http_get(inst.address, "/healthz")[0] == 500
    assert json.loads(http_get(inst.address)[1])["version"] == "v3"


# -- errors ------------------------------------------------------------------------------------


def test_launch_bad_inputs_leave_nothing(provider: LocalProvider, baked: Path) -> None:
    image_id = store(provider, baked, "v1")
    with pytest.raises(NotFound) as nf:
        provider.launch(request("img-00000000deadbeef"))
    assert "img-00000000deadbeef" in nf.value.message and "store_image" in nf.value.message
    with pytest.raises(BadRequest) as br:
        provider.launch(request(image_id, region="us-east-1"))
    assert "'us-east-1'" in br.value.message and "'local'" in br.value.message
    with pytest.raises(BadRequest, match="imm:service"):
        provider.launch(request(image_id, service="../../etc"))
    with pytest.raises(BadRequest, match="count"):
        provider.launch(request(image_id, count=-1))
    with pytest.raises(BadRequest):
        provider.describe_image("eu-west-1", image_id)
    assert list((provider.root / "instances").iterdir()) == []
    assert list((provider.root / "logs").iterdir()) == []
    assert not (provider.root / "data" / "etc").exists()


def test_command_that_exits_at_once_is_a_provider_error(state_dir: Path,
                                                        tmp_path: Path) -> None:
    # Generous: a crash is noticed as soon as it happens, and a loaded machine starts slowly.
    provider = make_provider(state_dir, start_check_s=5)
    code = "import sys; print('missing config: DATABASE_URL', flush=True); sys.exit(3)"
    src = write_image(tmp_path / "crash", {"command": ["python3", "-c", code]})
    image_id = provider.store_image(src, digest_of_tree(src))
    with pytest.raises(ProviderError) as err:
        provider.launch(request(image_id, count=2))
    msg = err.value.message
    assert "exited with status 3" in msg and "missing config: DATABASE_URL" in msg
    assert image_id in msg
    assert list((provider.root / "instances").iterdir()) == []
    assert list(provider.list_instances()) == []
    # The log of the failed start is kept for the operator.
    assert any("DATABASE_URL" in p.read_text() for p in (provider.root / "logs").iterdir())

    missing = write_image(tmp_path / "nocmd", {"command": ["/nonexistent/binary"]})
    with pytest.raises(ProviderError, match="/nonexistent/binary"):
        provider.launch(request(provider.store_image(missing, digest_of_tree(missing))))
    assert list((provider.root / "instances").iterdir()) == []


def test_one_instance_of_a_batch_dying_at_once_fails_the_launch_and_leaves_nothing(
        state_dir: Path, tmp_path: Path) -> None:
    # The batch starts at once; the one that dies is seen on its pidfd, the others are stopped.
    provider = make_provider(state_dir, start_check_s=2)
    marker = tmp_path / "first"
    code = (f"import os, sys, time\n"
            f"try:\n    os.close(os.open({str(marker)!r}, os.O_CREAT | os.O_EXCL))\n"
            f"except FileExistsError:\n    time.sleep(600)\n"
            f"print('first one out', flush=True); sys.exit(4)")
    src = write_image(tmp_path / "one-dies", {"command": ["python3", "-c", code]})
    image_id = provider.store_image(src, digest_of_tree(src))
    with pytest.raises(ProviderError, match=r"exited with status 4.*first one out"):
        provider.launch(request(image_id, count=3))
    assert list((provider.root / "instances").iterdir()) == []
    assert list(provider.list_instances()) == []
    logs = list((provider.root / "logs").iterdir())
    assert len(logs) == 3  # each one's log is kept, the two stopped ones' too


def test_settings_are_checked(state_dir: Path) -> None:
    with pytest.raises(ConfigError, match="port_range"):
        make_provider(state_dir, port_range="30000")
    with pytest.raises(ConfigError, match="port_range"):
        make_provider(state_dir, port_range="3000-2000")
    with pytest.raises(ConfigError, match="stop_timeout_s"):
        make_provider(state_dir, stop_timeout_s="soon")
    with pytest.raises(ConfigError, match="start_check_s"):
        make_provider(state_dir, start_check_s=0)
    custom = make_provider(state_dir, root=str(state_dir / "elsewhere"))
    assert custom.root == state_dir / "elsewhere" and (custom.root / "images").is_dir()


def test_port_range_is_used(state_dir: Path, baked: Path) -> None:
    provider = make_provider(state_dir, port_range="47100-47119")
    image_id = store(provider, baked, "v1")
    instances = provider.launch(request(image_id, 3))
    ports = [int(i.extra["port"]) for i in instances]
    assert len(set(ports)) == 3 and all(47100 <= p <= 47119 for p in ports)
    for inst in instances:
        assert inst.address is not None
        assert http_get(inst.address)[0] == 200


# -- surviving immd ----------------------------------------------------------------------------

LAUNCHER = """
import json, logging, os, signal, sys
from pathlib import Path
from imm.plugins.base import LaunchRequest, PluginContext
from imm.plugins.providers.local import LocalProvider
p = LocalProvider("local", {}, PluginContext(Path(sys.argv[1]), logging.getLogger("x")))
tags = {"imm:service": "web", "imm:rollout": "r-9", "imm:slot": "blue", "imm:digest": "d"}
insts = p.launch(LaunchRequest("local", sys.argv[2], 2, tags, "from-dead-immd"))
print(json.dumps([[i.id, i.address, i.extra["pid"]] for i in insts]), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.fixture
def adopt_orphans() -> Iterator[list[int]]:
    """Make this process the reaper of orphaned descendants for the test, then reap them.

    Instances orphaned by their launcher's death are re-parented to init, which in some
    containers never reaps; as a child subreaper the test collects its own zombies.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_child_subreaper = 36
    libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0)
    adopted: list[int] = []
    try:
        yield adopted
    finally:
        libc.prctl(pr_set_child_subreaper, 0, 0, 0, 0)
        for pid in adopted:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def test_instances_survive_their_launcher_being_killed(state_dir: Path, baked: Path,
                                                       adopt_orphans: list[int]) -> None:
    image_id = store(make_provider(state_dir), baked, "v1")
    proc = subprocess.run([sys.executable, "-c", LAUNCHER, str(state_dir), image_id],
                          capture_output=True, text=True, cwd=REPO, timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    launched = json.loads(proc.stdout)
    adopt_orphans.extend(pid for _, _, pid in launched)
    provider = make_provider(state_dir)
    found = {i.id: i for i in provider.list_instances({TAG_ROLLOUT: "r-9"})}
    assert set(found) == {iid for iid, _, _ in launched}
    for iid, address, pid in launched:
        assert found[iid].state == "running" and pid_running(pid)
        assert json.loads(http_get(address)[1])["instance"] == iid
    # Not our children any more, still stopped cleanly.
    provider.terminate(list(found))
    for _, address, pid in launched:
        assert wait_gone(pid) and refused(address)
    assert list(provider.list_instances()) == []


def test_pid_reuse_is_not_mistaken_for_the_instance(provider: LocalProvider,
                                                    baked: Path) -> None:
    image_id = store(provider, baked, "v1")
    inst = provider.launch(request(image_id))[0]
    meta_path = provider.root / "instances" / inst.id / "meta.json"
    meta = json.loads(meta_path.read_text())
    real_pid = meta["pid"]
    try:
        # The recorded pid now belongs to another process (this test) with another start time.
        meta["pid"] = os.getpid()
        meta_path.write_text(json.dumps(meta))
        assert [i.state for i in provider.list_instances()] == ["terminated"]
        provider.terminate([inst.id])  # must not signal the unrelated process (us)
        assert not meta_path.parent.exists()
    finally:
        os.killpg(real_pid, signal.SIGKILL)
        wait_gone(real_pid)


def test_an_instance_killed_by_hand_is_terminated_then_reclaimed(state_dir: Path,
                                                                 baked: Path) -> None:
    provider = make_provider(state_dir, terminated_ttl_s=0.5)
    image_id = store(provider, baked, "v1")
    keep, victim = provider.launch(request(image_id, count=2))
    os.killpg(victim.extra["pid"], signal.SIGKILL)
    assert wait_gone(victim.extra["pid"])
    states = {i.id: i.state for i in provider.list_instances()}
    assert states == {keep.id: "running", victim.id: "terminated"}
    time.sleep(0.6)
    assert [i.id for i in provider.list_instances()] == [keep.id]  # reclaimed, not "stopped"
    log = (provider.logs_dir / f"{victim.id}.log").read_text()
    assert f"reclaimed {victim.id}: its process had died" in log
    provider.terminate([keep.id])


def test_a_dead_instance_terminated_while_it_is_listed_is_simply_gone(
        state_dir: Path, baked: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A listing notes when it first sees an instance dead; if a terminate removes the instance's
    directory at that moment (a rollout retiring it), the listing says it is gone, not a 500."""
    provider = make_provider(state_dir)
    image_id = store(provider, baked, "v1")
    keep, victim = provider.launch(request(image_id, count=2))
    os.killpg(victim.extra["pid"], signal.SIGKILL)
    assert wait_gone(victim.extra["pid"])
    replace = os.replace

    def terminated_meanwhile(src: Any, dst: Any) -> None:
        if Path(dst).parent.name == victim.id:
            # terminate removes the directory after the new meta.json's temp file was written
            provider._remove_instance(victim.id)
        replace(src, dst)

    monkeypatch.setattr(os, "replace", terminated_meanwhile)
    assert [i.id for i in provider.list_instances()] == [keep.id]
    provider.terminate([keep.id])


def test_a_terminate_cut_short_after_the_process_stopped_is_finished_by_the_next_listing(
        state_dir: Path, baked: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """immd killed inside a terminate, after the instance's process stopped and before its
    directory was removed (the crash harness hit it in a rollback): the next immd's listing
    removes it instead of listing a dead instance of a rolled-back rollout for
    terminated_ttl_s."""
    provider = make_provider(state_dir)
    image_id = store(provider, baked, "v1")
    keep, victim = provider.launch(request(image_id, count=2))

    class Killed(BaseException):
        pass

    def killed(ids: Any) -> None:
        raise Killed

    monkeypatch.setattr(provider, "_remove_dirs", killed)
    with pytest.raises(Killed):
        provider.terminate([victim.id])
    assert wait_gone(victim.extra["pid"])
    assert (provider.root / "instances" / victim.id).is_dir()
    fresh = make_provider(state_dir)  # the next immd
    assert [(i.id, i.state) for i in fresh.list_instances()] == [(keep.id, "running")]
    assert not (provider.root / "instances" / victim.id).exists()
    fresh.terminate([keep.id])


def test_process_found_when_immd_died_before_recording_its_pid(provider: LocalProvider,
                                                               baked: Path) -> None:
    image_id = store(provider, baked, "v1")
    inst = provider.launch(request(image_id, token="crashy"))[0]
    meta_path = provider.root / "instances" / inst.id / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta.update(pid=None, pid_start=None)
    meta_path.write_text(json.dumps(meta))
    fresh = make_provider(provider.context.state_dir)
    listed = list(fresh.list_instances())
    assert [(i.id, i.state, i.extra["pid"]) for i in listed] == [
        (inst.id, "running", inst.extra["pid"])]
    assert [i.id for i in fresh.launch(request(image_id, token="crashy"))] == [inst.id]
    assert json.loads(meta_path.read_text())["pid"] == inst.extra["pid"]


# -- plugin registration -----------------------------------------------------------------------


def test_registered_as_a_trylast_plugin() -> None:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(local_module)
    pm.check_pending()
    registry = ProviderRegistry()
    pm.hook.imm_register_providers(registry=registry)
    assert registry.get("local") is LocalProvider
    impl = pm.hook.imm_register_providers.get_hookimpls()[0]
    assert impl.trylast


def test_unreadable_meta_is_listed_and_still_terminated(provider: LocalProvider,
                                                        baked: Path) -> None:
    image_id = store(provider, baked, "v1")
    inst = provider.launch(request(image_id))[0]
    (provider.root / "instances" / inst.id / "meta.json").write_text("{half a write")
    listed = list(provider.list_instances())
    assert [(i.id, i.state) for i in listed] == [(inst.id, "unknown")]
    provider.terminate([inst.id])  # the process is found by its IMM_INSTANCE_ID
    assert wait_gone(inst.extra["pid"])
    assert list(provider.list_instances()) == []
