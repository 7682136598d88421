"""Drives the decision page in headless Chromium (Debian's `chromium`,
through Playwright's CDP driver) against a running server.

usage: decision_page.py BASE_URL COLLECTION QUERY_PNG SCREENSHOT_PNG

Classifies an image, checks the decision, votes, neighbours (each shown as
its thumbnail, loaded) and the highlighted counterfactual; relabels neighbours until the decision changes
and checks the audit trail; queries by a stored id; unlearns a neighbour;
saves a screenshot. Exits non-zero (with the reason) on any failure.

With ENGRAM_TEST_API_KEY set (the server has API keys on), the page must ask
for the key once, at its first 401, keep it in the tab's sessionStorage (not
in a cookie) and send it on every call after.
"""
import os
import sys

from playwright.sync_api import expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
NEW_LABEL = "curated-label"


def loaded_widths(page, selector):
    """The natural widths of the images `selector` matches, once decoded
    (a broken or missing image fails the decode)."""
    return page.eval_on_selector_all(
        selector, "imgs => Promise.all(imgs.map((i) => i.decode().then(() => i.naturalWidth)))"
    )


def main(base, collection, query_png, screenshot):
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        key = os.environ.get("ENGRAM_TEST_API_KEY")
        prompts = []

        def answer(dialog):
            prompts.append(dialog.message)
            dialog.accept(key or "")

        page.on("dialog", answer)
        page.goto(base + "/")
        expect(page).to_have_url(base + "/ui")
        page.wait_for_selector(f"#collection option[value='{collection}']", state="attached")
        if key:
            assert len(prompts) == 1, f"asked for the key {len(prompts)} times: {prompts}"
            assert "API key" in prompts[0], prompts[0]
            stored = page.evaluate("sessionStorage.getItem('engram-api-key')")
            assert stored == key, "the key is not kept in the tab"
            assert key not in page.evaluate("document.cookie"), "the key went into a cookie"
            print("asked for the API key once; kept in sessionStorage")
        else:
            assert not prompts, f"asked for a key without keys on: {prompts}"
        page.select_option("#collection", collection)
        expect(page.locator("#classes li").first).to_be_visible()
        page.fill("#k", "5")
        page.select_option("#rule", "rank")
        page.fill("#reason", "e2e test")

        # 1. Classify an image.
        page.set_input_files("#file", query_png)
        page.click("#classify")
        expect(page.locator(".neighbor")).to_have_count(5)
        first = page.locator("#decision-label").inner_text()
        assert first not in ("-", "no decision"), first
        assert page.locator("#votes .bar").count() >= 1
        expect(page.locator("#counterfactual")).to_contain_text("Counterfactual")
        assert page.locator(".neighbor.cf").count() >= 1, "counterfactual not highlighted"
        print(f"decision: {first}; counterfactual: {page.locator('#counterfactual').inner_text()}")
        expect(page.locator(".neighbor .pic img")).to_have_count(5)
        widths = loaded_widths(page, ".neighbor .pic img")
        assert len(widths) == 5 and all(0 < w <= 96 for w in widths), widths
        print(f"neighbour thumbnails loaded: widths {widths}")

        # 1b. The same image re-ranked by the trained head: the page shows
        # the fused decision, the votes' own and the head's scores.
        page.fill("#reranker", "head")
        page.click("#classify")
        expect(page.locator("#rerank")).to_be_visible()
        expect(page.locator("#rerank-how")).to_contain_text("head (head")
        expect(page.locator("#rerank-how")).to_contain_text("the re-ranker said")
        assert page.locator("#rerank-scores .bar").count() >= 1
        loaded_widths(page, ".neighbor .pic img")
        page.screenshot(path=screenshot.replace(".png", "_rerank.png"), full_page=True)
        print(f"re-ranked: {page.locator('#decision-label').inner_text()}; {page.locator('#rerank-how').inner_text()}")
        page.fill("#reranker", "none")
        page.click("#classify")
        expect(page.locator("#rerank")).to_be_hidden()

        # 2. Relabel neighbours, best first, until the decision changes.
        audit_before = page.locator("#audit li").count()
        changed_after = None
        for i in range(5):
            card = page.locator(".neighbor").nth(i)
            card.locator(".act-relabel").click()
            card.locator(".relabel-input").fill(NEW_LABEL)
            card.locator(".relabel-ok").click()
            expect(page.locator("#audit li")).to_have_count(min(audit_before + i + 1, 8))
            expect(page.locator(".neighbor").nth(i).locator(".lbl")).to_have_text(NEW_LABEL)
            if page.locator("#decision-label").inner_text() == NEW_LABEL:
                changed_after = i + 1
                break
        assert changed_after, "relabelling 5 neighbours did not change the decision"
        expect(page.locator(".neighbor").first.locator(".why")).to_contain_text("relabelled from")
        expect(page.locator("#audit li").first).to_contain_text("relabel")
        expect(page.locator("#audit li").first).to_contain_text("e2e test")
        print(f"decision changed to {NEW_LABEL} after relabelling {changed_after} neighbour(s)")
        expect(page.locator(".neighbor .pic img")).to_have_count(5)
        loaded_widths(page, ".neighbor .pic img")
        page.screenshot(path=screenshot, full_page=True)

        # 3. Query by a stored item: it never votes for itself.
        stored = page.locator(".neighbor").first.get_attribute("data-id")
        page.fill("#item-id", stored)
        page.click("#classify")
        expect(page.locator(f".neighbor[data-id='{stored}']")).to_have_count(0)
        expect(page.locator(".neighbor")).to_have_count(5)
        # The stored item's own picture stands for the query.
        expect(page.locator("#preview")).to_be_visible()
        assert loaded_widths(page, "#preview")[0] > 0
        expect(page.locator(".neighbor .pic img")).to_have_count(5)

        # 4. Unlearn a neighbour: it is gone from the next decision.
        victim = page.locator(".neighbor").first.get_attribute("data-id")
        page.locator(".neighbor").first.locator(".act-delete").click()
        expect(page.locator("#status")).to_contain_text("receipt")
        expect(page.locator(f".neighbor[data-id='{victim}']")).to_have_count(0)

        # 5. The head was trained before the relabels and the delete: it is
        # stale now, and the page says that the votes decided.
        page.fill("#reranker", "head")
        page.click("#classify")
        expect(page.locator("#rerank-how")).to_contain_text("skipped")
        expect(page.locator("#rerank-how")).to_contain_text("stale")
        print(f"stale head: {page.locator('#rerank-how').inner_text()}")
        assert not errors, f"page errors: {errors}"
        assert len(prompts) == (1 if key else 0), f"asked again: {prompts}"
        browser.close()
    print("decision page: ok")


if __name__ == "__main__":
    main(*sys.argv[1:5])
