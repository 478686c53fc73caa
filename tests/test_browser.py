"""The demo report in a real browser: headless Chromium, driven by Playwright.

Marked ``browser``: ``.ci/run`` installs Debian's ``chromium`` (and says so loudly when it
cannot) and runs this group on its own. Without Chromium or Playwright the test is skipped.
"""

import os
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def _overflowing(page):
    """What sticks out at the right: the page scrolls sideways, or a table, figure or text ends past the viewport."""
    return page.evaluate("""() => {
        const width = document.documentElement.clientWidth;
        const out = [...document.querySelectorAll('table, figure, img, h2, p, details, pre')]
            .filter(e => e.getBoundingClientRect().right > width + 0.5)
            .map(e => e.tagName + ' ' + (e.id || e.textContent.slice(0, 40)));
        if (document.documentElement.scrollWidth > width) out.push('page scrolls sideways');
        return out;
    }""")


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", MPLBACKEND="Agg")
    res = subprocess.run([sys.executable, "-m", "keras_hybrid_interp", "demo", "--out", str(out), "--epochs", "3",
                          "--quiet"], capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    path = out / "report.html"
    assert path.exists()
    return path


def test_the_demo_report_in_headless_chromium(demo_report, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed (.ci/run installs Debian's chromium)")

    requests, errors = [], []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda r: requests.append(r.url))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(demo_report.as_uri())
            page.wait_for_load_state("load")

            # no network request: everything is embedded (the page itself is a file:, images data:)
            assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
            assert errors == []

            # the check table comes first (issue 22), the health section right after it, and every section
            # heading is visible
            headings = page.locator("h2")
            titles = [headings.nth(i).inner_text() for i in range(headings.count())]
            assert titles[:2] == ["Checks", "Health"], titles[:3]
            for i in range(headings.count()):
                assert headings.nth(i).is_visible(), titles[i]
            for want in ("Layer-by-layer predictions", "Local explanations", "Filter importance", "Model summary"):
                assert any(t.startswith(want) for t in titles), want
            # the contents link to every section
            anchors = page.locator("h2[id]").evaluate_all("els => els.map(e => e.id)")
            links = page.locator("a[href^='#']").evaluate_all("els => els.map(e => e.getAttribute('href').slice(1))")
            assert set(anchors) - {"contents"} <= set(links)

            # nothing overflows horizontally at 1,280 px (issue 22 §5)
            assert _overflowing(page) == []
            # no table shows more than 25 rows before the reader asks for more
            visible_rows = page.locator("table").evaluate_all(
                "ts => ts.map(t => [...t.querySelectorAll('tbody tr')].filter(r => r.checkVisibility()).length)")
            assert max(visible_rows) <= 25
            # the collapsed tables open
            details = page.locator("details")
            assert details.count() >= 1
            for i in range(details.count()):
                d = details.nth(i)
                d.locator("summary").click()
                assert d.evaluate("e => e.open")
                rows = d.locator("tbody tr")
                assert rows.count() > 25 and rows.nth(rows.count() - 1).is_visible()
            assert _overflowing(page) == []  # the full tables fit too
            # the check sees an overflow: a table wider than the page
            page.evaluate("document.querySelector('table').style.minWidth = '1400px'")
            assert _overflowing(page)
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
