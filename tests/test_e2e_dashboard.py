"""The dashboard in a real headless Chromium (Debian's chromium + chromedriver, driven by
selenium) against a real immd with the local provider and haproxy: login through a link minted
by ``immctl dashboard``, a reused link and a missing cookie refused, every page rendered (with
a screenshot in the test's tmp dir), an admin aborting a rollout from its page, and no request
to any host but the dashboard's own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from backends import free_port
from harness import Immd, have
from test_e2e_rollout import BASE, service

REPO = Path(__file__).resolve().parent.parent
NOBODY = 65534

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (have("chromium") and have("chromedriver") and have("haproxy")),
                       reason="needs Debian's chromium, chromium-driver and haproxy"),
]


@pytest.fixture
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must not look anything up online
    o = webdriver.ChromeOptions()
    o.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
              "--window-size=1280,900"):
        o.add_argument(a)
    o.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    drv = webdriver.Chrome(options=o, service=Service("/usr/bin/chromedriver"))
    drv.set_page_load_timeout(20)
    try:
        yield drv
    finally:
        drv.quit()


def requested_urls(drv: object) -> list[str]:
    out = []
    for e in drv.get_log("performance"):  # type: ignore[attr-defined]
        m = json.loads(e["message"])["message"]
        if m["method"] == "Network.requestWillBeSent":
            out.append(m["params"]["request"]["url"])
    return out


AXE_JS = "axe_selenium_python/node_modules/axe-core/axe.min.js"  # axe-core, from its package
OBSERVE = """
const live = document.getElementById('live');
window.__seen = [document.getElementById('points').textContent];
window.__mark = 'not reloaded';
new MutationObserver(() => {
  const p = document.getElementById('points');
  window.__seen.push(p ? p.textContent : '?');
}).observe(live, {childList: true});
"""


def axe_violations(drv: object, source: str) -> list[dict[str, object]]:
    """axe-core's serious and critical violations on the page now (injected by the test
    through WebDriver, which the page's CSP does not govern; the page ships no such script)."""
    drv.execute_script(source)  # type: ignore[attr-defined]
    found = drv.execute_async_script(  # type: ignore[attr-defined]
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']}, (err, r) => done(err ? "
        "[{id: 'axe-error', impact: 'critical', help: String(err)}] : r.violations.map("
        "v => ({id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.length}))));")
    return [v for v in found if v["impact"] in ("serious", "critical")]


