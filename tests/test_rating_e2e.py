"""The rating page in a real browser: Debian's headless Chromium (Playwright) opens it from
file:// with the network blocked, a rater clicks through every item (once going back), saves
the CSV through the page's download link, and human.ratings reads that CSV back."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from audit.probe import ProbeContext, build_probe
from tests.human_fakes import tiny_image_report

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"Debian's chromium is not installed ({CHROMIUM} "
                                "missing); apt-get install chromium")


@pytest.mark.parametrize("kind", ["2afc", "likert"])
def test_rate_page_click_through_and_csv(tmp_path, kind):
    from playwright.sync_api import sync_playwright

    from audit.render.rating import build_items, rating_images, write_rating_page

    gen, real = rating_images(tiny_image_report(tmp_path, n=3), n=3)
    items = build_items(kind, gen, real)
    paths = write_rating_page(items, tmp_path / "rating")
    key = {r["item_id"]: r for r in csv.DictReader(open(paths["key"]))}
    requests, errors = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            ctx = browser.new_context(accept_downloads=True)
            page = ctx.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(paths["page"].as_uri())
            page.fill("#rater", "alice")
            page.click("#begin")
            answered: dict[str, str] = {}
            for i in range(len(items)):
                assert page.inner_text("#progress") == f"Item {i + 1} of {len(items)}"
                imgs = page.locator("#imgs img")
                assert imgs.count() == (2 if kind == "2afc" else 1)
                assert all(imgs.nth(j).evaluate("e => e.naturalWidth") == 16 for j in range(imgs.count()))
                buttons = page.locator("#answers button.answer")
                choice = i % buttons.count()
                if i == 1:  # answer, go back, answer again differently: the last answer counts
                    buttons.nth((choice + 1) % buttons.count()).click()
                    page.click("#back")
                    buttons = page.locator("#answers button.answer")
                value = buttons.nth(choice).get_attribute("data-value")
                answered[items[i].item_id] = value
                buttons.nth(choice).click()
            with page.expect_download() as dl:
                page.click("#download")
            saved = tmp_path / "rating" / dl.value.suggested_filename
            dl.value.save_as(saved)
        finally:
            browser.close()
    assert not errors
    assert all(u.startswith(("file://", "data:", "blob:")) for u in requests), requests
    assert saved.name == "ratings-alice.csv"
    rows = list(csv.DictReader(open(saved)))
    assert [r["item_id"] for r in rows] == [it.item_id for it in items]
    assert all(r["rater"] == "alice" and r["response"] == answered[r["item_id"]] for r in rows)
    assert set(key) == {r["item_id"] for r in rows}

    probe = build_probe("human.ratings", {"n_resamples": 50})
    found = {f.key: f for f in probe.run(None, ProbeContext(device="cpu", seed=0, data={"ratings": saved.parent},
                                                            probe_id="human.ratings"))}
    if kind == "2afc":
        wrong = sum(answered[i] != key[i]["truth"] for i in answered)
        assert found["human.ratings/hype_error_rate"].value == pytest.approx(wrong / len(items))
    else:
        gen_ratings = [int(v) for i, v in answered.items() if key[i]["truth"] == "generated"]
        assert found["human.ratings/mos"].value == pytest.approx(sum(gen_ratings) / len(gen_ratings))
