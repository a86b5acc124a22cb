"""The page's chat box in a real browser (Chromium + Playwright) against the real app.

A person types what they want, naming a title of the fixture catalog (see conftest.py); each
turn shows serendip's reply and its picks as the page's usual cards, and the "so far" chips
show what the conversation has established.  The next message refines it, "Surprise me" asks
for the unexpected, a reload resumes the conversation from the server's record, and "New
conversation" starts over.  Failures are one line; text from the server is shown as text.
"""

from __future__ import annotations

import json
import re
from typing import Any

from playwright.sync_api import expect

from tests.web.conftest import K, LiveServer, PageLog, assert_clean, open_page

#: The fixture catalog's crime item 0 and its comedy item with a trailing article.
HEIST = ("cr0", "The Heist (crime)")
CLOSE_SHAVE_NATURAL = ("co5", "A Close Shave")
STORAGE = "serendip.conversation"


def chat_send(page: Any, text: str) -> Any:
    """Type a message into the chat box, press Enter; return the API's response."""
    box = page.get_by_label("Tell serendip what you want")
    with page.expect_response(lambda r: "/v1/conversations" in r.url
                              and r.request.method == "POST") as resp:
        box.fill(text)
        box.press("Enter")
    return resp.value


def turns(page: Any) -> Any:
    return page.get_by_test_id("chat-log").get_by_test_id("chat-turn")


def chips(page: Any) -> Any:
    return page.get_by_test_id("chat-chips").get_by_test_id("chat-chip")


def shown_ids(list_locator: Any) -> list[str]:
    return [c.get_attribute("data-item-id") or ""
            for c in list_locator.get_by_test_id("rec-card").all()]


def stored_id(page: Any) -> Any:
    return page.evaluate(f"sessionStorage.getItem('{STORAGE}')")


