"""State on PostgreSQL beside SQLite, and signing through SoftHSM2 beside the file signer.

    python bench/bench_state.py [--images 2000] [--rounds 4] [--connections 4] [--batch 100]
                                [--runs 9] [--signatures 2000] [--sign-repeat 5] [--json PATH]

(a) register: two real immd, one on its default SQLite state, one with ``[state] url`` on a
    throwaway PostgreSQL 15 cluster started here (Debian's initdb and pg_ctl, run as the
    ``postgres`` user when root; fsync off, as a test cluster; immd connects over TCP to
    127.0.0.1 as role ``imm`` with a SCRAM password from ``password_env``, the README's
    configuration). Same settings otherwise. ``--images`` tiny distinct files are registered
    with ``POST /v1/images`` on each, from ``--connections`` keep-alive clients
    (bench_catalog.py's way), in ``--rounds`` interleaved chunks (SQLite, PostgreSQL, then the
    other order next round), so both grow through the same catalog sizes under the same load.
(b) list: ``GET /v1/images?limit=1000`` (the page ``immctl image list --all`` asks for, over
    one keep-alive connection with immctl's client, 5 a run), ``immctl image list --json`` (the
    first page, 100 images) and ``immctl image list --all --json`` (every image, pages of 1000)
    on each, interleaved; medians of ``--runs``. The immctl figures include its start.
(a') register: as many images again through ``POST /v1/images/batch`` (``--batch`` a request),
    interleaved the same way (after the list runs, which see ``--images`` images).
(c) sign: ``--signatures`` DSSE pre-authentication messages (the bytes immd signs for an image
    record, ~300 bytes) signed with the file signer's key (``[signer] kind = "file"``: Ed25519
    with cryptography) and with the PKCS#11 signer's key on a SoftHSM2 token initialised in a
    temp dir (``kind = "pkcs11"``: CKM_EDDSA through python-pkcs11), both opened through imm's
    own key stores; median of ``--sign-repeat`` rounds, interleaved. Every signature of the
    first round is verified with its key's public key, untimed: the rates are of valid ones.

Every ratio is PostgreSQL (or PKCS#11) against SQLite (or the file signer), measured in the same
run. Everything started (both immd, PostgreSQL) is stopped and every temp dir removed at the
end, whatever happens. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imm.catalog.canonical import canonical_json  # noqa: E402
from imm.catalog.dsse import pae, payload_type  # noqa: E402
from imm.catalog.keys import FileKeyStore  # noqa: E402
from imm.cli.client import Client  # noqa: E402

from daemon import Immd, reap_under  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402
from bench_catalog import loadavg, log, make_files, register_api, register_batches  # noqa: E402

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_PASSWORD = "imm-bench-password"
SOFTHSM_MODULES = ("/usr/lib/softhsm/libsofthsm2.so",
                   "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
                   "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so")
HSM_PIN = "4821-bench-pin"
HSM_SO_PIN = "5678-bench-so-pin"
GETS_PER_RUN = 5


# --- a throwaway PostgreSQL 15 cluster -------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def as_postgres(*args: str) -> None:
    """Run a PostgreSQL tool as the ``postgres`` user (initdb refuses root)."""
    cmd = ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)
    subprocess.run(cmd, cwd="/", check=True, capture_output=True, timeout=120)


class PgCluster:
    """initdb + pg_ctl start in a temp dir; local socket trusted, TCP asks SCRAM."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="imm-bench-pg-"))
        self.port = free_port()
        self.started = False

    def start(self) -> PgCluster:
        self.dir.chmod(0o711)  # postgres must traverse it
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
        data = f"{self.dir}/data"
        as_postgres(str(PG_BIN / "initdb"), "-D", data, "-U", "postgres", "--auth-local=trust",
                    "--auth-host=scram-sha-256", "--no-sync", "--no-locale", "-E", "UTF8")
        as_postgres(str(PG_BIN / "pg_ctl"), "-D", data, "-l", f"{self.dir}/log", "-w", "start",
                    "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        self.started = True
        self.sql(f"CREATE ROLE imm LOGIN PASSWORD '{PG_PASSWORD}'")
        self.sql("CREATE DATABASE imm OWNER imm")
        return self

    def sql(self, statement: str) -> None:
        import psycopg

        url = f"postgresql://postgres@/postgres?host={self.dir}&port={self.port}"
        with psycopg.connect(url, autocommit=True) as c:
            c.execute(statement)

    def url(self) -> str:
        return f"postgresql://imm@127.0.0.1:{self.port}/imm"

    def stop(self) -> None:
        if self.started:
            with contextlib.suppress(subprocess.SubprocessError):
                as_postgres(str(PG_BIN / "pg_ctl"), "-D", f"{self.dir}/data", "-m", "immediate",
                            "-w", "stop")
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)


