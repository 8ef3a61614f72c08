"""The status page and /status.json: token states, traffic, nothing secret, strict headers, and
a real headless Chromium that renders it without console errors or CSP violations."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from proxy.testing import make_token
from tests.conftest import ACME_TOKEN, Proxy, ProxyFactory, Upstream, acme_route, require

ROOT = Path(__file__).resolve().parent.parent
DAY = 86400


def three_routes(upstream: Upstream) -> tuple[list[dict[str, Any]], dict[str, str]]:
    tokens = {
        "FINE": make_token("acme", ttl=30 * DAY, subject="fine"),
        "SOON": make_token("acme", ttl=2 * DAY, subject="soon"),
        "OLD": make_token("acme", issued_at=time.time() - 10 * DAY, ttl=DAY, subject="old"),
    }
    routes = [
        acme_route(upstream, prefix="/fine", token={"env": "FINE"}),
        acme_route(upstream, prefix="/soon", token={"env": "SOON"}),
        acme_route(upstream, prefix="/old", token={"env": "OLD"}),
    ]
    return routes, tokens


async def status(proxy: Proxy) -> dict[str, Any]:
    response = await proxy.admin.get("/status.json")
    assert response.status == 200
    body: dict[str, Any] = await response.json()
    return body


async def test_status_json_states_for_each_token_situation(
    make_proxy: ProxyFactory, upstream: Upstream, tmp_path: Path
) -> None:
    routes, tokens = three_routes(upstream)
    failing_file = tmp_path / "token"
    failing_file.write_text(make_token("acme", ttl=30 * DAY))
    routes.append(acme_route(upstream, prefix="/failing", token={"file": str(failing_file)}))
    proxy = await make_proxy(routes, env=tokens)
    failing_file.unlink()
    await proxy.store.reload_files()
    doc = await status(proxy)
    states = {r["name"]: r["state"] for r in doc["routes"]}
    assert states == {"fine": "ok", "soon": "expiring", "old": "expired", "failing": "failing"}
    fine = doc["routes"][0]
    assert fine["prefix"] == "/fine" and fine["tenant"] == "acme"
    assert fine["token"]["source"] == "environment variable FINE"
    assert 29 * DAY < fine["token"]["seconds_left"] <= 30 * DAY
    assert doc["ready"] is True and doc["reload"]["successful"] is True
    text = await (await proxy.admin.get("/status.json")).text()
    for token in tokens.values():
        assert token not in text and token.split(".")[2] not in text


async def test_traffic_and_401_causes_over_the_last_five_minutes(
    make_proxy: ProxyFactory, upstream: Upstream
) -> None:
    proxy = await make_proxy(
        [acme_route(upstream), acme_route(upstream, prefix="/bad", tenant="bad")]
    )
    for _ in range(3):
        assert (await proxy.client.get("/acme/x?secret=1")).status == 200
    assert (await proxy.client.get("/acme/_fake/status/503")).status == 503
    assert (await proxy.client.get("/bad/x")).status == 401
    doc = await status(proxy)
    acme, bad = doc["routes"]
    series = acme["traffic"].pop("series")
    assert acme["traffic"] == {
        "window_seconds": 300,
        "requests": 4,
        "errors": 1,
        "error_rate": 0.25,
        "step_seconds": 10,
    }
    # 30 points of 10 s, oldest first: everything just happened, so it is in the last ones
    assert [len(v) for v in series.values()] == [30, 30, 30]
    assert sum(series["requests"][-2:]) == 4 and sum(series["errors"][-2:]) == 1
    assert sum(series["unauthorized"]) == 0
    assert sum(bad["traffic"]["series"]["unauthorized"][-2:]) == 1
    assert bad["unauthorized"]["by_cause"] == {"tenant_mismatch": 1}
    assert bad["unauthorized"]["last_at"] is not None
    # every answer it got was a refusal: not a green OK, and Amperity's own words shown
    assert (acme["state"], bad["state"]) == ("expiring", "refused")  # same 1-hour token
    assert bad["refusals"]["recent"] == bad["refusals"]["of"] == 1
    assert bad["refusals"]["last"]["message"] == "Amperity-Tenant does not match the token's tenant"
    assert "secret" not in str(doc) and ACME_TOKEN not in str(doc)


async def test_page_headers_and_content(make_proxy: ProxyFactory, upstream: Upstream) -> None:
    routes, tokens = three_routes(upstream)
    proxy = await make_proxy(routes, env=tokens)
    response = await proxy.admin.get("/")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'nonce-" in csp
    html = await response.text()
    nonce = csp.split("script-src 'nonce-", 1)[1].split("'", 1)[0]
    assert f'<script nonce="{nonce}">' in html and f'<style nonce="{nonce}">' in html
    assert 'http-equiv="refresh"' in html and "src=" not in html and "href=" not in html
    assert "expires within 7 days" in html and "EXPIRED" in html
    for token in tokens.values():
        assert token not in html
    assert (await proxy.client.get("/")).status == 404  # only on the admin listener


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


async def test_a_real_browser_renders_the_page(
    make_proxy: ProxyFactory, upstream: Upstream, tmp_path: Path
) -> None:
    import asyncio

    require(_chromium(), "headless Chromium", "apt-get install chromium chromium-driver")

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    routes, tokens = three_routes(upstream)
    proxy = await make_proxy(routes, env=tokens)
    for _ in range(5):
        await proxy.client.get("/fine/segments")
    await proxy.client.get("/old/segments")  # an upstream 401 (expired)
    browser, driver_path = _chromium()  # type: ignore[misc]
    url = f"http://127.0.0.1:{proxy.admin.server.port}/"

    def browse() -> tuple[dict[str, str], list[dict[str, Any]], str, dict[str, list[str]]]:
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for flag in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,900",
        ):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(options=options, service=Service(driver_path))
        try:
            driver.get(url)
            badges = {
                section.get_attribute("data-route") or "": section.find_element(
                    By.CSS_SELECTOR, ".badge"
                ).text
                for section in driver.find_elements(By.CSS_SELECTOR, "section[data-route]")
            }
            # Each route's pictures, as the browser laid them out (width x height, title).
            charts = {
                section.get_attribute("data-route") or "": [
                    f"{svg.get_attribute('class')} {svg.size['width']}x{svg.size['height']} "
                    + str(svg.find_element(By.TAG_NAME, "title").get_attribute("textContent"))
                    for svg in section.find_elements(By.CSS_SELECTOR, "svg")
                ]
                for section in driver.find_elements(By.CSS_SELECTOR, "section[data-route]")
            }
            logs = driver.get_log("browser")  # type: ignore[no-untyped-call]
            first_time = driver.find_element(By.CSS_SELECTOR, "time").text
            driver.save_screenshot(str(screenshot))
            return badges, logs, first_time, charts
        finally:
            driver.quit()

    # The screenshot goes to tmp_path so a test run never dirties the tree;
    # `UPDATE_SCREENSHOT=1 make test` refreshes docs/status-page.png.
    screenshot = tmp_path / "status-page.png"
    badges, logs, first_time, charts = await asyncio.to_thread(browse)
    assert badges == {
        "fine": "OK",
        "soon": "EXPIRES WITHIN 7 DAYS",
        "old": "EXPIRED",
    } or badges == {
        "fine": "OK",
        "soon": "expires within 7 days",
        "old": "EXPIRED",
    }
    assert logs == []  # no console errors, no CSP violations (the SVGs included)
    # A lifetime bar and a sparkline on every card, laid out at their size, with their text
    # (scaled to the card: at most 320 px wide, aspect kept)
    for route, (bar, spark) in charts.items():
        for chart, kind, aspect in ((bar, "lifetime", 320 / 42), (spark, "sparkline", 320 / 58)):
            name, size, _ = chart.split(" ", 2)
            width, height = (float(v) for v in size.split("x"))
            assert name == kind and 100 < width <= 320, (route, chart)
            assert abs(width / height - aspect) < 0.2, (route, chart)
    fine, soon, old = charts["fine"], charts["soon"], charts["old"]
    assert "of the lifetime left" in fine[0] and "5 requests, 0 errors" in fine[1]
    assert "of the lifetime left" in soon[0]
    assert old[0].endswith("token expired") and "1 upstream 401s" in old[1]
    assert "UTC" not in first_time  # the script ran: times are in the viewer's local format
    assert screenshot.stat().st_size > 10_000
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(screenshot, ROOT / "docs" / "status-page.png")