def test_a_conversation_refines_resumes_and_starts_over(web: tuple[Any, PageLog],
                                                       live_server: LiveServer,
                                                       tmp_path: Any) -> None:
    page, log = web
    open_page(page, live_server)
    chat = page.get_by_test_id("chat-section")
    expect(chat.get_by_test_id("chat-new")).to_be_hidden()
    expect(chat.get_by_test_id("chat-surprise")).to_be_enabled()  # a first message too
    assert page.get_by_test_id("chat-live").get_attribute("aria-live") == "polite"

    # 1. A first message naming a catalog title, liked, with a wish.
    first = chat_send(page, f"I just watched {HEIST[1]} and loved it — something less dark next?")
    assert first.status == 200 and first.request.url.endswith("/v1/conversations")
    sent = json.loads(first.request.post_data or "{}")
    assert sent == {"message": f"I just watched {HEIST[1]} and loved it — something less dark next?",
                    "k": K}  # no user picked: no user_id
    one = first.json()
    cid = one["conversation_id"]
    assert one["state"]["liked"] == [HEIST[0]] and one["state"]["avoid"] == ["dark"]
    assert one["items"] and HEIST[1] in one["reply"]
    expect(turns(page)).to_have_count(1)
    expect(turns(page).nth(0).get_by_test_id("chat-reply")).to_have_text(one["reply"])
    picks = turns(page).nth(0).get_by_test_id("chat-list")
    expect(picks.get_by_test_id("rec-card")).to_have_count(len(one["items"]))
    assert shown_ids(picks) == [it["item_id"] for it in one["items"]]
    expect(picks.get_by_test_id("card-title")).to_have_text([it["title"] for it in one["items"]])
    expect(chips(page)).to_have_text([f"♥ Liked: {HEIST[1]}", "Less dark"])
    expect(page.get_by_test_id("chat-live")).to_contain_text(one["reply"])
    expect(page.get_by_label("Tell serendip what you want")).to_be_focused()  # ready to refine
    expect(page.get_by_label("Tell serendip what you want")).to_have_value("")
    assert stored_id(page) == cid
    expect(chat.get_by_test_id("chat-new")).to_be_visible()
    expect(chat.get_by_test_id("chat-surprise")).to_be_enabled()

    # 2. A refinement: the title is now disliked, and a genre is wanted.
    second = chat_send(page, f"actually I didn't like {HEIST[1]}, a comedy please")
    assert second.status == 200 and second.request.url.endswith(f"/v1/conversations/{cid}/messages")
    two = second.json()
    assert two["conversation_id"] == cid and two["turns"] == 2
    assert two["state"]["liked"] == [] and two["state"]["disliked"] == [HEIST[0]]
    assert two["state"]["genres"] == ["comedy"]
    assert HEIST[0] not in [it["item_id"] for it in two["items"]]
    expect(turns(page)).to_have_count(2)
    expect(turns(page).nth(1).get_by_test_id("chat-reply")).to_have_text(two["reply"])
    expect(chips(page)).to_have_text([f"✕ Not for me: {HEIST[1]}", "Genre: comedy", "Less dark"])
    # the newest picks are open, the earlier ones folded under their summary
    expect(turns(page).nth(0).get_by_test_id("chat-picks")).not_to_have_attribute("open", "")
    expect(turns(page).nth(0).get_by_test_id("chat-list")).to_be_hidden()
    latest = turns(page).nth(1).get_by_test_id("chat-list")
    expect(latest.get_by_test_id("rec-card")).to_have_count(len(two["items"]))
    assert shown_ids(latest) == [it["item_id"] for it in two["items"]]
    for card in latest.get_by_test_id("rec-card").all():  # the usual cards: fields and actions
        expect(card.get_by_test_id("like-button")).to_be_visible()
    expect(latest.locator("[data-field=Genres] dd").first).to_contain_text("Comedy")

    # 3. "Surprise me" raises discovery in the same conversation.
    with page.expect_response(lambda r: r.url.endswith(f"/v1/conversations/{cid}/messages")) as resp:
        chat.get_by_test_id("chat-surprise").click()
    assert json.loads(resp.value.request.post_data or "{}")["message"] == "surprise me"
    three = resp.value.json()
    assert three["state"]["discovery"] == 0.8 and three["state"]["genres"] == ["comedy"]
    expect(turns(page)).to_have_count(3)
    expect(page.get_by_test_id("chat-log").get_by_test_id("chat-message")).to_have_text(
        [sent["message"], f"actually I didn't like {HEIST[1]}, a comedy please", "surprise me"])
    expect(chips(page)).to_have_text(
        [f"✕ Not for me: {HEIST[1]}", "Genre: comedy", "Less dark", "★ Surprises"])
    expect(turns(page).nth(2).get_by_test_id("chat-reply")).to_contain_text("surprises")
    expect(page.get_by_label("Tell serendip what you want")).to_be_focused()
    page.screenshot(path=str(tmp_path / "chat-desktop.png"), full_page=True)
    print(f"screenshot: {tmp_path / 'chat-desktop.png'}")

    # 4. A reload resumes it from the server's record: messages, replies, chips and picks.
    replies = [one["reply"], two["reply"], three["reply"]]
    with page.expect_response(lambda r: r.url.endswith(f"/v1/conversations/{cid}")) as got:
        page.reload()
    assert got.value.status == 200 and got.value.request.method == "GET"
    expect(turns(page)).to_have_count(3)
    expect(page.get_by_test_id("chat-log").get_by_test_id("chat-reply")).to_have_text(replies)
    expect(chips(page)).to_have_text(
        [f"✕ Not for me: {HEIST[1]}", "Genre: comedy", "Less dark", "★ Surprises"])
    last = turns(page).nth(2).get_by_test_id("chat-list")
    expect(last.get_by_test_id("rec-card")).to_have_count(len(three["items"]))
    assert shown_ids(last) == [it["item_id"] for it in three["items"]]
    expect(last.get_by_test_id("card-title")).to_have_text([it["title"] for it in three["items"]])
    # an earlier turn's picks are built when opened
    earlier = turns(page).nth(0)
    expect(earlier.get_by_test_id("rec-card")).to_have_count(0)
    earlier.get_by_test_id("chat-picks").locator("summary").click()
    expect(earlier.get_by_test_id("rec-card")).to_have_count(len(one["items"]))
    assert shown_ids(earlier.get_by_test_id("chat-list")) == [it["item_id"] for it in one["items"]]
    assert stored_id(page) == cid
    expect(page.get_by_test_id("chat-live")).to_contain_text("Conversation resumed")

    # ...and it goes on from where it was.
    fourth = chat_send(page, "something older")
    assert fourth.request.url.endswith(f"/v1/conversations/{cid}/messages")
    assert fourth.json()["state"]["era"] == "older"
    expect(chips(page)).to_have_text(
        [f"✕ Not for me: {HEIST[1]}", "Genre: comedy", "Less dark", "Era: older", "★ Surprises"])

    # 5. "New conversation" starts over: nothing shown, nothing kept, focus in the box.
    page.get_by_test_id("chat-new").click()
    expect(page.get_by_test_id("chat-log").locator("li")).to_have_count(0)
    expect(page.get_by_test_id("chat-state")).to_be_hidden()
    expect(page.get_by_label("Tell serendip what you want")).to_be_focused()
    expect(page.get_by_test_id("chat-new")).to_be_hidden()
    expect(page.get_by_test_id("chat-surprise")).to_be_enabled()
    assert stored_id(page) is None
    fresh = chat_send(page, f"I loved {CLOSE_SHAVE_NATURAL[1]}, more like that")
    assert fresh.request.url.endswith("/v1/conversations")
    new = fresh.json()
    assert new["conversation_id"] != cid and new["state"]["liked"] == [CLOSE_SHAVE_NATURAL[0]]
    expect(turns(page)).to_have_count(1)
    expect(chips(page)).to_have_text([f"♥ Liked: {CLOSE_SHAVE_NATURAL[1]}", "More like those"])
    assert stored_id(page) == new["conversation_id"]
    assert_clean(log, live_server)