# --- a SoftHSM2 token ------------------------------------------------------------------------


def softhsm_module() -> str | None:
    if shutil.which("softhsm2-util") is None:
        return None
    return next((p for p in SOFTHSM_MODULES if Path(p).exists()), None)


def init_token(root: Path, label: str) -> Path:
    """A fresh SoftHSM2 token in ``root``; the SOFTHSM2_CONF file that finds it."""
    tokens = root / "tokens"
    tokens.mkdir(parents=True)
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n"
                    "log.level = ERROR\n")
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", label,
                    "--pin", HSM_PIN, "--so-pin", HSM_SO_PIN], check=True, capture_output=True,
                   env={"SOFTHSM2_CONF": str(conf), "PATH": "/usr/bin:/bin"})
    return conf


# --- measurements ----------------------------------------------------------------------------


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Seconds of one ``immctl ... --json`` list, and how many items it printed."""
    t0 = time.perf_counter()
    cp = subprocess.run(cmd, capture_output=True, env=env)
    dt = time.perf_counter() - t0
    if cp.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {cp.returncode}: {cp.stderr[:300]!r}")
    return dt, len(json.loads(cp.stdout)["items"])


def messages(n: int) -> list[bytes]:
    """``n`` distinct DSSE PAE messages of an image record's shape and size."""
    ptype = payload_type("image")
    out = []
    for i in range(n):
        body = {"name": f"svc{i % 100:02d}", "version": str(i),
                "content_digest": "sha256:" + f"{i:064x}",
                "format": "raw", "size": 4096 + i, "created_at": "2026-01-01T00:00:00Z",
                "labels": {"team": "bench"}, "source": {"path": f"/images/{i:07d}.raw"}}
        out.append(pae(ptype, canonical_json(body)))
    return out


def sign_all(sign: Callable[[bytes], bytes], msgs: list[bytes]) -> tuple[float, list[bytes]]:
    t0 = time.perf_counter()
    sigs = [sign(m) for m in msgs]
    return time.perf_counter() - t0, sigs


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}/s"


def fmt_ms(x: float) -> str:
    return f"{x * 1000:.0f} ms"


