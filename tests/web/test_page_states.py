"""The page's cards, loading/empty states, notes, errors and panels in a real browser.

Each test drives Chromium against the real app over the fixture catalog (see conftest.py:
titles, genres, years and same-origin image URLs, some of which do not exist).  Where a state
depends on the server (a slow answer, a failure, a weak search match), the test holds or
rewrites that one response in the browser, and checks what the page shows for it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from playwright.sync_api import expect

from tests.web.conftest import (
    CLOSE_SHAVE,
    GENRES,
    K,
    LiveServer,
    PageLog,
    assert_clean,
    image_kind,
    item_year,
    open_page,
    pick_first_user,
    pick_user,
)

THEME_OF = {"sp": "space", "co": "comedy", "cr": "crime", "ki": "kids"}


def cards(page: Any, list_id: str = "rec-list") -> Any:
    return page.get_by_test_id(list_id).get_by_test_id("rec-card")


def is_recommendations(url: str) -> bool:
    return "/recommendations?" in url


def expected_initials(title: str) -> str:
    words = [w for w in re.sub(r"\([^)]*\)", " ", title).split() if w.lower() not in ("the", "a", "an")]
    return "".join(w[0].upper() for w in words[:2])


def test_cards_show_the_items_fields_and_pictures(web: tuple[Any, PageLog],
                                                  live_server: LiveServer) -> None:
    page, log = web
    open_page(page, live_server)
    pick_first_user(page)
    shown = cards(page)
    expect(shown).to_have_count(K)
    kinds = set()
    for n in range(K):
        card = shown.nth(n)
        iid = card.get_attribute("data-item-id") or ""
        expect(card).to_have_attribute("data-fields", "ready")
        title = card.get_by_test_id("card-title").inner_text()
        fields = card.get_by_test_id("card-fields")
        genres = GENRES[THEME_OF[iid[:2]]].replace("|", ", ")
        expect(fields.locator("[data-field=Genres] dd")).to_have_text(genres)
        expect(fields.locator("[data-field=Year] dd")).to_have_text(str(item_year(iid)))
        # Neither the title nor the image URL is repeated as a field.
        expect(fields.locator("[data-field=Title], [data-field='Image url']")).to_have_count(0)
        expect(card.get_by_test_id("card-text")).to_have_text(re.compile(r"^a \w+ film about "))
        kind = image_kind(iid)
        kinds.add(kind)
        media = card.get_by_test_id("card-media")
        card.scroll_into_view_if_needed()
        if kind == "ok":
            img = media.get_by_test_id("card-image")
            expect(img).to_be_visible()
            assert img.get_attribute("alt") == title
            assert img.get_attribute("referrerpolicy") == "no-referrer"
            assert img.get_attribute("loading") == "lazy"
            assert (img.get_attribute("src") or "").endswith(f"/covers/{iid}.svg")
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle())
        else:
            # No image, or one that fails to load: initials on a colour from the id.
            placeholder = media.get_by_test_id("card-placeholder")
            expect(placeholder).to_be_visible()
            expect(placeholder).to_have_text(expected_initials(title))
            assert re.search(r"\bph-[0-7]\b", placeholder.get_attribute("class") or "")
            expect(media.get_by_test_id("card-image")).to_have_count(0)
    assert kinds == {"ok", "missing", "none"}, "the first user's list should show every kind"
    # A missing cover was asked for once (and fell back); an item without one asks nothing.
    covers = [u for u in log.requests if "/covers/" in u]
    for n in range(K):
        iid = cards(page).nth(n).get_attribute("data-item-id") or ""
        wanted = {"ok": f"/covers/{iid}.svg", "missing": f"/covers/missing-{iid}.png",
                  "none": None}[image_kind(iid)]
        hits = [u for u in covers if u.endswith(f"/{iid}.svg") or u.endswith(f"-{iid}.png")]
        assert hits == ([] if wanted is None else [live_server.url + wanted])
    assert_clean(log, live_server)


def test_titles_read_naturally(web: tuple[Any, PageLog], live_server: LiveServer) -> None:
    page, log = web
    open_page(page, live_server)
    page.get_by_test_id("search-input").fill("close shave")
    page.get_by_test_id("search-input").press("Enter")
    results = page.get_by_test_id("search-list")
    expect(results).to_have_attribute("data-state", "ready")
    card = results.locator(f"[data-item-id='{CLOSE_SHAVE[0]}']")
    expect(card.get_by_test_id("card-title")).to_have_text("A Close Shave")
    expect(card.get_by_test_id("like-button")).to_have_attribute("aria-label", "Like: A Close Shave")

    # MovieLens-style titles with years and alternative titles; natural ones stay as they are.
    cases = {
        "Lion King, The (1994)": "The Lion King (1994)",
        "City of Lost Children, The (Cité des enfants perdus, La) (1995)":
            "The City of Lost Children (Cité des enfants perdus, La) (1995)",
        "Englishman Who Went Up a Hill, An": "An Englishman Who Went Up a Hill",
        "A Close Shave": "A Close Shave",
        "Crouching Tiger, Hidden Dragon": "Crouching Tiger, Hidden Dragon",
    }

    def rewrite(route: Any) -> None:
        resp = route.fetch()
        body = resp.json()
        for item, raw in zip(body["items"], cases, strict=False):
            item["title"] = raw
        route.fulfill(response=resp, json=body)

    page.route(lambda url: url.endswith("/v1/search"), rewrite)
    page.get_by_test_id("search-input").fill("a funny space adventure for kids")
    page.get_by_test_id("search-input").press("Enter")
    expect(results).to_have_attribute("data-query", "a funny space adventure for kids")
    expect(results.get_by_test_id("card-title").first).to_have_text(next(iter(cases.values())))
    titles = results.get_by_test_id("card-title").all_inner_texts()
    assert titles[: len(cases)] == list(cases.values())
    assert_clean(log, live_server)


def test_loading_states_are_visible_with_a_spinner(web: tuple[Any, PageLog],
                                                   live_server: LiveServer) -> None:
    page, log = web
    open_page(page, live_server)
    held: list[Any] = []
    page.route(lambda url: is_recommendations(url) or url.endswith("/v1/search"),
               lambda route: held.append(route))
    user = page.locator("[data-testid=user-options] option").first.get_attribute("value")
    page.get_by_test_id("user-input").fill(user)
    page.get_by_test_id("user-input").press("Enter")
    state = page.get_by_test_id("rec-state")
    expect(state).to_be_visible()
    expect(state).to_have_text(f"Loading recommendations for user {user}…")
    expect(state.get_by_test_id("spinner")).to_be_visible()
    expect(page.get_by_test_id("rec-list")).to_have_attribute("aria-busy", "true")
    assert len(held) == 1
    held.pop().continue_()
    expect(state).to_be_hidden()
    expect(cards(page)).to_have_count(K)
    expect(page.get_by_test_id("rec-list")).to_have_attribute("aria-busy", "false")

    page.get_by_test_id("search-input").fill("heist")
    page.get_by_test_id("search-input").press("Enter")
    search_state = page.get_by_test_id("search-state")
    expect(search_state).to_have_text("Searching for “heist”…")
    expect(search_state.get_by_test_id("spinner")).to_be_visible()
    # A slow search says why it may be slow.
    expect(search_state).to_contain_text("the first search loads the language model", timeout=6000)
    held.pop().continue_()
    expect(search_state).to_be_hidden()
    expect(cards(page, "search-list").first).to_be_visible()
    assert_clean(log, live_server)


def test_a_new_user_gets_general_picks_with_a_note(web: tuple[Any, PageLog],
                                                   live_server: LiveServer) -> None:
    page, log = web
    open_page(page, live_server)
    # The picker offers the most active users from the API; any other id is allowed.
    with page.expect_response(lambda r: "/v1/users?" in r.url) as users_resp:
        page.reload()
    offered = page.locator("[data-testid=user-options] option")
    expect(offered).to_have_count(len(users_resp.value.json()["users"]))
    assert offered.first.get_attribute("value") == users_resp.value.json()["users"][0]
    expect(page.get_by_test_id("user-hint")).to_contain_text("40 most active users")

    pick_user(page, "visitor-7")
    expect(cards(page)).to_have_count(K)
    note = page.get_by_test_id("rec-note")
    expect(note).to_have_text("No recommendations yet: user visitor-7 has no history — "
                              "showing general picks, not personal ones.")
    expect(page.get_by_test_id("history-empty")).to_have_text("No history yet for this user.")

    # A known user has no such note, and a note sent by the API is shown as it is.
    pick_first_user(page)
    expect(page.get_by_test_id("history-item").first).to_be_visible()
    expect(note).to_be_hidden()

    def with_note(route: Any) -> None:
        resp = route.fetch()
        route.fulfill(response=resp, json={**resp.json(), "note": "Showing popular picks."})

    page.route(lambda url: is_recommendations(url), with_note)
    pick_user(page, "visitor-8")
    expect(note).to_have_text("Showing popular picks.")

    # An empty list says so where the cards would be.
    page.unroute_all()

    def empty(route: Any) -> None:
        resp = route.fetch()
        route.fulfill(response=resp, json={**resp.json(), "items": []})

    page.route(lambda url: is_recommendations(url), empty)
    pick_user(page, "visitor-9")
    state = page.get_by_test_id("rec-state")
    expect(state).to_have_text("Nothing to recommend for user visitor-9 with these settings.")
    expect(state).to_have_attribute("data-state", "empty")
    expect(cards(page)).to_have_count(0)
    expect(note).to_be_hidden()
    # a new user has no history: the API answers 404 for it
    assert_clean(log, live_server, allow=(r"status of 404 .* at \S+/v1/users/visitor-\d/history",))


def test_search_says_when_nothing_matches(web: tuple[Any, PageLog], live_server: LiveServer) -> None:
    page, log = web
    open_page(page, live_server)
    search = page.get_by_test_id("search-input")
    note = page.get_by_test_id("search-note")
    state = page.get_by_test_id("search-state")
    results = page.get_by_test_id("search-list")

    # No word of the request is known: an empty list, and the API's sentence says why.
    with page.expect_response(lambda r: r.url.endswith("/v1/search")) as resp:
        search.fill("zeppelins")
        search.press("Enter")
    answer = resp.value.json()
    assert answer["items"] == [] and answer["note"]
    expect(state).to_have_text(answer["note"])
    expect(state).to_have_attribute("data-state", "empty")
    expect(note).to_be_hidden()
    expect(page.get_by_test_id("live-status")).to_have_text("No results for “zeppelins”.")
    assert page.locator("body").inner_text().count(answer["note"]) == 1  # said once
    expect(results.get_by_test_id("rec-card")).to_have_count(0)

    # A weak match: its note is shown above the nearest items (or the page's own words).
    answers: list[dict[str, Any]] = [
        {"match": "weak", "note": "Nothing here matches “heist” closely."},
        {"match": "weak", "note": None},
        {"items": [], "match": "good", "note": None},
    ]

    def rewrite(route: Any) -> None:
        resp = route.fetch()
        route.fulfill(response=resp, json={**resp.json(), **answers.pop(0)})

    page.route(lambda url: url.endswith("/v1/search"), rewrite)
    search.fill("heist")
    search.press("Enter")
    expect(note).to_have_text("Nothing here matches “heist” closely.")
    expect(state).to_be_hidden()
    assert page.locator("body").inner_text().count("Nothing here matches") == 1
    expect(results.get_by_test_id("rec-card").first).to_be_visible()

    search.press("Enter")
    expect(note).to_have_text("Nothing in the catalog matches that well: these are the closest items.")

    search.press("Enter")
    expect(state).to_have_text("Nothing in the catalog matches “heist”.")
    expect(note).to_be_hidden()
    expect(results.get_by_test_id("rec-card")).to_have_count(0)
    assert answers == []
    assert_clean(log, live_server)


def test_slider_shows_its_ends_and_what_a_change_did(web: tuple[Any, PageLog],
                                                     live_server: LiveServer) -> None:
    page, log = web
    open_page(page, live_server)
    pick_first_user(page)
    expect(page.locator(".slider-ends .end")).to_have_text(["◀ familiar", "surprising ▶"])
    slider = page.get_by_test_id("discovery-slider")
    box = slider.bounding_box()
    assert box is not None and box["width"] >= 400, "the slider should be wide on a desktop"
    change = page.get_by_test_id("discovery-change")
    expect(change).to_be_hidden()

    lists: dict[str, list[str]] = {}
    for key, value in (("Home", "0.00"), ("End", "1.00")):
        with page.expect_response(lambda r, v=value: is_recommendations(r.url)
                                  and f"discovery={v}" in r.url) as resp:
            slider.focus()
            slider.press(key)
        lists[value] = [it["item_id"] for it in resp.value.json()["items"]]
        expect(page.get_by_test_id("rec-list")).to_have_attribute("data-discovery", value)
    expect(page.get_by_test_id("discovery-value")).to_have_text("1.00")
    new = [i for i in lists["1.00"] if i not in lists["0.00"]]
    assert new, "the fixture's lists at discovery 0 and 1 should differ"
    expect(change).to_have_text(f"Discovery 0.00 → 1.00: {len(new)} of {K} items are new.")
    marked = page.locator("[data-testid=rec-list] .card:has([data-testid=card-new])")
    expect(marked).to_have_count(len(new))
    assert sorted(m.get_attribute("data-item-id") for m in marked.all()) == sorted(new)
    expect(page.get_by_test_id("live-status")).to_contain_text(f"{len(new)} of {K} items are new")

    # A preset change is named too.
    with page.expect_response(lambda r: is_recommendations(r.url) and "preset=accurate" in r.url):
        page.get_by_test_id("preset-select").select_option("accurate")
    expect(change).to_contain_text(re.compile("preset balanced → accurate", re.I))
    assert_clean(log, live_server)


def test_like_failure_shows_on_the_card(web: tuple[Any, PageLog], live_server: LiveServer) -> None:
    page, log = web
    open_page(page, live_server)
    pick_first_user(page)
    page.route(lambda url: url.endswith("/v1/events"), lambda route: route.fulfill(
        status=503, content_type="application/json",
        body=json.dumps({"error": "unavailable", "detail": "the store is read-only"})))
    card = cards(page).first
    title = card.get_by_test_id("card-title").inner_text()
    card.get_by_test_id("like-button").click()
    error = card.get_by_test_id("card-error")
    expect(error).to_have_text(f"Could not save your like for “{title}”: 503 the store is read-only")
    like = card.get_by_test_id("like-button")
    expect(like).to_have_text("Like")
    expect(like).to_be_enabled()
    expect(like).to_have_attribute("aria-pressed", "false")
    expect(page.get_by_test_id("rec-refresh")).to_be_hidden()
    # Trying again after the server recovers works, and the error goes.
    page.unroute_all()
    with page.expect_response(lambda r: r.url.endswith("/v1/events")) as ev:
        like.click()
    assert ev.value.status == 201
    expect(like).to_have_text("Liked ✓")
    expect(error).to_be_hidden()
    assert_clean(log, live_server, allow=(r"status of 503",))


def test_errors_name_what_failed(web: tuple[Any, PageLog], live_server: LiveServer) -> None:
    page, log = web
    open_page(page, live_server)
    user = pick_first_user(page)
    unavailable = json.dumps({"error": "not_ready", "detail": "model not loaded yet"})
    page.route(lambda url: is_recommendations(url) or "/similar" in url, lambda route: route.fulfill(
        status=503, content_type="application/json", body=unavailable))
    page.get_by_test_id("discovery-slider").focus()
    page.get_by_test_id("discovery-slider").press("Home")
    error = page.get_by_test_id("error")
    expect(error).to_have_text(f"Could not load recommendations for user {user}: 503 model not loaded yet")
    expect(page.get_by_test_id("rec-list")).to_have_attribute("data-state", "error")
    expect(page.get_by_test_id("rec-state")).to_be_hidden()

    card = cards(page).first
    title = card.get_by_test_id("card-title").inner_text()
    card.get_by_test_id("similar-button").click()
    expect(page.get_by_test_id("similar-body")).to_have_text(
        f"Could not find items like “{title}”: 503 model not loaded yet")
    assert_clean(log, live_server, allow=(r"status of 503",))


def test_changing_user_clears_the_panels(web: tuple[Any, PageLog], live_server: LiveServer) -> None:
    page, log = web
    open_page(page, live_server)
    first = pick_first_user(page)
    card = cards(page).first
    title = card.get_by_test_id("card-title").inner_text()
    card.get_by_test_id("why-button").click()
    expect(page.get_by_test_id("explain-text")).to_be_visible()
    with page.expect_response(lambda r: "/similar?" in r.url) as similar:
        card.get_by_test_id("similar-button").click()
    expected = [it["item_id"] for it in similar.value.json()["items"]]
    body = page.get_by_test_id("similar-body")
    expect(body.locator("h3")).to_have_text(f"More like “{title}”")
    items = body.get_by_test_id("similar-item")
    expect(items).to_have_count(len(expected))
    assert [i.get_attribute("data-item-id") for i in items.all()] == expected
    page.get_by_test_id("search-input").fill("a heist with a witness")
    page.get_by_test_id("search-input").press("Enter")
    expect(cards(page, "search-list").first).to_be_visible()
    page.get_by_test_id("discovery-slider").focus()
    page.get_by_test_id("discovery-slider").press("Home")
    expect(page.get_by_test_id("discovery-change")).to_be_visible()

    second = page.locator("[data-testid=user-options] option").nth(1).get_attribute("value")
    assert second and second != first
    pick_user(page, second)
    expect(page.get_by_test_id("explain-body")).to_have_text(
        "Choose “why this?” on a card to see what led to it.")
    expect(page.get_by_test_id("similar-body")).to_have_text(
        "Choose “similar” on a card to see items like it.")
    expect(page.get_by_test_id("search-section")).to_be_hidden()
    expect(cards(page, "search-list")).to_have_count(0)
    expect(page.get_by_test_id("discovery-change")).to_be_hidden()
    expect(page.locator(".card.selected")).to_have_count(0)
    expect(page.get_by_test_id("rec-heading")).to_have_text(f"Recommendations for user {second}")
    assert_clean(log, live_server)


CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' https: data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


def test_page_works_under_a_strict_content_security_policy(
        web: tuple[Any, PageLog], live_server: LiveServer) -> None:
    page, log = web

    def with_csp(route: Any) -> None:
        resp = route.fetch()
        route.fulfill(response=resp, headers={**resp.headers, "content-security-policy": CSP})

    page.route(lambda url: url.split("#")[0] == live_server.url + "/", with_csp)
    page.add_init_script("document.addEventListener('securitypolicyviolation', "
                         "e => console.error('CSP violation: ' + e.violatedDirective))")
    open_page(page, live_server)
    pick_first_user(page)
    card = cards(page).first
    card.get_by_test_id("why-button").click()
    card.get_by_test_id("similar-button").click()
    expect(page.get_by_test_id("similar-item").first).to_be_visible()
    expect(page.get_by_test_id("card-image").first).to_be_visible()
    # Nothing the page builds relies on inline styles, handlers or javascript: URLs.
    inline = page.evaluate(
        """() => [...document.querySelectorAll('*')].flatMap(e =>
             [...e.attributes].filter(a => a.name === 'style' || a.name.startsWith('on')
                                           || /^\\s*javascript:/i.test(a.value))
                              .map(a => `${e.tagName}.${a.name}`))"""
    )
    assert inline == []
    assert page.locator("script:not([src]), style").count() == 0
    assert_clean(log, live_server)


LONG_GENRES = "Action|Adventure|Animation|Children's|Comedy|Crime|Documentary|Drama|Fantasy|Film-Noir"


def test_genres_read_the_same_on_every_card(web: tuple[Any, PageLog], live_server: LiveServer) -> None:
    page, log = web
    open_page(page, live_server)

    def long_genres(route: Any) -> None:  # the first card gets a genre list over 80 characters
        resp = route.fetch()
        body = resp.json()
        body["items"][0]["fields"]["genres"] = LONG_GENRES
        route.fulfill(response=resp, json=body)

    page.route(lambda url: is_recommendations(url), long_genres)
    pick_first_user(page)
    shown = cards(page)
    expect(shown).to_have_count(K)
    full = LONG_GENRES.replace("|", ", ")
    assert len(full) > 80
    for n in range(K):
        card = shown.nth(n)
        iid = card.get_attribute("data-item-id") or ""
        value = full if n == 0 else GENRES[THEME_OF[iid[:2]]].replace("|", ", ")
        dd = card.get_by_test_id("card-fields").locator("[data-field=Genres] dd")
        # label + comma-separated values, the full value in the tooltip, never a paragraph
        expect(card.locator("[data-field=Genres] dt")).to_have_text("Genres")
        expect(dd).to_have_text(value)
        expect(dd).to_have_attribute("title", value)
        expect(card.get_by_test_id("card-text")).not_to_contain_text("Animation")
        # one line, cut with an ellipsis when too long
        style = dd.evaluate("e => [getComputedStyle(e).whiteSpace, getComputedStyle(e).textOverflow,"
                            " e.getClientRects().length]")
        assert style == ["nowrap", "ellipsis", 1]
    first = shown.first.locator("[data-field=Genres] dd")
    assert first.evaluate("e => e.scrollWidth > e.clientWidth"), "the long list should be cut"
    line = shown.first.locator("[data-field=Year] dd").evaluate("e => e.getBoundingClientRect().height")
    assert first.evaluate("e => e.getBoundingClientRect().height") <= line + 1
    assert_clean(log, live_server)


def test_history_says_what_each_event_was(web: tuple[Any, PageLog], live_server: LiveServer) -> None:
    page, log = web
    open_page(page, live_server)
    events = [("like", None, "liked"), ("rating", 4.0, "rated 4★"), ("rating", 3.5, "rated 3.5★"),
              ("skip", None, "✕ skipped"), ("view", None, "viewed"), ("interaction", 1.0, "chose"),
              ("dislike", None, "✕ disliked"), ("purchase", None, "bought"), ("click", None, "opened")]
    day = 1_672_531_200.0  # 2023-01-01

    def history(route: Any) -> None:
        resp = route.fetch()
        items = [{"item_id": f"sp{n}", "title": f"Item {n}", "type": ty, "timestamp": day,
                  "value": value} for n, (ty, value, _) in enumerate(events)]
        route.fulfill(response=resp, json={**resp.json(), "items": items})

    page.route(lambda url: "/history?" in url, history)
    pick_first_user(page)
    positive = page.get_by_test_id("history-list").get_by_test_id("history-meta")
    negative = page.get_by_test_id("history-negative").get_by_test_id("history-meta")
    expect(positive).to_have_text([f"{w} · 2023-01-01" for ty, _, w in events
                                   if ty not in ("skip", "dislike")])
    expect(negative).to_have_text([f"{w} · 2023-01-01" for ty, _, w in events
                                   if ty in ("skip", "dislike")])
    expect(page.get_by_test_id("history-negative-box")).to_be_visible()
    expect(page.locator("[data-testid=history-panel] li.negative")).to_have_count(2)
    expect(page.get_by_test_id("history-panel")).not_to_contain_text("interaction")

    # only "not for me" events: the main list says nothing was liked
    events[:] = [("skip", None, "✕ skipped")]
    pick_user(page, page.locator("[data-testid=user-options] option").nth(1).get_attribute("value"))
    expect(page.get_by_test_id("history-empty")).to_have_text("Nothing liked or chosen yet.")
    expect(negative).to_have_text(["✕ skipped · 2023-01-01"])
    assert_clean(log, live_server)
