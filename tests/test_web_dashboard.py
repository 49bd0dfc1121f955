"""The dashboard in real headless Chromium (Debian ``chromium``, driven by Playwright's Python package).

A runaway job shows up as running, its elapsed time grows, and the kill button (asking for the admin token)
ends it; the restart button replaces an engine; the charts of the last minutes draw queue depth, running jobs,
tokens/s and interrupts as they happen, and a warm standby engine is shown. Screenshots go to tests/artifacts/
(not in git).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.live import LiveServer as Server
from support.live import job_status, serving
from support.waiting import eventually

pytestmark = [pytest.mark.real, pytest.mark.timeout(180)]
CHROMIUM = os.environ.get("LLMSUP_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).parent / "artifacts"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not shutil.which(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} not found: apt-get install -y chromium")
        pytest.skip(f"{CHROMIUM} not found (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The dashboard's browser tests drive a server in vLLM's open mode (no API key to type into the page)."""
    with serving(tmp_path_factory.mktemp("dashboard"), require_api_keys="off") as live:
        yield live


@pytest.fixture
def page(browser: object, server: Server) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server.url + "/dashboard")
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def elapsed(locator: object) -> float:
    value = locator.get_attribute("data-elapsed")
    return float(value) if value else -1.0


def test_runaway_job_shows_running_with_growing_elapsed_and_the_kill_button_ends_it(page, server: Server) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.wait_for_selector("#conn.live")
    page.wait_for_selector(".engine[data-engine-id]")
    with server.client() as c:
        job = c.post("/v1/jobs", json={"prompt": "runaway [sim:hang]", "deadline_s": 60}).json()
        row = page.locator(f'tr[data-job-id="{job["id"]}"]')
        row.and_(page.locator('[data-status="running"]')).wait_for(timeout=15_000)
        first = elapsed(row.locator(".elapsed"))
        page.wait_for_function(  # the elapsed time keeps growing while the job runs
            """([id, t]) => {
                const span = document.querySelector(`tr[data-job-id="${id}"] .elapsed`);
                return span && Number(span.dataset.elapsed) > t + 1.0;
            }""", arg=[job["id"], first], timeout=15_000)
        card = page.locator(".engine", has=page.locator(".engine-job", has_text=job["id"]))
        card.wait_for(timeout=10_000)
        assert card.get_attribute("data-state") == "busy"
        assert "/ 60.0 s" in card.inner_text()  # elapsed against the deadline
        assert elapsed(card.locator(".elapsed")) > 0.5
        page.screenshot(path=str(ARTIFACTS / "dashboard-runaway.png"), full_page=True)

        page.once("dialog", lambda dialog: dialog.accept("not-the-token"))
        row.locator("button.kill").click()
        page.wait_for_selector("#message:has-text('admin token rejected')")
        assert job_status(c, job["id"])["status"] == "running"

        page.once("dialog", lambda dialog: dialog.accept(server.admin_token))
        row.locator("button.kill").click()
        row.and_(page.locator('[data-status="cancelled"]')).wait_for(timeout=15_000)
        done = job_status(c, job["id"])
        assert done["status"] == "cancelled" and "killed by admin" in done["error"]
        assert row.locator("button.kill").count() == 0
        page.screenshot(path=str(ARTIFACTS / "dashboard-killed.png"), full_page=True)


def test_restart_button_replaces_the_engine(page, server: Server) -> None:
    page.wait_for_selector(".engine[data-engine-id]")
    with server.client() as c:
        old = c.get("/admin/engines", headers=server.admin).json()["engines"][0]
    page.evaluate("token => sessionStorage.setItem('llmsup_admin_token', token)", server.admin_token)
    page.locator(f'.engine[data-engine-id="{old["id"]}"] button.restart').click()
    page.locator(f'.engine[data-engine-id="{old["id"]}"]').wait_for(state="detached", timeout=30_000)

    def two_serving() -> bool:
        states = page.locator(".engine[data-engine-id]").evaluate_all("cards => cards.map(c => c.dataset.state)")
        return states.count("idle") + states.count("busy") == 2

    eventually(two_serving, 30, what="the replacement engine on the page")
    page.screenshot(path=str(ARTIFACTS / "dashboard-restarted.png"), full_page=True)


def test_hosts_show_with_their_engine_count(page, server: Server) -> None:
    card = page.locator('.host[data-state="up"]')
    card.wait_for(timeout=15_000)
    assert "(this server)" in card.inner_text() and card.locator(".host-engines").inner_text() == "2"


