"""The catalog at scale through a real immd: register, list and re-verify N images, next to peers.

    python bench/bench_catalog.py [--images 100000] [--connections 4] [--sample 1000]
                                  [--repeat 3] [--verify-repeat 2] [--dir DIR]

Starts a real immd on a temporary state dir (its unix socket next to it) and writes N tiny,
distinct disk files there (hashing is not the point here: bench_hash.py measures it). Then:

(a) register: every file is registered with ``POST /v1/images`` (``name svcNN``, ``version i``)
    through the real API, from ``--connections`` threads each holding one keep-alive connection
    (``imm.cli.client.Client``, immctl's own client). Peers:
      - the floor: the same N rows, read back from immd's ``images`` table, inserted with plain
        ``INSERT``s into a bare table of the same columns and keys (no secondary indexes, no
        ledger, no signatures) with sqlite3, same pragmas (WAL, synchronous=NORMAL): once in one
        transaction, once with a transaction per row (immd commits once per request);
      - curl: a sample of ``--sample`` more registrations made by one curl process over one
        keep-alive connection (``curl --unix-socket -K config``, one ``next`` block per POST),
        interleaved in chunks with the same number made by the Python client over one
        connection, at the same catalog size; this isolates the client side.
(b) list: ``immctl image list --all --json`` (pages of 1000 over one connection) against the
    same pages fetched by one curl process over one keep-alive connection (same endpoint, same
    query strings; the page cursors are learned beforehand, untimed). Best of ``--repeat``,
    interleaved.
(c) verify: ``immctl image verify --all`` against the floor: a plain loop that verifies the same
    Ed25519 signatures (the envelopes of the same rows, read from immd's database, messages
    built beforehand) with ``cryptography``. Best of ``--verify-repeat``, interleaved.

Child Python processes run with a bytecode cache in the temporary dir (as an installed immctl
has its .pyc files) unless ``--no-pyc-cache``. The load average is printed with the figures;
immd's own CPU time per phase is printed too. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey  # noqa: E402

from imm.cli.client import Client  # noqa: E402

from daemon import Immd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402

PAGE = 1000  # immctl image list --all asks for pages of this many
SIGNED_TABLES = ("images", "artifacts", "channel_history", "revocations", "keys")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# --- (a) register ----------------------------------------------------------------------------


def make_files(root: Path, n: int, start: int = 0) -> list[str]:
    """``n`` tiny distinct files, 1000 per directory."""
    paths = []
    for i in range(start, start + n):
        d = root / f"{i // 1000:05d}"
        if i % 1000 == 0 or i == start:
            d.mkdir(parents=True, exist_ok=True)
        p = d / f"{i:07d}.raw"
        p.write_bytes(b"imm bench image %d\n" % i)
        paths.append(str(p))
    return paths


def spec(i: int, path: str) -> dict[str, Any]:
    return {"path": path, "name": f"svc{i % 100:02d}", "version": str(i)}


def run_workers(worker: Callable[[], None], connections: int,
                errors: list[BaseException]) -> float:
    """Run ``worker`` on ``connections`` threads at once; seconds until all end. The first
    error a worker handed over in ``errors`` is raised here."""
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t0


def register_api(sock: Path, paths: list[str], start: int, connections: int) -> float:
    """Register ``paths`` through the API from ``connections`` keep-alive clients; seconds."""
    n = len(paths)
    nxt = iter(range(n))
    lock = threading.Lock()
    done = [0]
    errors: list[BaseException] = []
    step = max(n // 10, 1)

    def worker() -> None:
        c = Client(str(sock))
        try:
            while True:
                with lock:
                    k = next(nxt, None)
                if k is None:
                    return
                r = c.request("POST", "/v1/images", spec(start + k, paths[k]))
                if not r["created"]:
                    raise RuntimeError(f"image {start + k} was not created: {r}")
                with lock:
                    done[0] += 1
                    if done[0] % step == 0:
                        log(f"  registered {done[0]:,}/{n:,} "
                            f"({done[0] / (time.perf_counter() - t0):,.0f}/s, load {loadavg()})")
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            errors.append(e)

    t0 = time.perf_counter()  # for the progress lines
    return run_workers(worker, connections, errors)


def register_batches(sock: Path, paths: list[str], start: int, per_request: int,
                     connections: int) -> float:
    """Register ``paths`` through ``POST /v1/images/batch``, ``per_request`` images a request,
    from ``connections`` keep-alive clients; seconds."""
    chunks = [(k, paths[k:k + per_request]) for k in range(0, len(paths), per_request)]
    nxt = iter(chunks)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        c = Client(str(sock))
        try:
            while True:
                with lock:
                    item = next(nxt, None)
                if item is None:
                    return
                k, chunk = item
                r = c.request("POST", "/v1/images/batch",
                              {"images": [spec(start + k + j, p) for j, p in enumerate(chunk)]})
                if not all(x["created"] for x in r["images"]):
                    raise RuntimeError(f"batch at {start + k} created not every image")
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            errors.append(e)

    return run_workers(worker, connections, errors)


def register_client_one_conn(sock: Path, paths: list[str], start: int) -> float:
    c = Client(str(sock))
    t0 = time.perf_counter()
    for k, p in enumerate(paths):
        r = c.request("POST", "/v1/images", spec(start + k, p))
        assert r["created"], r
    return time.perf_counter() - t0


def curl_quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def register_curl(sock: Path, paths: list[str], start: int, cfg: Path) -> float:
    """One curl process, one keep-alive connection, one ``next`` block per POST."""
    blocks = []
    for k, p in enumerate(paths):
        blocks.append("\n".join([
            f"unix-socket = {curl_quote(str(sock))}",
            'url = "http://imm/v1/images"',
            'header = "Content-Type: application/json"',
            'header = "Accept: application/json"',
            f"data = {curl_quote(json.dumps(spec(start + k, p)))}",
            'write-out = "%{http_code}\\n"',
            'output = "/dev/null"',
        ]))
    cfg.write_text("\nnext\n".join(blocks) + "\n")
    t0 = time.perf_counter()
    out = subprocess.run(["curl", "-s", "-K", str(cfg)], capture_output=True, text=True)
    dt = time.perf_counter() - t0
    codes = out.stdout.split()
    if out.returncode != 0 or codes != ["201"] * len(paths):
        raise RuntimeError(f"curl registrations failed (rc {out.returncode}): "
                           f"{sorted(set(codes))} {out.stderr[:300]}")
    return dt


def sqlite_floor(immd: Immd, path: Path, per_row_commit: bool) -> tuple[int, float]:
    """Plain INSERTs of immd's image rows into a bare table of the same columns; (rows, s)."""
    src = immd.db()
    ddl = src.execute("SELECT sql FROM sqlite_master WHERE type='table' AND name='images'").fetchone()[0]
    rows = src.execute("SELECT * FROM images ORDER BY ledger_index").fetchall()
    src.close()
    if path.exists():
        path.unlink()
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(ddl)
    sql = "INSERT INTO images VALUES (" + ",".join("?" * len(rows[0])) + ")"
    t0 = time.perf_counter()
    if per_row_commit:
        for r in rows:
            conn.execute("BEGIN")
            conn.execute(sql, r)
            conn.execute("COMMIT")
    else:
        conn.execute("BEGIN")
        for r in rows:
            conn.execute(sql, r)
        conn.execute("COMMIT")
    dt = time.perf_counter() - t0
    conn.close()
    return len(rows), dt