def bench_state(a: argparse.Namespace, work: Path) -> dict[str, Any]:
    files = work / "files"
    paths = make_files(files, 2 * a.images)  # the second half goes through the batch route
    pg = PgCluster()
    daemons: dict[str, Immd] = {}
    try:
        pg.start()
        log(f"PostgreSQL 15 on 127.0.0.1:{pg.port} ({pg.dir})")
        sqlite_root, pg_root = work / "sqlite", work / "postgresql"
        sqlite_root.mkdir()
        pg_root.mkdir()
        # the same settings on both (immd reads paths only under image_roots), but [state]
        common = f'[daemon]\nimage_roots = ["{files}"]\n'
        daemons["sqlite"] = Immd(sqlite_root, common, pyc_cache=True).start()
        daemons["postgresql"] = Immd(
            pg_root, f'{common}\n[state]\nurl = "{pg.url()}"\npassword_env = "IMM_PG_PASSWORD"\n',
            pyc_cache=True).start(extra_env={"IMM_PG_PASSWORD": PG_PASSWORD})
        log(f"two immd up (load {loadavg()})")

        # (a) register, interleaved in chunks
        reg = {"sqlite": 0.0, "postgresql": 0.0}
        bounds = [a.images * r // a.rounds for r in range(a.rounds + 1)]
        for r in range(a.rounds):
            lo, hi = bounds[r], bounds[r + 1]
            order = ["sqlite", "postgresql"] if r % 2 == 0 else ["postgresql", "sqlite"]
            for name in order:
                reg[name] += register_api(daemons[name].sock, paths[lo:hi], lo, a.connections)
            log(f"  round {r + 1}/{a.rounds}: {hi:,} images on each "
                f"(sqlite {hi / reg['sqlite']:,.0f}/s, postgresql {hi / reg['postgresql']:,.0f}/s,"
                f" load {loadavg()})")
        for name, d in daemons.items():
            size = d.ledger_size()
            if size < a.images:
                raise RuntimeError(f"{name}: ledger has {size} entries, expected ≥ {a.images}")

        # (b) list, interleaved
        lists: dict[str, dict[str, list[float]]] = {
            kind: {"sqlite": [], "postgresql": []} for kind in ("page", "all", "get")}
        clients = {name: Client(str(d.sock)) for name, d in daemons.items()}
        for r in range(a.runs):
            order = ["sqlite", "postgresql"] if r % 2 == 0 else ["postgresql", "sqlite"]
            for name in order:
                d = daemons[name]
                for _ in range(GETS_PER_RUN):  # one is a few ms: several per run
                    t0 = time.perf_counter()
                    page = clients[name].request("GET", "/v1/images", query={"limit": 1000})
                    lists["get"][name].append(time.perf_counter() - t0)
                    if len(page["images"]) != min(1000, a.images):
                        raise RuntimeError(f"{name}: GET /v1/images gave {len(page['images'])}")
                dt, n = timed([d.immctl, "image", "list", "--json"], d.env)
                if n != min(100, a.images):
                    raise RuntimeError(f"{name}: image list printed {n} images")
                lists["page"][name].append(dt)
                dt, n = timed([d.immctl, "image", "list", "--all", "--json"], d.env)
                if n != a.images:
                    raise RuntimeError(f"{name}: image list --all printed {n} of {a.images}")
                lists["all"][name].append(dt)
        log(f"listed {a.runs} times on each (load {loadavg()})")

        # (a') register as many again through POST /v1/images/batch, interleaved likewise
        bat = {"sqlite": 0.0, "postgresql": 0.0}
        for r in range(a.rounds):
            lo, hi = a.images + bounds[r], a.images + bounds[r + 1]
            order = ["sqlite", "postgresql"] if r % 2 == 0 else ["postgresql", "sqlite"]
            for name in order:
                bat[name] += register_batches(daemons[name].sock, paths[lo:hi], lo, a.batch,
                                              a.connections)
        for name, d in daemons.items():
            size = d.ledger_size()
            if size < 2 * a.images:
                raise RuntimeError(f"{name}: ledger has {size} entries, expected ≥ {2 * a.images}")
        log(f"batch-registered {a.images:,} more on each (load {loadavg()})")
    finally:
        for d in daemons.values():
            d.stop()
            reap_under(d.root)
        pg.stop()
    return {"register": reg, "batch": bat, "list": lists}


def bench_sign(a: argparse.Namespace, work: Path, module: str) -> dict[str, list[float]]:
    from cryptography.exceptions import InvalidSignature

    from imm.plugins.signers.pkcs11 import Pkcs11KeyStore

    conf = init_token(work / "hsm", "imm-bench")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    os.environ["IMM_BENCH_HSM_PIN"] = HSM_PIN
    keydir = work / "keys"
    keydir.mkdir()
    file_key, _ = FileKeyStore({"kind": "file"}, keydir).load_or_create()
    hsm = Pkcs11KeyStore({"kind": "pkcs11", "module": module, "token_label": "imm-bench",
                          "pin_env": "IMM_BENCH_HSM_PIN"}, keydir)
    try:
        hsm_key, created = hsm.load_or_create()
        assert created, "a fresh token should have had no key"
        msgs = messages(a.signatures)
        times: dict[str, list[float]] = {"file": [], "pkcs11": []}
        for r in range(a.sign_repeat):
            order = [("file", file_key), ("pkcs11", hsm_key)]
            if r % 2:
                order.reverse()
            for name, key in order:
                dt, sigs = sign_all(key.sign, msgs)
                times[name].append(dt)
                if r == 0:  # every signature must be a valid Ed25519 signature, untimed
                    pub = key.public_key()
                    for m, s in zip(msgs, sigs, strict=True):
                        try:
                            pub.verify(s, m)
                        except InvalidSignature:
                            raise RuntimeError(f"{name}: a signature does not verify") from None
            log(f"  sign round {r + 1}/{a.sign_repeat} (load {loadavg()})")
        return times
    finally:
        hsm.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=4, help="interleaved registration chunks")
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--batch", type=int, default=100, help="images per batch request")
    ap.add_argument("--runs", type=int, default=9, help="image list runs on each")
    ap.add_argument("--signatures", type=int, default=2000)
    ap.add_argument("--sign-repeat", type=int, default=5)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.images < 1 or a.rounds < 1 or a.runs < 1 or a.signatures < 1 or a.sign_repeat < 1 \
            or a.batch < 1:
        ap.error("--images, --rounds, --runs, --signatures and --sign-repeat and --batch must be ≥ 1")
    if not (PG_BIN / "initdb").exists() or (os.geteuid() == 0 and not shutil.which("runuser")):
        print(f"PostgreSQL 15 is not installed ({PG_BIN}/initdb): apt-get install postgresql-15",
              file=sys.stderr)
        return 2
    module = softhsm_module()
    if module is None:
        print("SoftHSM2 is not installed (softhsm2-util, libsofthsm2.so): apt-get install softhsm2",
              file=sys.stderr)
        return 2
    # a SIGTERM (a timeout, ^C's cousin) unwinds through the finally blocks: nothing is left
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    load0 = loadavg()
    work = Path(tempfile.mkdtemp(prefix="imm-bench-state-"))
    try:
        st = bench_state(a, work)
        sg = bench_sign(a, work, module)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load1 = loadavg()

    reg = {k: a.images / v for k, v in st["register"].items()}
    bat = {k: a.images / v for k, v in st["batch"].items()}
    med = {kind: {k: statistics.median(v) for k, v in d.items()} for kind, d in st["list"].items()}
    srate = {k: a.signatures / statistics.median(v) for k, v in sg.items()}
    print(f"state and signer, {a.images:,} images, {a.connections} connections, {a.rounds} "
          f"interleaved rounds; {a.runs} list runs; {a.signatures:,} signatures x "
          f"{a.sign_repeat}; load average {load0} at the start, {load1} at the end")
    print(f"  {'figure':<52} {'SQLite / file':>15} {'PostgreSQL / PKCS#11':>21} {'ratio':>7}")
    lines = [
        ("register (POST /v1/images)", fmt_rate(reg["sqlite"]), fmt_rate(reg["postgresql"]),
         reg["postgresql"] / reg["sqlite"]),
        (f"register (POST /v1/images/batch, {a.batch} each)", fmt_rate(bat["sqlite"]),
         fmt_rate(bat["postgresql"]), bat["postgresql"] / bat["sqlite"]),
        (f"GET /v1/images?limit=1000 ({min(1000, a.images):,}), median",
         fmt_ms(med["get"]["sqlite"]), fmt_ms(med["get"]["postgresql"]),
         med["get"]["postgresql"] / med["get"]["sqlite"]),
        ("immctl image list --json (100), median", fmt_ms(med["page"]["sqlite"]),
         fmt_ms(med["page"]["postgresql"]), med["page"]["postgresql"] / med["page"]["sqlite"]),
        (f"immctl image list --all --json ({a.images:,}), median", fmt_ms(med["all"]["sqlite"]),
         fmt_ms(med["all"]["postgresql"]), med["all"]["postgresql"] / med["all"]["sqlite"]),
        ("sign DSSE message, median rate", fmt_rate(srate["file"]), fmt_rate(srate["pkcs11"]),
         srate["pkcs11"] / srate["file"]),
    ]
    for fig, x, y, ratio in lines:
        print(f"  {fig:<52} {x:>15} {y:>21} {ratio:>6.2f}×")
    print("  list runs (ms), sqlite:     " + ", ".join(
        f"{t * 1000:.0f}" for t in st["list"]["all"]["sqlite"]))
    print("  list runs (ms), postgresql: " + ", ".join(
        f"{t * 1000:.0f}" for t in st["list"]["all"]["postgresql"]))
    print("  sign rounds (s), file:      " + ", ".join(f"{t:.3f}" for t in sg["file"]))
    print("  sign rounds (s), pkcs11:    " + ", ".join(f"{t:.3f}" for t in sg["pkcs11"]))
    # python -m bench appends the arguments to the command
    report.write(a.json, "python bench/bench_state.py", [
        report.row(f"register rate, PostgreSQL vs SQLite ({a.images:,} images)",
                   fmt_rate(reg["postgresql"]), fmt_rate(reg["sqlite"]),
                   reg["postgresql"] / reg["sqlite"]),
        report.row(f"batch register rate, PostgreSQL vs SQLite ({a.images:,} images)",
                   fmt_rate(bat["postgresql"]), fmt_rate(bat["sqlite"]),
                   bat["postgresql"] / bat["sqlite"]),
        report.row(f"GET /v1/images?limit=1000 median, PostgreSQL vs SQLite "
                   f"({min(1000, a.images):,} images)",
                   fmt_ms(med["get"]["postgresql"]), fmt_ms(med["get"]["sqlite"]),
                   med["get"]["postgresql"] / med["get"]["sqlite"]),
        report.row(f"immctl image list --all --json median, PostgreSQL vs SQLite ({a.images:,})",
                   fmt_ms(med["all"]["postgresql"]), fmt_ms(med["all"]["sqlite"]),
                   med["all"]["postgresql"] / med["all"]["sqlite"]),
        report.row("signing rate, PKCS#11 on SoftHSM2 vs file signer",
                   fmt_rate(srate["pkcs11"]), fmt_rate(srate["file"]),
                   srate["pkcs11"] / srate["file"]),
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
