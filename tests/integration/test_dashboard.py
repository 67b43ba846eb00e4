"""What an operator sees on a running devnet: the dashboard in a real browser, /metrics, /health, and
the event lines on a node's terminal. One devnet (`pol devnet --keep`) serves all three checks.

The browser is Debian's headless Chromium driven by selenium through Debian's chromedriver; the
screenshot is kept under the test's tmp path (printed at the end) as the artifact.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("dash")
    err = open(base / "devnet.stderr", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pol.cli", "devnet", "--verifiers", "3", "--provers", "2", "--cheaters", "1",
         "--steps", "20", "--keep", "--json", "--gossip-ledger", "--dir", str(base / "net"), "--timeout", "240"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)
    try:
        text, report = "", None
        assert proc.stdout is not None
        for line in proc.stdout:  # the report is one JSON document; the process then keeps the nodes up
            text += line
            if line.rstrip() == "}":
                report = json.loads(text)
                break
        assert report is not None, (base / "devnet.stderr").read_text()[-3000:]
        ports = {n: tomllib.loads((base / "net" / f"{n}.toml").read_text())["http_port"] for n in ("v0", "p1")}
        yield {"dir": base / "net", "report": report, "url": f"http://127.0.0.1:{ports['v0']}",
               "prover_url": f"http://127.0.0.1:{ports['p1']}", "base": base}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # the devnet stops its nodes on Ctrl-C
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        err.close()


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


def test_devnet_settled(devnet: dict[str, Any]) -> None:
    rows = {r["prover"]: r for r in devnet["report"]["claims"]}
    assert rows["p0"]["status"] == "paid" and rows["p1"]["status"] == "slashed"


def test_metrics_and_health(devnet: dict[str, Any]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    status, body, ctype = _get(devnet["url"] + "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    samples = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert samples[("pol_claims", (("status", "paid"),))] == 1
    assert samples[("pol_claims", (("status", "slashed"),))] == 1
    accepted = sum(v for (n, labels), v in samples.items() if n == "pol_messages_total" and ("result", "accept") in labels)
    assert accepted >= 4  # two postings/claims at least, votes and certificates
    certs = {dict(labels)["verdict"]: v for (n, labels), v in samples.items() if n == "pol_certificates_total"}
    assert certs.get("accept", 0) >= 1 and certs.get("upheld", 0) >= 1
    assert samples[("pol_replay_seconds_count", ())] >= 1
    assert samples[("pol_peers", ())] >= 1 and samples[("pol_stake", ())] == 1000
    assert samples[("pol_fetch_bytes_total", ())] > 0
    status, body, _ = _get(devnet["url"] + "/health")
    doc = json.loads(body)
    assert status == 200 and doc["ready"] is True and doc["live"] is True
    # The cheater's own node reports its loss from its point of view.
    status, body, _ = _get(devnet["prover_url"] + "/overview")
    assert json.loads(body)["balance"] == 10_000 - 1000


def test_event_lines_on_the_terminal(devnet: dict[str, Any]) -> None:
    wanted = ("node up: verifier #0 v0, peer id", "claim seen", "vote cast: accept", "certificate formed",
              "escrow released: 100 paid to p0", "stake slashed: prover p1 (cheater)")
    # The devnet reports once any node sees the payout; v0's own tick may release the escrow a little later.
    deadline = time.monotonic() + 60
    while True:
        text = (devnet["dir"] / "v0" / "stderr.log").read_text()
        missing = [w for w in wanted if w not in text]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not missing, f"{missing!r} missing from the terminal:\n{text[-3000:]}"
    assert "Traceback" not in text


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="needs Debian's chromium and chromium-driver (make installs them with apt-get)")
def test_dashboard_in_headless_chromium(devnet: dict[str, Any]) -> None:
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the dev extra)")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1300,1100",
                 f"--user-data-dir={devnet['base'] / 'chromium-profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    try:
        driver.set_page_load_timeout(60)
        driver.get(devnet["url"] + "/")
        deadline, claims = time.monotonic() + 60, ""
        while time.monotonic() < deadline:
            claims = driver.find_element(By.ID, "claims").text
            if "paid" in claims and "slashed" in claims:
                break
            time.sleep(0.5)
        shot = devnet["base"] / "dashboard.png"
        driver.save_screenshot(str(shot))
        print(f"dashboard screenshot: {shot}")
        rows = {r.find_elements(By.TAG_NAME, "td")[1].text: r.text
                for r in driver.find_elements(By.CSS_SELECTOR, "#claims tbody tr")}
        assert "paid" in rows["p0"], claims
        assert "slashed" in rows["p1 (cheater)"] and "upheld" in rows["p1 (cheater)"], claims
        ledger = driver.find_element(By.ID, "ledger").text
        assert "requester" in ledger and "v0" in ledger and "p1 (cheater)" in ledger
        assert "v0 (verifier #0)" in driver.find_element(By.ID, "who").text
        assert driver.find_element(By.ID, "error").text == ""
        assert shot.stat().st_size > 10_000
    finally:
        driver.quit()
