"""Browser-test fixtures: the real app under uvicorn on a free loopback port, and Chromium.

The app is served from a background thread over a small synthetic dataset; the browser is
Debian's Chromium driven by Playwright (sync API).  Nothing outside 127.0.0.1 is contacted.

The catalog has an ``image_url`` column on the server's own origin: ``/covers/<id>.svg`` is
answered by the browser fixture with a small picture, ``/covers/missing-<id>.png`` is left to
the app, which has no such file (404), and some items have no image at all.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@dataclass
class LiveServer:
    url: str  # http://127.0.0.1:PORT
    key: str  # an admin API key
    app: Any
    users: list[str] = field(default_factory=list)


THEMES = {
    "space": ("Rocket", "Galaxy", "Comet", "Orbit", "Nebula"),
    "comedy": ("Laugh", "Prank", "Giggle", "Blunder", "Silly"),
    "crime": ("Heist", "Alibi", "Verdict", "Motive", "Witness"),
    "kids": ("Puppy", "Treehouse", "Crayon", "Teddy", "Playground"),
}
GENRES = {"space": "Sci-Fi|Adventure", "comedy": "Comedy", "crime": "Crime|Drama",
          "kids": "Children|Animation"}
N_USERS = 40
#: An item whose catalog title puts its article last, as MovieLens titles do.
CLOSE_SHAVE = ("co5", "Close Shave, A")


def image_kind(item_id: str) -> str:
    """Which picture the fixture catalog gives an item: "ok", "missing" or "none"."""
    return ("ok", "missing", "none")[int(item_id[2:]) % 3]


def item_year(item_id: str) -> int:
    return 1950 + (int(item_id[2:]) * 7 + ord(item_id[0])) % 70


def cover_svg(item_id: str) -> str:
    """The picture served for an "ok" cover: a coloured rectangle naming the item."""
    return ("<svg xmlns='http://www.w3.org/2000/svg' width='90' height='128'>"
            "<rect width='90' height='128' fill='#2f6f8f'/>"
            f"<text x='45' y='70' font-size='18' fill='#fff' text-anchor='middle'>{item_id}</text>"
            "</svg>")


class HashingEncoder:
    """A deterministic stand-in for the sentence encoder: hashed bag of words, unit length.

    Texts sharing words get similar vectors, so search and "because" explanations have a
    known answer without loading the language model.
    """

    dim = 64

    def encode(self, texts: Any, progress: bool = True) -> Any:
        import hashlib

        import numpy as np

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for r, text in enumerate(texts):
            # URLs (image columns) carry no meaning for this stand-in: leave them out
            text = re.sub(r"\w*url: \S*|\S+://\S*", " ", str(text))
            for word in re.findall(r"[a-z]+", text.lower()):
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "big")
                out[r, h % self.dim] += 1.0 if (h >> 16) & 1 else -1.0
            n = float(np.linalg.norm(out[r]))
            out[r] = out[r] / n if n > 0 else out[r]
        return out

    def encode_items(self, data: Any, template: str | None = None, progress: bool = True) -> Any:
        from serendip.text import item_texts

        return self.encode(item_texts(data, template), progress)


def synthetic_frames(seed: int = 0, base_url: str = "http://127.0.0.1") -> tuple[Any, Any]:
    """60 items in four themes and 40 users who each mostly follow one theme.

    Items have a title, genres, a year, a description and (for two in three) an image URL
    under ``base_url`` (see :func:`image_kind`).
    """
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows, theme_items = [], {}
    for theme, words in THEMES.items():
        ids = []
        for n in range(15):
            iid = f"{theme[:2]}{n}"
            ids.append(iid)
            title = f"{words[n % 5]} {theme} story {n}" if n >= 5 else f"The {words[n]} ({theme})"
            if iid == CLOSE_SHAVE[0]:
                title = CLOSE_SHAVE[1]
            kind = image_kind(iid)
            image = {"ok": f"{base_url}/covers/{iid}.svg",
                     "missing": f"{base_url}/covers/missing-{iid}.png", "none": ""}[kind]
            rows.append({"item_id": iid, "title": title, "genres": GENRES[theme],
                         "year": str(item_year(iid)),
                         "description": f"a {theme} film about {words[n % 5].lower()}s",
                         "image_url": image})
        theme_items[theme] = ids
    items = pd.DataFrame(rows)
    events, t = [], 1_600_000_000.0
    themes = list(THEMES)
    for u in range(N_USERS):
        fav = themes[u % len(themes)]
        picks = list(rng.choice(theme_items[fav], size=8, replace=False))
        other = themes[(u + 1) % len(themes)]
        picks += list(rng.choice(theme_items[other], size=1 + u % 3, replace=False))
        for iid in rng.permutation(picks):
            events.append({"user_id": f"user{u}", "item_id": iid, "timestamp": t,
                           "rating": float(rng.integers(3, 6))})
            t += 3600.0
    return pd.DataFrame(events), items


def _build_app(tmp: Path, base_url: str) -> tuple[Any, str]:
    """The real app (create_app over a started Engine and a SQLite store) on synthetic data.

    ``base_url`` is where the app will be served (its catalog's image URLs point there).
    Returns (app, admin key).
    """
    from serendip.data import Dataset
    from serendip.pipeline import FitConfig, Recommender
    from serendip.service.app import create_app
    from serendip.service.engine import Engine, EngineConfig
    from serendip.store import open_store

    events, items = synthetic_frames(base_url=base_url)
    events.to_csv(tmp / "events.csv", index=False)
    items.to_csv(tmp / "items.csv", index=False)
    encoder = HashingEncoder()
    data = Dataset.from_frames(events[["user_id", "item_id", "timestamp"]], items)
    config = FitConfig(encoder={"cache_dir": None}, models={
        "popularity": {}, "ease": {"l2": 50.0},
        "ease_recent": {"type": "ease", "l2": 50.0, "half_life": 20.0},
        "als": {"factors": 8, "iterations": 5, "use_gpu": False}, "semantic": {}, "textcf": {},
        "transition": {},
    })
    rec = Recommender.fit(data, config, progress=False, encoder=encoder)  # type: ignore[arg-type]
    store = open_store(f"sqlite:///{tmp / 'store.db'}")
    engine = Engine(
        store,
        EngineConfig(data_dir=tmp / "data", seed_interactions=str(tmp / "events.csv"),
                     seed_items=str(tmp / "items.csv")),
        recommender=rec, encoder=encoder,
    )
    engine.seed()  # the store holds the same items and events the model was fitted on
    engine.start()
    key = store.create_api_key("web-tests", "admin")
    return create_app(engine), key


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    app, key = _build_app(tmp_path_factory.mktemp("web-app"), url)
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the app did not start under uvicorn")
        time.sleep(0.05)
    try:
        yield LiveServer(url, key, app)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"browser tests need Debian's Chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class PageLog:
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


@pytest.fixture
def web(chromium: Any, live_server: LiveServer) -> Iterator[tuple[Any, PageLog]]:
    """A fresh browser context and page, with console errors and every request recorded.

    Any request to anywhere but the live server is aborted (and recorded, so tests fail).
    """
    context = chromium.new_context(viewport={"width": 1280, "height": 900},
                                   service_workers="block")
    log = PageLog()

    cover = re.compile(re.escape(live_server.url) + r"/covers/(\w+)\.svg$")

    def route(r: Any) -> None:
        url = r.request.url
        m = cover.match(url)
        if m:
            r.fulfill(status=200, content_type="image/svg+xml", body=cover_svg(m.group(1)))
        elif url.startswith(live_server.url + "/") or url.startswith("data:"):
            r.continue_()
        else:
            r.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.on("console", lambda m: log.console_errors.append(f"{m.text} at {m.location.get('url', '')}")
            if m.type == "error" else None)
    page.on("pageerror", lambda e: log.console_errors.append(f"page error: {e}"))
    page.on("request", lambda r: log.requests.append(r.url))
    try:
        yield page, log
    finally:
        context.close()


# ------------------------------------------------------------------ helpers for the tests

K = 10
#: Console errors every page may log: the fixture catalog's covers that do not exist.
MISSING_COVER = re.compile(r"^Failed to load resource: .*404.* at \S+/covers/missing-\w+\.png$")


def open_page(page: Any, server: LiveServer) -> None:
    """Load the page with the admin key in the fragment; wait for presets and users."""
    from playwright.sync_api import expect

    page.goto(f"{server.url}/#key={server.key}")
    expect(page.get_by_test_id("key-status")).to_have_text("API key: set")
    # The presets and the users arrive from the API.
    expect(page.locator("[data-testid=preset-select] option")).not_to_have_count(0)
    expect(page.locator("[data-testid=user-options] option").first).to_be_attached()


def pick_user(page: Any, user: str) -> None:
    """Type a user id, press Enter and wait for that user's list."""
    from playwright.sync_api import expect

    with page.expect_response(lambda r: "/recommendations?" in r.url) as resp:
        page.get_by_test_id("user-input").fill(user)
        page.get_by_test_id("user-input").press("Enter")
    assert resp.value.status == 200
    expect(page.get_by_test_id("rec-list")).to_have_attribute("data-state", "ready")
    expect(page.get_by_test_id("rec-list")).to_have_attribute("data-user", user)


def pick_first_user(page: Any) -> str:
    user = page.locator("[data-testid=user-options] option").first.get_attribute("value")
    assert user
    pick_user(page, user)
    return user


def card_titles(page: Any, list_id: str = "rec-list") -> list[str]:
    return page.locator(f"[data-testid={list_id}] [data-testid=card-title]").all_inner_texts()


def assert_clean(page_log: PageLog, server: LiveServer, allow: tuple[str, ...] = ()) -> None:
    """No console errors (but the expected ones) and no request outside the app's origin.

    ``allow``: regular expressions for console errors a test provoked on purpose.
    """
    allowed = [MISSING_COVER, *(re.compile(a) for a in allow)]
    errors = [e for e in page_log.console_errors if not any(a.search(e) for a in allowed)]
    assert errors == []
    outside = [u for u in page_log.requests
               if not (u.startswith(server.url + "/") or u.startswith("data:"))]
    assert outside == []