def test_chat_with_a_picked_user_blends_in_their_history(web: tuple[Any, PageLog],
                                                        live_server: LiveServer) -> None:
    page, log = web
    open_page(page, live_server)
    user = page.locator("[data-testid=user-options] option").first.get_attribute("value")
    page.get_by_test_id("user-input").fill(user or "")
    page.get_by_test_id("user-input").press("Enter")
    expect(page.get_by_test_id("rec-list")).to_have_attribute("data-state", "ready")
    resp = chat_send(page, "a comedy please")
    assert json.loads(resp.request.post_data or "{}")["user_id"] == user
    assert resp.json()["user_id"] == user
    expect(chips(page)).to_have_text(["Genre: comedy", f"With user {user}'s history"])
    # a like on a chat card is the usual feedback for the picked user
    card = turns(page).nth(0).get_by_test_id("rec-card").first
    with page.expect_response(lambda r: r.url.endswith("/v1/events")) as ev:
        card.get_by_test_id("like-button").click()
    assert ev.value.status == 201
    assert json.loads(ev.value.request.post_data or "{}")["events"][0]["user_id"] == user
    expect(card.get_by_test_id("like-button")).to_have_text("Liked ✓")
    assert_clean(log, live_server)


def test_surprise_me_can_start_a_conversation(web: tuple[Any, PageLog],
                                             live_server: LiveServer) -> None:
    page, log = web
    open_page(page, live_server)
    with page.expect_response(lambda r: r.url.endswith("/v1/conversations")
                              and r.request.method == "POST") as resp:
        page.get_by_test_id("chat-surprise").click()
    got = resp.value.json()
    assert resp.value.status == 200 and got["items"] and got["discovery"] == 0.8
    expect(turns(page).nth(0).get_by_test_id("chat-reply")).to_have_text(got["reply"])
    assert got["reply"].startswith("Here are some surprises: ")
    expect(turns(page).nth(0).get_by_test_id("rec-card")).to_have_count(len(got["items"]))
    expect(chips(page)).to_have_text(["★ Surprises"])
    assert_clean(log, live_server)