def test_dashboard_in_chromium(tmp_path: Path, browser: object) -> None:
    import importlib.util

    from selenium.webdriver.common.by import By

    drv = browser
    spec = importlib.util.find_spec("axe_selenium_python")
    assert spec is not None and spec.origin is not None
    axe_js = (Path(spec.origin).parent.parent / AXE_JS).read_text()
    images = tmp_path / "images"
    subprocess.run([sys.executable, str(REPO / "examples" / "bake.py"), str(images), "--all"],
                   check=True, capture_output=True)
    port = free_port()
    # the socket is reachable by 'nobody' through its group: a reader's login link
    rundir = Path(tempfile.mkdtemp(prefix="imm-dash-sock-"))
    os.chmod(rundir, 0o755)
    cfg = ('[daemon]\nsocket_group = "nogroup"\nadmin_group = "imm-admin-test-absent"\n\n'
           + BASE + service("slow", free_port(), count=1, bake_time_s=120)
           + service("can", free_port(), count=2, strategy="canary", canary_pause_s=1)
           + f'\n[dashboard]\nlisten = "127.0.0.1:{port}"\n')
    d = Immd(tmp_path, cfg)  # a short path: haproxy's stats socket lives under it
    d.sock = rundir / "immd.sock"
    d.start()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    me = d.json("status")["peer"]
    actor = f"{me['user']} (uid {me['uid']})"
    d.run("image", "add", str(images / "v1"), "--name", "web", "--version", "v1")

    def main_text() -> str:
        return str(drv.find_element(By.TAG_NAME, "main").text)  # type: ignore[attr-defined]

    def text(id_: str) -> str | None:
        """An element's text, read in one step (the live part may be replaced at any time)."""
        return drv.execute_script(  # type: ignore[attr-defined, no-any-return]
            "const e = document.getElementById(arguments[0]);"
            "return e ? e.textContent.trim() : null;", id_)

    def wait_until(cond: object, what: str, limit_s: float = 30) -> None:
        deadline = time.monotonic() + limit_s
        while not cond():  # type: ignore[operator]
            assert time.monotonic() < deadline, (what, main_text())
            time.sleep(0.1)

    # no cookie, no page
    base = f"http://127.0.0.1:{port}"
    drv.get(f"{base}/ui/fleet")  # type: ignore[attr-defined]
    assert drv.find_element(By.ID, "error").text.startswith("401")  # type: ignore[attr-defined]

    link = d.run("dashboard").stdout.strip()
    assert link.startswith(f"{base}/ui/login?t="), link
    drv.get(link)  # type: ignore[attr-defined]
    assert urlsplit(drv.current_url).path == "/ui/fleet"  # type: ignore[attr-defined]
    assert drv.find_element(By.ID, "role").text == "admin"  # type: ignore[attr-defined]
    cookie = drv.get_cookie("imm_dash")  # type: ignore[attr-defined]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["expiry"] > time.time()

    # a canary started by the test, watched live: the page is never reloaded, each step's
    # event replaces its live part, and the traffic chart has one more point per finished step
    can = d.json("rollout", "start", "can", "--image", "web@v1")["id"]
    drv.get(f"{base}/ui/rollouts/{can}")  # type: ignore[attr-defined]
    drv.execute_script(OBSERVE)  # type: ignore[attr-defined]
    wait_until(lambda: text("state") == "completed", "the canary's page shows it completed", 60)
    assert drv.execute_script("return window.__mark") == "not reloaded"  # type: ignore
    seen = [int(p) for p in drv.execute_script("return window.__seen")]  # type: ignore
    status = d.json("rollout", "status", can)
    done = [j for j in status["journal"] if j["action"] == "done"]
    shifts = [s for s in status["plan"] if s["op"] == "shift"]
    assert seen[-1] == 1 + len(done)  # the start, then one point per finished step
    assert seen == sorted(seen) and len(set(seen)) >= len(shifts), seen
    assert drv.execute_script(  # type: ignore[attr-defined]
        "return document.querySelectorAll('#traffic circle.pt').length") == 1 + len(done)
    updates = drv.execute_script(  # type: ignore[attr-defined]
        "return Number(document.getElementById('live').dataset.updates)")
    assert updates >= len(set(seen)) - 1
    drv.save_screenshot(str(shots / "rollout-live.png"))  # type: ignore[attr-defined]

    rid = d.json("rollout", "start", "slow", "--image", "web@v1")["id"]
    # every page renders; the fleet shows the instance by name@version once it is up
    deadline = time.monotonic() + 20
    while True:
        drv.get(f"{base}/ui/fleet")  # type: ignore[attr-defined]
        if main_text().count("web@v1") >= 3:  # the canary's two and slow's one
            break
        assert time.monotonic() < deadline, drv.page_source  # type: ignore[attr-defined]
        time.sleep(0.5)
    pages = [("fleet", "/ui/fleet", "slow"), ("rollouts", "/ui/rollouts", rid),
             ("rollout", f"/ui/rollouts/{rid}", actor), ("catalog", "/ui/catalog", "web@v1"),
             ("proof", "/ui/proof", "imm.local/ledger"), ("image", "/ui/images/web@v1", "Lineage"),
             ("compliance", "/ui/compliance", "Blast radius"),
             ("error", "/ui/rollouts/nope", "404")]
    for name, path, expect in pages:
        drv.get(base + path)  # type: ignore[attr-defined]
        assert expect in main_text(), name
        drv.save_screenshot(str(shots / f"{name}.png"))  # type: ignore[attr-defined]
        assert axe_violations(drv, axe_js) == [], name
    assert drv.find_element(By.ID, "error").text.startswith("404")  # type: ignore[attr-defined]

    # the admin aborts from the rollout page; the journal names the admin, as from immctl
    drv.get(f"{base}/ui/rollouts/{rid}")  # type: ignore[attr-defined]
    drv.find_element(By.ID, "abort").click()  # type: ignore[attr-defined]
    assert urlsplit(drv.current_url).path == f"/ui/rollouts/{rid}"  # type: ignore[attr-defined]
    deadline = time.monotonic() + 30
    while d.json("rollout", "status", rid)["state"] != "rolled-back":
        assert time.monotonic() < deadline, d.json("rollout", "status", rid)
        time.sleep(0.3)
    aborts = [j for j in d.json("rollout", "status", rid)["journal"] if j["action"] == "abort"]
    assert [j["actor"] for j in aborts] == [actor]
    # the page followed by itself (no reload): rolled back, no action left enabled
    wait_until(lambda: text("state") == "rolled-back", "the rollout page shows the rollback")
    assert drv.execute_script(  # type: ignore[attr-defined]
        "return ['pause', 'resume', 'promote', 'abort'].every("
        "v => document.getElementById(v).disabled)")
    drv.save_screenshot(str(shots / "rollout-aborted.png"))  # type: ignore[attr-defined]

    # the proof page: the browser checks the abort's leaf itself; a flipped byte is caught
    drv.get(f"{base}/ui/proof?index={aborts[0]['ledger_index']}")  # type: ignore[attr-defined]
    wait_until(lambda: text("verdict") == "valid", "the proof verifies in the browser")
    said = drv.find_element(By.ID, "statement").text  # type: ignore[attr-defined]
    assert '"action": "abort"' in said and f'"actor": "{actor}"' in said, said
    drv.save_screenshot(str(shots / "proof-valid.png"))  # type: ignore[attr-defined]
    drv.execute_script(  # type: ignore[attr-defined]
        "const li = document.querySelector('#path li');"
        "const h = li.textContent.trim();"
        "li.textContent = (h[0] === '0' ? '1' : '0') + h.slice(1);")
    drv.find_element(By.ID, "verify").click()  # type: ignore[attr-defined]
    wait_until(lambda: text("verdict") == "invalid", "the flipped proof is refused")
    assert "not to the signed root" in drv.find_element(By.ID, "checks").text  # type: ignore
    drv.save_screenshot(str(shots / "proof-invalid.png"))  # type: ignore[attr-defined]

    # the keyboard: the first Tab reaches the skip link, which moves focus to the content
    from selenium.webdriver.common.keys import Keys

    drv.get(f"{base}/ui/fleet")  # type: ignore[attr-defined]
    drv.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)  # type: ignore[attr-defined]
    assert drv.execute_script(  # type: ignore[attr-defined]
        "return document.activeElement.className") == "skip"
    drv.switch_to.active_element.send_keys(Keys.ENTER)  # type: ignore[attr-defined]
    assert drv.execute_script("return document.activeElement.id") == "main"  # type: ignore

    # phone width: every page fits 390 px without scrolling sideways
    drv.set_window_size(390, 844)  # type: ignore[attr-defined]
    for name, path, _ in pages:
        drv.get(base + path)  # type: ignore[attr-defined]
        wide = drv.execute_script(  # type: ignore[attr-defined]
            "return [document.documentElement.scrollWidth, window.innerWidth]")
        assert wide[0] <= wide[1], (name, wide)
        drv.save_screenshot(str(shots / f"phone-{name}.png"))  # type: ignore[attr-defined]
    drv.set_window_size(1280, 900)  # type: ignore[attr-defined]

    # a reader: every action disabled; forced through anyway, refused, and nothing happens
    again = d.json("rollout", "start", "slow", "--image", "web@v1")["id"]
    drv.delete_all_cookies()  # type: ignore[attr-defined]
    reader_link = d.run("dashboard", user=NOBODY, group=NOBODY).stdout.strip()
    drv.get(reader_link)  # type: ignore[attr-defined]
    assert text("role") == "reader"
    drv.get(f"{base}/ui/rollouts/{again}")  # type: ignore[attr-defined]
    assert drv.execute_script(  # type: ignore[attr-defined]
        "return ['pause', 'promote', 'abort'].map(v => document.getElementById(v).disabled)"
    ) == [True, True, True]
    drv.execute_script(  # type: ignore[attr-defined]
        "const b = document.getElementById('abort'); b.disabled = false; b.click();")
    wait_until(lambda: text("error") is not None, "the refusal page")
    assert (text("error") or "").startswith("403") and "may only read" in main_text()
    st = d.json("rollout", "status", again)
    assert st["state"] == "running" and not [j for j in st["journal"] if j["action"] == "abort"]
    drv.save_screenshot(str(shots / "reader-refused.png"))  # type: ignore[attr-defined]
    d.run("rollout", "abort", again)

    # the link was spent: used again (without the cookie) it is refused and opens nothing
    drv.delete_all_cookies()  # type: ignore[attr-defined]
    drv.get(link)  # type: ignore[attr-defined]
    err = drv.find_element(By.ID, "error").text  # type: ignore[attr-defined]
    assert err.startswith("403"), err
    assert drv.get_cookie("imm_dash") is None  # type: ignore[attr-defined]
    drv.get(f"{base}/ui/catalog")  # type: ignore[attr-defined]
    assert drv.find_element(By.ID, "error").text.startswith("401")  # type: ignore[attr-defined]

    # nothing was fetched from anywhere but the dashboard (the live stream and scripts too)
    urls = requested_urls(drv)
    for own in ("/ui/static/dash.css", "/ui/static/live.js", "/ui/static/proof.js",
                f"/ui/rollouts/{can}/events"):
        assert any(urlsplit(u).path == own for u in urls), own
    others = [u for u in urls if urlsplit(u).netloc != f"127.0.0.1:{port}"]
    assert others == []
    for png in ("rollout-live", "fleet", "rollouts", "rollout", "catalog", "proof", "error",
                "image", "compliance", "phone-compliance",
                "rollout-aborted", "proof-valid", "proof-invalid", "phone-fleet", "phone-proof",
                "reader-refused"):
        assert (shots / f"{png}.png").stat().st_size > 1000, png
    d.stop()
    shutil.rmtree(rundir, ignore_errors=True)
