"""The HTML evaluation report in a real browser (Chromium + Playwright) at laptop width.

The report is generated from hand-made results (no encoder, no data set): the summary must
be visible at the top, the page must not scroll sideways in a 1280-px window (tables scroll
inside their own box), every plot must decode, and a full-page screenshot is taken.
"""

from __future__ import annotations

import struct
from typing import Any

from playwright.sync_api import expect

from serendip.eval.report import DatasetInfo, write_report
from tests.eval.test_report import synthetic_results

WIDTH = 1280


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_report_reads_at_laptop_width(chromium: Any, tmp_path: Any) -> None:
    path = write_report(synthetic_results(), tmp_path / "report.html",
                        dataset=DatasetInfo("MovieLens-100K", 943, 1682, 100_000))
    context = chromium.new_context(viewport={"width": WIDTH, "height": 900})
    outside: list[str] = []

    def route(r: Any) -> None:  # a self-contained file: nothing but itself and data: URIs
        if r.request.url.startswith(("file://", "data:")):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.set_default_timeout(15_000)
    try:
        page.goto(path.as_uri())
        summary = page.get_by_test_id("summary")
        expect(summary).to_be_visible()
        expect(summary).to_contain_text(
            "Ship balanced: it keeps 97% of accurate's NDCG@10 (0.194 vs 0.200)")
        box = summary.bounding_box()
        assert box is not None and box["y"] < 900  # above the fold
        expect(page).to_have_title("serendip evaluation: MovieLens-100K")
        assert page.evaluate("document.documentElement.scrollWidth") <= WIDTH

        # every plot, folded or not, is a decoded image
        page.wait_for_function("Array.from(document.images).every(i => i.complete)")
        widths = page.evaluate("Array.from(document.images).map(i => i.naturalWidth)")
        assert len(widths) == 11 and all(w > 0 for w in widths)
        # the visible ones fit the page
        for img in page.locator("img:visible").all():
            b = img.bounding_box()
            assert b is not None and b["x"] >= 0 and b["x"] + b["width"] <= WIDTH

        # unfolded, the wide tables scroll inside their own box, never the page
        page.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")
        assert page.locator("details[open]").count() >= 6
        assert page.evaluate("document.documentElement.scrollWidth") <= WIDTH

        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        data = shot.read_bytes()
        w, h = _png_size(data)
        assert w == WIDTH and h > 2000 and len(data) > 100_000
        assert outside == []
    finally:
        context.close()