def signing_peer(paths: list[str], path: Path, commit_every: int, start: int = 0) -> float:
    """What registering an image is at least, with public tools: per file, sha256 of its bytes
    (hashlib), a JSON record signed as a DSSE envelope with Ed25519 (cryptography, PAE as the
    DSSE spec says) and one INSERT of the record and envelope (sqlite3, same pragmas as immd),
    committing every ``commit_every`` rows. Seconds."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    ptype = b"application/vnd.imm.image.v1+json"
    conn = sqlite3.connect(str(path), isolation_level=None)  # kept across rounds, like immd's
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE IF NOT EXISTS images (digest TEXT PRIMARY KEY, name TEXT, "
                 "version TEXT, content_digest TEXT, envelope TEXT, UNIQUE(name, version))")
    t0 = time.perf_counter()
    conn.execute("BEGIN")
    for k, p in enumerate(paths):
        with open(p, "rb") as f:
            content = "sha256:" + hashlib.sha256(f.read()).hexdigest()
        sp = spec(start + k, p)
        body = json.dumps({"name": sp["name"], "version": sp["version"],
                           "content_digest": content}, sort_keys=True,
                          separators=(",", ":")).encode()
        sig = key.sign(b"DSSEv1 %d %s %d %s" % (len(ptype), ptype, len(body), body))
        env = json.dumps({"payloadType": ptype.decode(), "payload": base64.b64encode(body).decode(),
                          "signatures": [{"keyid": "k", "sig": base64.b64encode(sig).decode()}]})
        conn.execute("INSERT INTO images VALUES (?,?,?,?,?)",
                     ("sha256:" + hashlib.sha256(body).hexdigest(), sp["name"], sp["version"],
                      content, env))
        if (k + 1) % commit_every == 0:
            conn.execute("COMMIT")
            conn.execute("BEGIN")
    conn.execute("COMMIT")
    dt = time.perf_counter() - t0
    conn.close()
    return dt


# --- (b) list --------------------------------------------------------------------------------


def page_queries(sock: Path) -> list[str]:
    """The query strings immctl image list --all sends, learned with one untimed pass."""
    c = Client(str(sock))
    out, after = [], None
    while True:
        q = {k: v for k, v in {"after": after, "limit": PAGE}.items() if v is not None}
        qs = urlencode(q)
        out.append(qs)
        page = c.request("GET", "/v1/images?" + qs)
        after = page["next"]
        if not after:
            return out


def list_immctl(immd: Immd, out: Path) -> tuple[float, int]:
    with open(out, "wb") as f:
        t0 = time.perf_counter()
        subprocess.run([str(immd.immctl), "image", "list", "--all", "--json"], stdout=f,
                       env=immd.env, check=True)
        dt = time.perf_counter() - t0
    return dt, len(json.loads(out.read_bytes())["items"])


def list_curl(sock: Path, queries: list[str], out: Path) -> tuple[float, int]:
    urls = [f"http://imm/v1/images?{q}" for q in queries]
    with open(out, "wb") as f:
        t0 = time.perf_counter()
        subprocess.run(["curl", "-s", "-f", "--unix-socket", str(sock),
                        "-H", "Accept: application/json", *urls], stdout=f, check=True)
        dt = time.perf_counter() - t0
    text, dec, pos, count = out.read_text(), json.JSONDecoder(), 0, 0
    while pos < len(text):
        page, pos = dec.raw_decode(text, pos)
        count += len(page["images"])
    return dt, count


# --- (c) verify ------------------------------------------------------------------------------


def verify_immctl(immd: Immd) -> tuple[float, int]:
    t0 = time.perf_counter()
    out = subprocess.run([str(immd.immctl), "image", "verify", "--all", "--json"],
                         capture_output=True, env=immd.env)
    dt = time.perf_counter() - t0
    r = json.loads(out.stdout)
    if out.returncode != 0 or not r.get("ok"):
        raise RuntimeError(f"immctl image verify --all failed ({out.returncode}): {out.stdout[:300]!r}")
    return dt, int(r["checked"])


def signatures(immd: Immd) -> list[tuple[Ed25519PublicKey, bytes, bytes]]:
    """(public key, signature, DSSE PAE message) of every signed row immd re-verifies."""
    conn = immd.db()
    keys: dict[str, Ed25519PublicKey] = {}
    for kid, pem in conn.execute("SELECT keyid, public_pem FROM keys"):
        pub = serialization.load_pem_public_key(pem.encode())
        assert isinstance(pub, Ed25519PublicKey)
        keys[kid] = pub
    out = []
    for table in SIGNED_TABLES:
        for (text,) in conn.execute(f"SELECT envelope FROM {table}"):  # noqa: S608 - fixed names
            env = json.loads(text)
            ptype = env["payloadType"].encode()
            payload = base64.b64decode(env["payload"])
            sig = env["signatures"][0]
            msg = b"DSSEv1 %d %s %d %s" % (len(ptype), ptype, len(payload), payload)
            out.append((keys[sig["keyid"]], base64.b64decode(sig["sig"]), msg))
    conn.close()
    return out


def verify_floor(sigs: list[tuple[Ed25519PublicKey, bytes, bytes]]) -> float:
    t0 = time.perf_counter()
    for pub, sig, msg in sigs:
        pub.verify(sig, msg)
    return time.perf_counter() - t0


# --- report ----------------------------------------------------------------------------------


def rate(n: int, s: float) -> str:
    return f"{n / s:,.0f}/s"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=100_000, help="N images (default 100000)")
    ap.add_argument("--connections", type=int, default=4,
                    help="keep-alive connections registering concurrently (default 4)")
    ap.add_argument("--sample", type=int, default=1000,
                    help="registrations by curl, and as many by the Python client, on one "
                         "connection each (default 1000; 0 skips)")
    ap.add_argument("--repeat", type=int, default=3, help="listing runs per side; the best counts")
    ap.add_argument("--verify-repeat", type=int, default=2,
                    help="verify runs per side; the best counts")
    ap.add_argument("--no-pyc-cache", action="store_true",
                    help="run immctl as the environment says (e.g. PYTHONDONTWRITEBYTECODE)")
    ap.add_argument("--dir", type=Path, default=None, help="where to put the temporary dir")
    ap.add_argument("--commit-every", type=int, default=100,
                    help="the signing peer commits every this many rows (default 100)")
    ap.add_argument("--batch", type=int, default=100,
                    help="also register N more images through POST /v1/images/batch, this many "
                         "per request (default 100, as the peer commits; 0 skips)")
    ap.add_argument("--rounds", type=int, default=5,
                    help="register, peer and batch phases interleaved in this many rounds")
    ap.add_argument("--skip-list-verify", action="store_true", help="register only")
    ap.add_argument("--json", type=Path, default=None, help="write the headline rows here")
    args = ap.parse_args(argv)
    if not shutil.which("curl"):
        raise SystemExit("curl is needed for the curl peers")
    n = args.images
    res: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="imm-bench-catalog-", dir=args.dir) as tmpname, \
            contextlib.ExitStack() as stack:
        tmp = Path(tmpname)
        # images are posted by path, as an API client that passes no descriptor does: immd
        # reads paths only under image_roots
        immd = Immd(tmp, f'[daemon]\nimage_roots = ["{tmp / "files"}"]\n',
                    pyc_cache=not args.no_pyc_cache).start()
        sock = immd.sock
        stack.callback(immd.stop)
        log(f"immd pid {immd.proc.pid if immd.proc else '?'} on {sock}; load {loadavg()}")

        t0 = time.perf_counter()
        paths = make_files(tmp / "files", n)
        sample = args.sample
        sample_paths = make_files(tmp / "files", 2 * sample, start=n) if sample else []
        batch_paths = make_files(tmp / "files", n, start=n + 2 * sample) if args.batch else []
        log(f"wrote {n + 2 * sample:,} tiny files in {time.perf_counter() - t0:.1f} s")

        # (a) register
        cpu0 = immd.cpu()
        res["load_register"] = loadavg()
        # imm one per request, the signing peer, imm in batches: interleaved in rounds over
        # the same slices, so a noisy neighbour hurts all three alike
        res["register_s"] = res["peer_s"] = res["batch_s"] = 0.0
        step = -(-n // max(args.rounds, 1))
        for a in range(0, n, step):
            b = min(n, a + step)
            res["register_s"] += register_api(sock, paths[a:b], a, args.connections)
            res["peer_s"] += signing_peer(paths[a:b], tmp / "peer.db", args.commit_every, a)
            if args.batch:
                res["batch_s"] += register_batches(sock, batch_paths[a:b], n + 2 * sample + a,
                                                   args.batch, args.connections)
        res["register_cpu"] = immd.cpu() - cpu0
        res["load_register_end"] = loadavg()
        log(f"registered {n:,} in {res['register_s']:.1f} s (and {n:,} in batches of "
            f"{args.batch} in {res['batch_s']:.1f} s) in {args.rounds} rounds")
        res["floor_rows"], res["floor_s"] = sqlite_floor(immd, tmp / "floor.db", False)
        _, res["floor_commit_s"] = sqlite_floor(immd, tmp / "floor.db", True)
        log("sqlite floor and signing peer done")
        if sample:
            chunk = max(min(250, sample), 1)
            client_s = curl_s = 0.0
            for k in range(0, sample, chunk):
                a = sample_paths[k:k + chunk]
                b = sample_paths[sample + k:sample + k + chunk]
                client_s += register_client_one_conn(sock, a, n + k)
                curl_s += register_curl(sock, b, n + sample + k, tmp / "curl.cfg")
            res["sample_client_s"], res["sample_curl_s"] = client_s, curl_s
            log("client/curl sample done")

        res["load_end"] = loadavg()
        if not args.skip_list_verify:
            # (b) list
            queries = page_queries(sock)
            res["pages"] = len(queries)
            best_i = best_c = float("inf")
            cpu_i = cpu_c = 0.0
            res["load_list"] = loadavg()
            for r in range(args.repeat):
                order = ("immctl", "curl") if r % 2 == 0 else ("curl", "immctl")
                for side in order:
                    c0 = immd.cpu()
                    if side == "immctl":
                        dt, cnt_i = list_immctl(immd, tmp / "list-immctl.json")
                        best_i, cpu_i = min(best_i, dt), immd.cpu() - c0
                    else:
                        dt, cnt_c = list_curl(sock, queries, tmp / "list-curl.json")
                        best_c, cpu_c = min(best_c, dt), immd.cpu() - c0
            if cnt_i != cnt_c:
                raise RuntimeError(f"immctl listed {cnt_i} images, curl {cnt_c}")
            res.update(list_immctl_s=best_i, list_curl_s=best_c, listed=cnt_i,
                       list_cpu_immctl=cpu_i, list_cpu_curl=cpu_c)
            log(f"listing done ({cnt_i:,} images in {len(queries)} pages)")

            # (c) verify
            sigs = signatures(immd)
            best_v = best_f = float("inf")
            res["load_verify"] = loadavg()
            for r in range(args.verify_repeat):
                order = ("immctl", "floor") if r % 2 == 0 else ("floor", "immctl")
                for side in order:
                    if side == "immctl":
                        c0 = immd.cpu()
                        dt, checked = verify_immctl(immd)
                        best_v, res["verify_cpu"] = min(best_v, dt), immd.cpu() - c0
                    else:
                        best_f = min(best_f, verify_floor(sigs))
            if checked != len(sigs):
                raise RuntimeError(f"immd checked {checked} rows, the floor {len(sigs)} signatures")
            res.update(verify_s=best_v, verify_floor_s=best_f, checked=checked)
            res["load_end"] = loadavg()
            log("verify done")

    # -- table --
    print(f"imm catalog benchmark: N={n:,} images registered through immd's API "
          f"({args.connections} keep-alive connection(s)); python {sys.version.split()[0]}, "
          f"sqlite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs")
    print(f"load average (1/5/15 min): at register start {res['load_register']}, register end "
          f"{res['load_register_end']}, listing {res.get('load_list', '-')}, verify "
          f"{res.get('load_verify', '-')}, end {res['load_end']}")
    print()
    head = f"{'':40} {'imm':>14}   {'peer':<44} {'peer':>14} {'imm/peer':>9}"
    print(head)
    print("-" * len(head))

    def line(label: str, imm_fig: str, peer: str, peer_fig: str, ratio: float) -> None:
        print(f"{label:40} {imm_fig:>14}   {peer:<44} {peer_fig:>14} {ratio:>8.3g}x")

    reg = n / res["register_s"]
    fl = res["floor_rows"]
    line(f"(a) register {n:,} (images/s)", rate(n, res["register_s"]),
         "bare INSERTs, one transaction (sqlite3)", rate(fl, res["floor_s"]),
         reg / (fl / res["floor_s"]))
    line("", "", "bare INSERTs, a transaction per row", rate(fl, res["floor_commit_s"]),
         reg / (fl / res["floor_commit_s"]))
    peer_rate = n / res["peer_s"]
    line("", "", f"sha256+DSSE Ed25519 sign+INSERT, commit/{args.commit_every}",
         rate(n, res["peer_s"]), reg / peer_rate)
    peer_text = (f"sha256 + Ed25519 DSSE sign + SQLite INSERT, commit per {args.commit_every}: "
                 f"{rate(n, res['peer_s'])}")
    rows = [report.row(f"register {n:,} images, one per request ({args.connections} connections)",
                       rate(n, res["register_s"]), peer_text, reg / peer_rate)]
    if args.batch:
        breg = n / res["batch_s"]
        line(f"    batches of {args.batch} (images/s)", rate(n, res["batch_s"]),
             f"sha256+DSSE Ed25519 sign+INSERT, commit/{args.commit_every}",
             rate(n, res["peer_s"]), breg / peer_rate)
        rows.append(report.row(f"register {n:,} images, {args.batch} per request "
                               f"({args.connections} connections)", rate(n, res["batch_s"]),
                               peer_text, breg / peer_rate, ">= 0.25x", breg / peer_rate >= 0.25))
    report.write(args.json, "python bench/bench_catalog.py", rows)
    if args.sample:
        s = args.sample
        line(f"    sample {s:,}, 1 conn: Client", rate(s, res["sample_client_s"]),
             "curl -K, 1 keep-alive conn, same sample size", rate(s, res["sample_curl_s"]),
             res["sample_curl_s"] / res["sample_client_s"])
    if args.skip_list_verify:
        return 0
    listed = res["listed"]
    line(f"(b) list {listed:,} (s, lower=better)", f"{res['list_immctl_s']:.2f} s",
         f"curl, same {res['pages']} pages of {PAGE}, 1 conn", f"{res['list_curl_s']:.2f} s",
         res["list_immctl_s"] / res["list_curl_s"])
    line("    as rows/s", rate(listed, res["list_immctl_s"]), "", rate(listed, res["list_curl_s"]),
         res["list_curl_s"] / res["list_immctl_s"])
    chk = res["checked"]
    line(f"(c) verify --all, {chk:,} rows (rows/s)", rate(chk, res["verify_s"]),
         "Ed25519 verify loop (cryptography)", rate(chk, res["verify_floor_s"]),
         res["verify_floor_s"] / res["verify_s"])
    print()
    print("imm/peer: for rates, imm's rate over the peer's (below 1 = imm slower); for the listing "
          "in seconds, imm's time over curl's (above 1 = imm slower).")
    if args.sample:
        print(f"The catalog listed and verified holds the N images, the {2 * args.sample:,} of the "
              "client/curl sample and (verify) the genesis key record.")
    print(f"register: {res['register_s']:.1f} s wall; immd used {res['register_cpu']:.1f} CPU s "
          f"({res['register_cpu'] / n * 1e3:.2f} ms per image). Floor: {fl:,} rows in "
          f"{res['floor_s']:.2f} s (one txn), {res['floor_commit_s']:.2f} s (txn per row).")
    print(f"list: immd used {res['list_cpu_immctl']:.2f} CPU s serving immctl's pages, "
          f"{res['list_cpu_curl']:.2f} CPU s serving curl's (last run of each); "
          f"best of {args.repeat}")
    print(f"verify: {res['verify_s']:.1f} s wall (immd {res['verify_cpu']:.1f} CPU s), floor "
          f"{res['verify_floor_s']:.1f} s; best of {args.verify_repeat}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
