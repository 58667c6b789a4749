"""Open the HTML report in headless Chromium (DevTools protocol) and check what a reader would see.

Loads without console errors or exceptions and without any network request, the Findings table comes first,
every table and every plot renders (visible tables have rows and size, images decode to a non-zero size), the
bar charts show each training seed as a point, a 1280 px wide window has no horizontal page overflow (wide tables
scroll inside their box), and the caption containing ``<script>`` shows as text instead of running.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from report_fixtures import SCRIPT_CAPTION, write_grid

from mmbench_cli.report import findings as findings_module
from mmbench_cli.report import load
from mmbench_cli.report import tables as tables_module
from mmbench_cli.report.build import make_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-extensions", "--remote-debugging-port=0",
]

INSPECT = """JSON.stringify({
  title: document.title,
  tables: [...document.querySelectorAll('table')].map(t => ({
    id: t.id, rows: t.tBodies.length ? t.tBodies[0].rows.length : 0, visible: t.checkVisibility(),
    width: t.getBoundingClientRect().width, height: t.getBoundingClientRect().height})),
  images: [...document.images].map(i => ({
    alt: i.alt, complete: i.complete, naturalWidth: i.naturalWidth, width: i.getBoundingClientRect().width,
    svg: decodeURIComponent(i.src.slice(i.src.indexOf(',') + 1))})),
  scripts: document.scripts.length,
  predictions: [...document.querySelectorAll('td.prediction')].map(td => td.textContent),
  bold: [...document.querySelectorAll('#table-summary td.best')].length,
  effectBold: [...document.querySelectorAll('#table-effect-resolution td.best')].length,
  pageHeight: document.documentElement.scrollHeight,
  firstSection: (document.querySelector('body > section') || {}).id,
  viewport: window.innerWidth,
  pageWidth: document.documentElement.scrollWidth,
  verdicts: [...document.querySelectorAll('table.findings td[class*="v-"]')].map(td => td.className),
})"""


async def _inspect(url: str, profile: Path, timeout: float = 60.0, width: int = 1280) -> dict[str, Any]:
    import aiohttp

    process = subprocess.Popen(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("chromium did not open its DevTools port")
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                targets = await response.json()
            page = next(t for t in targets if t.get("type") == "page")
            async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                ids = iter(range(1, 10_000))
                events: list[dict[str, Any]] = []

                async def call(method: str, **params: Any) -> dict[str, Any]:
                    ident = next(ids)
                    await ws.send_json({"id": ident, "method": method, "params": params})
                    while True:
                        message = await asyncio.wait_for(ws.receive_json(), timeout)
                        if message.get("id") == ident:
                            return message
                        events.append(message)

                for domain in ("Runtime", "Log", "Page", "Network"):
                    await call(f"{domain}.enable")
                await call("Emulation.setDeviceMetricsOverride", width=width, height=900, deviceScaleFactor=1,
                           mobile=False)
                await call("Page.navigate", url=url)
                while not any(e.get("method") == "Page.loadEventFired" for e in events):
                    events.append(await asyncio.wait_for(ws.receive_json(), timeout))
                await asyncio.sleep(0.5)  # let late console messages arrive
                result = await call("Runtime.evaluate", expression=INSPECT, returnByValue=True)
                while True:  # drain anything queued
                    try:
                        events.append(await asyncio.wait_for(ws.receive_json(), 0.2))
                    except asyncio.TimeoutError:
                        break
        return {"dom": json.loads(result["result"]["result"]["value"]), "events": events}
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def _problems(events: list[dict[str, Any]]) -> list[str]:
    problems = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning", "assert"):
            problems.append(f"console {params['type']}: {params.get('args')}")
        elif method == "Runtime.exceptionThrown":
            problems.append(f"exception: {params.get('exceptionDetails', {}).get('text')}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") in ("error", "warning"):
            problems.append(f"log: {params['entry'].get('text')}")
        elif method == "Network.requestWillBeSent":
            url = params.get("request", {}).get("url", "")
            if not url.startswith(("file://", "data:")):
                problems.append(f"network request: {url}")
    return problems


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian `chromium` (apt-get install -y chromium; .ci/run installs it)")
def test_report_renders_in_chromium(tmp_path: Path) -> None:
    grid = write_grid(tmp_path / "runs" / "toygrid")
    out = tmp_path / "reports" / "toygrid"
    baseline = tmp_path / "baseline.json"
    make_report([grid], out, save_baseline=baseline, resamples=200)
    data = json.loads(baseline.read_text())
    data["metrics"]["resolution=32,seed=0/synthetic-caption/0shot"]["value"] += 0.5  # so the regression table shows
    baseline.write_text(json.dumps(data))
    result = make_report([grid], out, baseline=baseline, resamples=200)
    assert len(result.regressions) == 1

    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    seen = asyncio.run(_inspect((out / "index.html").resolve().as_uri(), profile))
    dom, problems = seen["dom"], _problems(seen["events"])
    assert problems == []
    assert dom["title"] == "mm report: toygrid · mm report"  # the <script> caption did not set it
    assert dom["scripts"] == 0

    assert dom["firstSection"] == "summary-of-findings" and dom["tables"][0]["id"] == "table-findings-toygrid"
    # resolution 64 vs 32 on caption and VQA at 0/4/8 shots, TextCore, grounding; the 8- vs 0-shot gain of both
    assert len(dom["verdicts"]) == 8 + 2
    assert dom["viewport"] == 1280 and dom["pageWidth"] <= 1280  # no horizontal page overflow at 1280 px

    tables = {t["id"]: t for t in dom["tables"]}
    expected_rows = {"table-findings-toygrid": 10, "table-regressions": 4 * 7, "table-summary": 2,
                     "table-effect-resolution": 2, "table-tasks": 2,
                     "table-caption-grounding": 2,  # the <script> caption names a red circle, as its references do
                     "table-repeated": 1, "table-examples": 2 * 3 * 2, "table-metadata": 4}
    assert {k: tables[k]["rows"] for k in expected_rows} == expected_rows and len(tables) == len(expected_rows)
    assert all(t["width"] > 100 and t["height"] > 20 for t in tables.values() if t["visible"])
    assert not tables["table-metadata"]["visible"]  # run metadata is collapsed
    # one test everywhere: the per-cell summary bolds nothing; the effect table bolds what Findings calls an effect
    study = load.load_study([grid])
    assert dom["bold"] == 0
    effects = findings_module.effect_marks(findings_module.study_findings(study), study.grids[0]["label"])
    shown = tables_module.effect_tables(study, 200, effects)[0]
    assert dom["effectBold"] == int(shown.bold[shown.shown_columns].values.sum()) >= 1

    assert [i["alt"] for i in dom["images"]] == [
        "Bar chart: effect of resolution", "Caption grounding over training", "Training dynamics: synthetic-caption",
        "Training dynamics: synthetic-vqa", "Training dynamics: text-cloze", "Training loss per data type"]
    assert all(i["complete"] and i["naturalWidth"] > 200 and i["width"] > 200 for i in dom["images"]), [
        (i["alt"], i["complete"], i["naturalWidth"], i["width"]) for i in dom["images"]]
    bars = dom["images"][0]["svg"]
    assert "one training seed" in bars and bars.count("<use ") >= 4 * 8  # every seed of every cell, per bar

    assert SCRIPT_CAPTION in dom["predictions"]


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian `chromium`")
def test_console_errors_are_caught(tmp_path: Path) -> None:
    """The checker itself can fail: a page with a script error and an external request is reported."""
    page = tmp_path / "bad.html"
    page.write_text('<html><body><img src="http://127.0.0.1:9/x.png">'
                    '<script>console.error("boom"); nope();</script></body></html>')
    profile = tmp_path / "profile"
    profile.mkdir()
    problems = _problems(asyncio.run(_inspect(page.as_uri(), profile))["events"])
    assert any("boom" in p for p in problems) and any("exception" in p for p in problems)
    assert any("127.0.0.1:9" in p for p in problems)



STUDY_PAGE = Path(__file__).resolve().parents[1] / "reports" / "mm1-toy-v2" / "index.html"


@pytest.mark.skipif(CHROMIUM is None or not STUDY_PAGE.is_file(), reason="needs Debian `chromium` and the study")
def test_the_committed_study_page_is_short_at_1400_px(tmp_path: Path) -> None:
    """The second edition's page (five grids, every checkpoint plotted): at most 15,000 px tall at 1400 px, with
    its long sections folded, and 2 MB."""
    profile = tmp_path / "profile"
    profile.mkdir()
    seen = asyncio.run(_inspect(STUDY_PAGE.as_uri(), profile, width=1400))
    assert _problems(seen["events"]) == []
    assert seen["dom"]["pageHeight"] <= 15_000 and seen["dom"]["pageWidth"] <= 1400
    assert STUDY_PAGE.stat().st_size <= 2_000_000