@pytest.fixture(scope="module")
def standby_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One serving engine and one warm standby."""
    with serving(tmp_path_factory.mktemp("standby"), engines=1, standby=1, require_api_keys="off") as live:
        yield live


def chart(page: object, key: str) -> dict[str, str]:
    return page.locator(f"#chart-{key}").evaluate("box => ({...box.dataset, points: box.querySelector('polyline')"
                                                   "?.getAttribute('points') || ''})")


def test_charts_of_the_last_minutes_render_and_move_and_the_standby_is_shown(browser, standby_server: Server) -> None:
    live = standby_server
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(live.url + "/dashboard")
        page.evaluate("token => sessionStorage.setItem('llmsup_admin_token', token)", live.admin_token)
        page.reload()
        page.wait_for_selector('.engine[data-state="standby"]')  # the warm standby, as a card of its own
        page.wait_for_function("Number(document.querySelector('#chart-running').dataset.count) >= 2")
        before = chart(page, "running")
        assert before["points"] and before["max"] == "0"
        assert "1 serving · 1 standby" in page.locator("#engine-counts").inner_text()
        with live.client() as c:
            c.post("/v1/jobs", json={"prompt": "slow words [sim:slow=0.02]", "max_tokens": 100, "deadline_s": 30})
            for prompt in ("queued one", "queued two"):  # behind the slow job on the one serving engine
                c.post("/v1/jobs", json={"prompt": prompt, "max_tokens": 4})
            hang = c.post("/v1/jobs", json={"prompt": "runaway [sim:hang]", "deadline_s": 1}).json()
            eventually(lambda: job_status(c, hang["id"])["status"] == "timed_out", 30, what="the runaway to time out")
            page.wait_for_function(
                """() => {
                    const d = (k) => document.querySelector('#chart-' + k).dataset;
                    return Number(d('queued').max) >= 1 && Number(d('running').max) >= 1
                        && Number(d('tokens_per_s').max) > 10 && Number(d('interrupted').sum) >= 1;
                }""", timeout=15_000)
            text = c.get("/metrics").text
        after = chart(page, "running")
        assert after["points"] != before["points"] and int(after["count"]) > int(before["count"])  # it moved
        assert float(after["firstX"]) <= float(before["firstX"])  # older samples slide left as time passes
        newest_x = float(after["points"].split()[-1].split(",")[0])
        assert newest_x > 270  # the newest sample is drawn at the right edge ("now"), of a 300-wide plot
        assert page.locator("#chart-interrupted rect").count() >= 1
        page.screenshot(path=str(ARTIFACTS / "dashboard-charts.png"), full_page=True)
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
    assert 'vllm:request_success_total{finished_reason="timeout",model_name="sim"} 1.0' in text
    assert 'vllm:e2e_request_latency_seconds_count{model_name="sim"} 4.0' in text
    rss = re.findall(r'^llmsup_engine_rss_bytes\{engine="\d+"\} (\S+)$', text, re.M)
    assert len(rss) == 2 and all(float(v) > 10 * 2**20 for v in rss)  # the serving engine and the standby
    assert "llmsup_engine_gpu_memory_bytes{" not in text  # engines on the CPU: no GPU memory series


def test_engines_are_grouped_by_pool(browser, tmp_path: Path) -> None:
    pools = "name=small,backend=sim,engines=1,served_model_name=m-small;name=big,backend=sim,engines=2"
    with serving(tmp_path, engines=3, pools=pools, require_api_keys="off") as live:
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            page.goto(live.url + "/dashboard")
            page.wait_for_function("document.querySelectorAll('.engine[data-engine-id]').length === 3")
            titles = page.locator(".pool-title").evaluate_all("ts => ts.map(t => [t.dataset.pool, t.innerText])")
            assert [t[0] for t in titles] == ["big", "small"] and "2 engines" in titles[0][1] \
                and "1 engine" in titles[1][1], titles
            order = page.locator("#engines > *").evaluate_all(
                "els => els.map(e => e.classList.contains('pool-title') ? 'title:' + e.dataset.pool : e.dataset.pool)")
            assert order == ["title:big", "big", "big", "title:small", "small"]  # each pool's cards under its title
        finally:
            context.close()
        assert not errors, f"JavaScript errors on the page: {errors}"
