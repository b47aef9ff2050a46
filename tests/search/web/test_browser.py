"""A real browser against a real `slimtune serve`: headless Debian chromium driven by
Playwright opens the study page, finds one Pareto marker per front point, clicks one and lands
on that trial's page. Screenshots of both pages are kept as test artifacts
($SLIMTUNE_TEST_ARTIFACTS, default test-artifacts/)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from tests.search.conftest import Served

sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (the test extra)")
pytest.importorskip("fastapi", reason="the service needs the 'serve' extra")

CHROMIUM = "/usr/bin/chromium"  # Debian's package; `playwright install` cannot download here
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]
ARTIFACTS = Path(os.environ.get("SLIMTUNE_TEST_ARTIFACTS", Path(__file__).resolve().parents[3] / "test-artifacts"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(served_study: Served, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "slimtune.search.cli", "serve", "--storage", served_study.url, "--port", str(port),
             "--export-root", str(tmp_path_factory.mktemp("exports"))],
            stdout=output, stderr=subprocess.STDOUT, env={**os.environ, "SLIMTUNE_API_TOKEN": "browser-test"},
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/studies", timeout=2).read()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"slimtune serve did not answer: {log.read_text()}")
            time.sleep(0.3)
    yield base
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: `apt-get install chromium` (.ci/run installs it)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def test_click_a_pareto_point_to_open_its_trial(server: str, browser, served_study: Served) -> None:
    front = [row["trial"] for row in json.load(urllib.request.urlopen(f"{server}/api/studies/{served_study.name}/pareto"))]
    assert front, "the served study has a feasible front"
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{server}/studies/{served_study.name}")
    page.wait_for_selector("#front2d[data-rendered=true]", timeout=30_000)
    page.wait_for_selector("#importances .main-svg", timeout=60_000)  # fetched after load

    traces = page.evaluate("document.getElementById('front2d')._fullData.map(t => [t.name, t.uid])")
    index, uid = next((i, uid) for i, (name, uid) in enumerate(traces) if name.startswith("feasible Pareto front"))
    markers = page.locator(f"#front2d .scatterlayer .trace{uid} path.point")  # plotly tags a trace's group by uid
    assert markers.count() == len(front)  # one marker per front point
    drawn = page.evaluate(f"Array.from(document.getElementById('front2d')._fullData[{index}].customdata, c => c[0])")
    assert sorted(drawn) == sorted(front)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / "study-page.png", full_page=True)

    # the point farthest from the others, so the click cannot land on a neighbour
    boxes = [markers.nth(i).bounding_box() for i in range(markers.count())]
    centres = [(b["x"] + b["width"] / 2, b["y"] + b["height"] / 2) for b in boxes]
    def isolation(i: int) -> float:
        return min([((centres[i][0] - x) ** 2 + (centres[i][1] - y) ** 2) for j, (x, y) in enumerate(centres) if j != i],
                   default=1e9)
    x, y = centres[max(range(len(centres)), key=isolation)]
    page.mouse.move(x, y)
    page.wait_for_timeout(300)  # plotly picks the point on hover, the click then opens it
    page.mouse.click(x, y)
    page.wait_for_url(re.compile(rf"/studies/{served_study.name}/trials/\d+$"), timeout=15_000)
    number = int(page.url.rsplit("/", 1)[1])
    assert number in front
    assert page.locator("h1").inner_text() == f"Trial {number}"
    assert page.locator("text=on the feasible front").count() == 1
    page.screenshot(path=ARTIFACTS / "trial-page.png", full_page=True)
    assert errors == []