def test_chat_failures_are_one_line_and_server_text_stays_text(web: tuple[Any, PageLog],
                                                              live_server: LiveServer) -> None:
    page, log = web
    open_page(page, live_server)
    box = page.get_by_label("Tell serendip what you want")
    error = page.get_by_test_id("chat-error")

    # An empty message is not sent.
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url) if "/v1/conversations" in r.url else None)
    box.fill("   ")
    box.press("Enter")
    expect(error).to_have_text(re.compile(r"^Type a message first"))
    assert requests == []

    # Markup in the reply and in a title is shown as text, not built into the page.
    def tamper(route: Any) -> None:
        real = route.fetch()
        data = real.json()
        data["reply"] = "<img src=x data-evil=1> <b>bold</b> & more"
        data["items"][0]["title"] = "<script>window.evil = 1</script>"
        data["something_new"] = {"a field": "added later"}  # unknown fields are ignored
        route.fulfill(response=real, body=json.dumps(data))

    page.route("**/v1/conversations", tamper)
    chat_send(page, "a comedy please")
    reply = turns(page).nth(0).get_by_test_id("chat-reply")
    expect(reply).to_have_text("<img src=x data-evil=1> <b>bold</b> & more")
    assert reply.locator("img, b").count() == 0
    expect(turns(page).nth(0).get_by_test_id("card-title").first).to_have_text(
        "<script>window.evil = 1</script>")
    assert page.evaluate("window.evil") is None
    assert page.locator("[data-evil]").count() == 0
    page.unroute("**/v1/conversations", tamper)

    # A failed refinement: one line with the status and the server's words; the message stays
    # in the box to send again, and the conversation is unchanged.
    page.route("**/v1/conversations/*/messages", lambda r: r.fulfill(
        status=503, content_type="application/json",
        body=json.dumps({"error": "unavailable", "detail": "the store is not answering"})))
    box.fill("something older")
    box.press("Enter")
    expect(error).to_have_text(
        "Could not send your message: 503 the store is not answering")
    expect(error).to_have_attribute("role", "alert")
    height = error.evaluate("e => e.getBoundingClientRect().height")
    line = error.evaluate("e => parseFloat(getComputedStyle(e).lineHeight)")
    assert height < 2.5 * line  # one line (with its padding)
    expect(box).to_have_value("something older")
    expect(box).to_be_focused()
    expect(page.get_by_test_id("chat-log").get_by_test_id("chat-message")).to_have_count(1)
    expect(page.get_by_test_id("chat-send")).to_be_enabled()
    page.unroute("**/v1/conversations/*/messages")
    # the conversation was erased meanwhile (its person's data deleted): say what to do
    page.route("**/v1/conversations/*/messages", lambda r: r.fulfill(
        status=404, content_type="application/json",
        body=json.dumps({"error": "not_found", "detail": "unknown conversation id"})))
    box.press("Enter")
    expect(error).to_have_text(
        "This conversation is no longer stored: choose “New conversation” to start again.")
    expect(box).to_have_value("something older")
    page.unroute("**/v1/conversations/*/messages")

    # A real 4xx from the server: an over-long message (the box itself stops at 2000).
    assert box.get_attribute("maxlength") == "2000"
    box.evaluate("e => e.removeAttribute('maxlength')")
    box.fill("x" * 2001)
    box.press("Enter")
    expect(error).to_have_text(re.compile(
        r"^Could not send your message: 422 body\.message: String should have at most 2000"))
    box.fill("something older")
    box.press("Enter")
    expect(turns(page)).to_have_count(2)
    expect(error).to_be_hidden()

    # A stored id the server does not know: said once, forgotten, and a new one can start.
    page.evaluate(f"sessionStorage.setItem('{STORAGE}', 'feedfacefeedface')")
    page.reload()
    expect(error).to_have_text(
        "Your earlier conversation is no longer stored: start a new one below.")
    assert stored_id(page) is None
    expect(turns(page)).to_have_count(0)
    assert_clean(log, live_server, allow=(r"status of (503|422|404)",))


def test_chat_at_phone_width(chromium: Any, live_server: LiveServer, tmp_path: Any) -> None:
    context = chromium.new_context(viewport={"width": 375, "height": 740}, service_workers="block",
                                   is_mobile=True, has_touch=True)
    errors: list[str] = []
    try:
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        # covers are not served here: pictures fall back to initials
        page.route(re.compile(r".*/covers/.*"), lambda r: r.abort())
        page.goto(f"{live_server.url}/#key={live_server.key}")
        expect(page.get_by_test_id("key-status")).to_have_text("API key: set")
        page.get_by_label("Tell serendip what you want").scroll_into_view_if_needed()
        chat_send(page, f"I just watched {HEIST[1]} and loved it — something less dark next?")
        expect(turns(page).nth(0).get_by_test_id("rec-card").first).to_be_visible()
        expect(chips(page).first).to_be_visible()
        # nothing wider than the screen: no sideways scrolling of the page
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        # a turn's picks are one row to swipe through, each card narrower than the screen
        row = turns(page).nth(0).get_by_test_id("rec-card")
        a, b = row.nth(0).bounding_box(), row.nth(1).bounding_box()
        assert a is not None and b is not None
        assert a["width"] < 375 and b["x"] > a["x"] and abs(b["y"] - a["y"]) < 1
        listing = turns(page).nth(0).get_by_test_id("chat-list")
        assert listing.evaluate("e => e.scrollWidth > e.clientWidth")
        for test_id in ("chat-send", "chat-surprise", "chat-new"):
            box = page.get_by_test_id(test_id).bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375
            assert box["height"] >= 30  # big enough to tap
        turns(page).nth(0).scroll_into_view_if_needed()
        page.screenshot(path=str(tmp_path / "chat-phone.png"), full_page=True)
        print(f"screenshot: {tmp_path / 'chat-phone.png'}")
        assert [e for e in errors if not re.search(r"/covers/|ERR_FAILED", e)] == []
    finally:
        context.close()
