"""The web page in a real browser (Chromium + Playwright) against the real app.

Covers: key from the URL fragment, picking a user, recommendation cards, the discovery slider
re-ranking (a new request with the new value, and the list re-rendered for it), natural-language
search, like -> event acknowledged -> "Liked ✓" -> list updated on request, "why this?" explanations, keyboard use,
labels and landmarks, no console errors and no request leaving the app's origin.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any
from urllib.parse import parse_qs, urlparse

from playwright.sync_api import expect

from tests.web.conftest import (
    K,
    LiveServer,
    PageLog,
    assert_clean,
    card_titles,
    open_page,
    pick_first_user,
)


def js_round(x: float) -> int:
    """Math.round: halves go up."""
    return math.floor(x + 0.5)


def test_page_shows_recommendations_for_a_picked_user(web: tuple[Any, PageLog],
                                                     live_server: LiveServer) -> None:
    page, log = web
    open_page(page, live_server)
    assert "#key=" not in page.url  # the key leaves the address bar once stored
    assert page.evaluate("localStorage.getItem('serendip.apiKey')") == live_server.key

    user = pick_first_user(page)
    cards = page.get_by_test_id("rec-list").get_by_test_id("rec-card")
    expect(cards).to_have_count(K)
    titles = card_titles(page)
    assert all(t.strip() for t in titles) and len(set(titles)) == K
    # No raw score on the cards: the list is ordered by the preset, not by it.
    for text in page.get_by_test_id("rec-list").get_by_test_id("rec-card").all_inner_texts():
        assert not re.search(r"score|\d\.\d{3}", text), text
    # Badges are chips with words, not only colours.
    for badge in page.locator("[data-testid=rec-list] .badge").all():
        assert badge.inner_text().strip().split()[-1] in ("tail", "novel", "serendipitous")
    expect(page.get_by_test_id("rec-heading")).to_have_text(f"Recommendations for user {user}")
    expect(page.get_by_test_id("live-status")).to_contain_text(f"{K} recommendations for user {user}")
    # The side panel shows the user's recent history.
    expect(page.get_by_test_id("history-item").first).to_be_visible()
    assert_clean(log, live_server)


def test_discovery_slider_refetches_with_the_new_value(web: tuple[Any, PageLog],
                                                      live_server: LiveServer) -> None:
    page, log = web
    open_page(page, live_server)
    pick_first_user(page)
    slider = page.get_by_test_id("discovery-slider")
    rec_list = page.get_by_test_id("rec-list")

    seen: dict[str, list[str]] = {}
    for key, value in (("Home", "0.00"), ("End", "1.00")):
        with page.expect_request(
            lambda r, v=value: "/recommendations?" in r.url and f"discovery={v}" in r.url
        ) as req:
            slider.focus()
            slider.press(key)  # keyboard operable: Home/End jump to the ends
            expect(page.get_by_test_id("discovery-value")).to_have_text(value)
        q = parse_qs(urlparse(req.value.url).query)
        assert q["discovery"] == [value] and q["preset"] == ["balanced"] and q["k"] == [str(K)]
        resp = req.value.response()
        assert resp is not None and resp.status == 200
        assert resp.json()["discovery"] == float(value)
        expect(rec_list).to_have_attribute("data-discovery", value)
        expect(rec_list).to_have_attribute("data-state", "ready")
        expect(page.get_by_test_id("live-status")).to_contain_text(f"discovery {value}")
        seen[value] = card_titles(page)
        assert len(seen[value]) == K
    assert seen["0.00"] != seen["1.00"], "moving the slider end to end should re-rank the list"

    # Several quick moves are debounced into a single request for the final value.
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url) if "/recommendations?" in r.url else None)
    with page.expect_request(lambda r: "discovery=0.85" in r.url):
        for _ in range(3):
            slider.press("ArrowLeft")
    expect(rec_list).to_have_attribute("data-discovery", "0.85")
    assert len(urls) == 1, urls
    assert_clean(log, live_server)


def test_explore_toggle_asks_for_exploration(web: tuple[Any, PageLog],
                                             live_server: LiveServer) -> None:
    page, log = web
    open_page(page, live_server)
    pick_first_user(page)
    toggle = page.get_by_test_id("explore-toggle")
    with page.expect_request(lambda r: "/recommendations?" in r.url and "explore=0.10" in r.url) as req:
        toggle.check()
    resp = req.value.response()
    assert resp is not None and resp.status == 200
    out = resp.json()
    assert out["explore"] == 0.1
    assert all(0 < it["propensity"] <= 1 for it in out["items"])
    expect(page.get_by_test_id("rec-list")).to_have_attribute("data-state", "ready")
    with page.expect_request(lambda r: "/recommendations?" in r.url and "explore=" not in r.url):
        toggle.uncheck()
    assert_clean(log, live_server)


def test_adaptive_preset_shows_what_it_has_learned(web: tuple[Any, PageLog],
                                                   live_server: LiveServer) -> None:
    page, log = web
    open_page(page, live_server)
    pick_first_user(page)
    with page.expect_request(lambda r: "/recommendations?" in r.url and "preset=adaptive" in r.url):
        page.get_by_test_id("preset-select").select_option("adaptive")
    description = page.get_by_test_id("preset-description")
    expect(description).to_contain_text("learned so far: relevance")
    expect(description).to_contain_text("unexpectedness")
    # the 'shown' weight, named for a reader
    expect(description).to_contain_text(re.compile(r"already shown to you [+-]\d+\.\d\d"))
    assert_clean(log, live_server)


def test_search_shows_result_cards(web: tuple[Any, PageLog], live_server: LiveServer) -> None:
    page, log = web
    open_page(page, live_server)
    user = pick_first_user(page)
    with page.expect_request(lambda r: r.url.endswith("/v1/search")) as req:
        page.get_by_test_id("search-input").fill("a funny space adventure for kids")
        page.get_by_test_id("search-input").press("Enter")
    body = json.loads(req.value.post_data or "{}")
    assert body["query"] == "a funny space adventure for kids" and body["user_id"] == user
    assert "discovery" not in body  # the server's search default until the slider is moved
    assert req.value.response().status == 200
    results = page.get_by_test_id("search-list")
    expect(results).to_have_attribute("data-state", "ready")
    expect(page.get_by_test_id("search-section")).to_be_visible()
    expect(results.get_by_test_id("rec-card").first).to_be_visible()
    assert 1 <= results.get_by_test_id("rec-card").count() <= K
    expect(page.get_by_test_id("search-heading")).to_contain_text("a funny space adventure")
    page.get_by_test_id("discovery-slider").focus()
    page.get_by_test_id("discovery-slider").press("Home")
    with page.expect_request(lambda r: r.url.endswith("/v1/search")) as req2:
        page.get_by_test_id("search-submit").click()
    assert json.loads(req2.value.post_data or "{}")["discovery"] == 0.0
    expect(results).to_have_attribute("data-state", "ready")
    page.get_by_test_id("search-clear").click()
    expect(page.get_by_test_id("search-section")).to_be_hidden()
    assert_clean(log, live_server)


def test_like_posts_an_event_and_shows_it(web: tuple[Any, PageLog], live_server: LiveServer) -> None:
    page, log = web
    open_page(page, live_server)
    user = pick_first_user(page)
    first = page.get_by_test_id("rec-list").get_by_test_id("rec-card").first
    item_id = first.get_attribute("data-item-id")
    title = first.get_by_test_id("card-title").inner_text()

    with page.expect_response(lambda r: r.url.endswith("/v1/events")) as ev:
        first.get_by_test_id("like-button").click()
    assert ev.value.status == 201
    sent = json.loads(ev.value.request.post_data or "{}")["events"]
    assert len(sent) == 1
    assert sent[0]["user_id"] == user and sent[0]["item_id"] == item_id and sent[0]["type"] == "like"
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
                        sent[0]["idempotency_key"])
    ack = ev.value.json()["acks"][0]
    assert isinstance(ack["event_id"], int) and ack["duplicate"] is False
    # The card confirms the like and keeps saying so: the list is not swapped under the user.
    like = first.get_by_test_id("like-button")
    expect(like).to_have_text("Liked ✓")
    expect(like).to_have_attribute("aria-pressed", "true")
    expect(like).to_be_disabled()
    # A person's confirmation, not the store's internals.
    expect(first.get_by_test_id("card-ack")).to_have_text("Saved ✓ — your next list will use it.")
    expect(first).not_to_contain_text(str(ack["event_id"]))
    expect(page.get_by_test_id("live-status")).to_contain_text(f"Liked “{title}”")
    expect(page.get_by_test_id("rec-refresh")).to_have_text("Update my list (1 new like)")
    # The liked item is now history: it shows in the side panel, saying it was liked...
    liked = page.get_by_test_id("history-list").locator(f"[data-item-id='{item_id}']")
    expect(liked.get_by_test_id("history-meta")).to_have_text(re.compile(r"^liked · \d{4}-\d\d-\d\d$"))
    expect(page.get_by_test_id("rec-list").get_by_test_id("rec-card").first).to_have_attribute(
        "data-item-id", item_id or "")
    expect(like).to_have_text("Liked ✓")

    # "Not for me" sends a skip and stays marked too.
    second = page.get_by_test_id("rec-list").get_by_test_id("rec-card").nth(1)
    with page.expect_response(lambda r: r.url.endswith("/v1/events")) as ev2:
        second.get_by_test_id("skip-button").click()
    assert ev2.value.status == 201
    assert json.loads(ev2.value.request.post_data or "{}")["events"][0]["type"] == "skip"
    expect(page.get_by_test_id("live-status")).to_contain_text("Marked not for me")
    expect(second.get_by_test_id("skip-button")).to_have_text("Not for me ✓")
    expect(second.get_by_test_id("card-ack")).to_have_text("Saved ✓ — your next list will leave it out.")
    skipped = second.get_attribute("data-item-id")
    # A skipped item is not listed as history: it is under "Not for me", marked as skipped.
    expect(page.get_by_test_id("history-list").locator(f"[data-item-id='{skipped}']")).to_have_count(0)
    negative = page.get_by_test_id("history-negative").locator(f"[data-item-id='{skipped}']")
    expect(negative.get_by_test_id("history-meta")).to_have_text(re.compile(r"^✕ skipped · "))
    expect(page.get_by_test_id("history-negative-box")).to_contain_text("Not for me")

    # ...and leaves the list when the user asks for the update.
    refresh = page.get_by_test_id("rec-refresh")
    expect(refresh).to_have_text("Update my list (2 changes)")
    with page.expect_response(lambda r: "/recommendations?" in r.url) as refreshed:
        refresh.click()
    assert refreshed.value.status == 200
    expect(refresh).to_be_hidden()
    expect(page.get_by_test_id("rec-list")).to_have_attribute("data-state", "ready")
    for gone in (item_id, skipped):
        expect(page.locator(f"[data-testid=rec-list] [data-item-id='{gone}']")).to_have_count(0)
    expect(page.get_by_test_id("rec-list").get_by_test_id("rec-card")).to_have_count(K)
    expect(page.get_by_test_id("discovery-change")).to_contain_text("After your feedback")
    assert_clean(log, live_server)


def test_why_this_shows_the_explanation(web: tuple[Any, PageLog], live_server: LiveServer,
                                        tmp_path: Any) -> None:
    page, log = web
    open_page(page, live_server)
    pick_first_user(page)
    card = page.get_by_test_id("rec-list").get_by_test_id("rec-card").nth(2)
    item_id = card.get_attribute("data-item-id")
    score = float(card.get_attribute("data-score") or "nan")
    with page.expect_response(lambda r: r.url.endswith(f"/recommendations/{item_id}/explain")) as resp:
        card.get_by_test_id("why-button").click()
    assert resp.value.status == 200
    data = resp.value.json()
    panel = page.get_by_test_id("explain-panel")
    expect(panel.get_by_test_id("explain-text")).to_have_text(data["text"])
    assert data["text"].strip()
    because = panel.locator("[data-testid=explain-because] li")
    expect(because).to_have_count(len(data["because"]))
    if data["because"]:
        expect(because.first).to_contain_text(data["because"][0]["title"])
    # Focus moves to the explanation for keyboard and screen-reader users.
    assert page.evaluate("document.activeElement.id") == "explain-heading"
    # The numbers are folded away, in plain words: no bits, no raw unexpectedness.
    details = panel.get_by_test_id("explain-details")
    expect(details).not_to_have_attribute("open", "")
    expect(panel.get_by_test_id("explain-facts")).to_be_hidden()
    details.locator("summary").click()
    facts = panel.get_by_test_id("explain-facts")
    pop = data["popularity"]
    expect(facts).to_contain_text(f"Known to{pop['users']} of {pop['of_people']} people")
    expect(facts).to_contain_text(
        f"more popular than {js_round(pop['more_popular_than_share'])}% of the catalog")
    top = min(100, max(1, math.ceil((1 - score) * 100 - 1e-9)))
    expect(facts).to_contain_text(f"Matchtop {top}% of the catalog for you")
    if data["unexpectedness"] is not None:
        expect(facts).to_contain_text(
            f"How unlike your history{js_round(min(max(data['unexpectedness'], 0), 1) * 100)}%")
    for jargon in ("bits", "Novelty", "Unexpectedness", "percentile", "similarity"):
        expect(panel).not_to_contain_text(jargon)
    expect(card).to_have_class(re.compile(r"\bselected\b"))

    page.get_by_test_id("search-input").fill("quiet drama about a family")
    page.get_by_test_id("search-input").press("Enter")
    expect(page.get_by_test_id("search-list").get_by_test_id("rec-card").first).to_be_visible()
    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
    assert_clean(log, live_server)


def test_controls_are_labelled_and_keyboard_operable(web: tuple[Any, PageLog],
                                                    live_server: LiveServer) -> None:
    page, log = web
    open_page(page, live_server)
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, button, output')]
             .filter(e => !e.closest('template'))
             .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                          && !e.textContent.trim() && e.type !== 'hidden')
             .map(e => e.outerHTML)"""
    )
    assert unlabelled == []
    for role in ("banner", "main", "complementary", "search", "contentinfo"):
        expect(page.get_by_role(role)).to_have_count(1)
    expect(page.get_by_label("Discovery")).to_be_visible()
    assert page.get_by_test_id("live-status").get_attribute("aria-live") == "polite"

    # Keyboard only: tab to the user field, type, Enter; then tab onto a card's like button.
    page.locator("body").focus()
    for _ in range(20):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.dataset.testid") == "user-input":
            break
    user = page.locator("[data-testid=user-options] option").first.get_attribute("value")
    page.keyboard.type(user)
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("rec-list").get_by_test_id("rec-card")).to_have_count(K)
    why = page.get_by_test_id("rec-list").get_by_test_id("why-button").first
    why.focus()
    # Focus is visible: the focused control gets an outline.
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("none", "")
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("explain-text")).to_be_visible()
    assert_clean(log, live_server)


def test_without_a_key_the_page_asks_for_one(web: tuple[Any, PageLog], live_server: LiveServer) -> None:
    page, log = web
    page.goto(live_server.url + "/")
    expect(page.get_by_test_id("key-status")).to_have_text("API key: not set")
    expect(page.get_by_test_id("key-input")).to_be_visible()
    # No API call is made without a key; the page says what to do instead.
    expect(page.get_by_test_id("error")).to_contain_text("API key")
    assert not [u for u in log.requests if "/v1/" in u]
    page.get_by_test_id("key-input").fill(live_server.key)
    page.get_by_test_id("key-save").click()
    expect(page.get_by_test_id("key-status")).to_have_text("API key: set")
    expect(page.locator("[data-testid=user-options] option").first).to_be_attached()
    expect(page.get_by_test_id("error")).to_be_hidden()
    assert_clean(log, live_server)
