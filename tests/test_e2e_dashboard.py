"""The dashboard in a real headless Chromium (Debian's chromium + chromedriver, driven by
selenium) against a real immd with the local provider and haproxy: login through a link minted
by ``immctl dashboard``, a reused link and a missing cookie refused, every page rendered (with
a screenshot in the test's tmp dir), an admin aborting a rollout from its page, and no request
to any host but the dashboard's own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from backends import free_port
from harness import Immd, have
from test_e2e_rollout import BASE, service

REPO = Path(__file__).resolve().parent.parent

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


def test_dashboard_in_chromium(tmp_path: Path, browser: object) -> None:
    from selenium.webdriver.common.by import By

    drv = browser
    images = tmp_path / "images"
    subprocess.run([sys.executable, str(REPO / "examples" / "bake.py"), str(images), "--all"],
                   check=True, capture_output=True)
    port = free_port()
    cfg = (BASE + service("slow", free_port(), count=1, bake_time_s=120)
           + f'\n[dashboard]\nlisten = "127.0.0.1:{port}"\n')
    d = Immd(tmp_path, cfg).start()  # a short path: haproxy's stats socket lives under it
    shots = tmp_path / "screenshots"
    shots.mkdir()
    me = d.json("status")["peer"]
    actor = f"{me['user']} (uid {me['uid']})"
    d.run("image", "add", str(images / "v1"), "--name", "web", "--version", "v1")
    rid = d.json("rollout", "start", "slow", "--image", "web@v1")["id"]

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

    # every page renders; the fleet shows the instance by name@version once it is up
    deadline = time.monotonic() + 20
    while True:
        drv.get(f"{base}/ui/fleet")  # type: ignore[attr-defined]
        if "web@v1" in drv.find_element(By.TAG_NAME, "main").text:  # type: ignore[attr-defined]
            break
        assert time.monotonic() < deadline, drv.page_source  # type: ignore[attr-defined]
        time.sleep(0.5)
    for name, path, expect in [
        ("fleet", "/ui/fleet", "slow"), ("rollouts", "/ui/rollouts", rid),
        ("rollout", f"/ui/rollouts/{rid}", actor), ("catalog", "/ui/catalog", "web@v1"),
        ("proof", "/ui/proof", "imm.local/ledger"),
    ]:
        drv.get(base + path)  # type: ignore[attr-defined]
        assert expect in drv.find_element(By.TAG_NAME, "main").text, name  # type: ignore
        drv.save_screenshot(str(shots / f"{name}.png"))  # type: ignore[attr-defined]
    drv.get(f"{base}/ui/rollouts/nope")  # type: ignore[attr-defined]
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
    drv.get(f"{base}/ui/rollouts/{rid}")  # type: ignore[attr-defined]
    assert drv.find_element(By.ID, "state").text == "rolled-back"  # type: ignore[attr-defined]
    assert not drv.find_element(By.ID, "abort").is_enabled()  # type: ignore[attr-defined]
    drv.save_screenshot(str(shots / "rollout-aborted.png"))  # type: ignore[attr-defined]

    # the link was spent: used again (without the cookie) it is refused and opens nothing
    drv.delete_all_cookies()  # type: ignore[attr-defined]
    drv.get(link)  # type: ignore[attr-defined]
    err = drv.find_element(By.ID, "error").text  # type: ignore[attr-defined]
    assert err.startswith("403"), err
    assert drv.get_cookie("imm_dash") is None  # type: ignore[attr-defined]
    drv.get(f"{base}/ui/catalog")  # type: ignore[attr-defined]
    assert drv.find_element(By.ID, "error").text.startswith("401")  # type: ignore[attr-defined]

    # nothing was fetched from anywhere but the dashboard
    urls = requested_urls(drv)
    assert any(u.endswith("/ui/static/dash.css") for u in urls)
    others = [u for u in urls if urlsplit(u).netloc != f"127.0.0.1:{port}"]
    assert others == []
    for png in ("fleet", "rollouts", "rollout", "catalog", "proof", "rollout-aborted"):
        assert (shots / f"{png}.png").stat().st_size > 1000
    d.stop()
