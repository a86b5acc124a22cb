"""Browser-test fixtures: the real app under uvicorn on a free loopback port, and Chromium.

The app is served from a background thread over a small synthetic dataset; the browser is
Debian's Chromium driven by Playwright (sync API).  Nothing outside 127.0.0.1 is contacted.
"""

from __future__ import annotations

import os
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


class HashingEncoder:
    """A deterministic stand-in for the sentence encoder: hashed bag of words, unit length.

    Texts sharing words get similar vectors, so search and "because" explanations have a
    known answer without loading the language model.
    """

    dim = 64

    def encode(self, texts: Any, progress: bool = True) -> Any:
        import hashlib
        import re

        import numpy as np

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for r, text in enumerate(texts):
            for word in re.findall(r"[a-z]+", str(text).lower()):
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "big")
                out[r, h % self.dim] += 1.0 if (h >> 16) & 1 else -1.0
            n = float(np.linalg.norm(out[r]))
            out[r] = out[r] / n if n > 0 else out[r]
        return out

    def encode_items(self, data: Any, template: str | None = None, progress: bool = True) -> Any:
        from serendip.text import item_texts

        return self.encode(item_texts(data, template), progress)


def synthetic_frames(seed: int = 0) -> tuple[Any, Any]:
    """60 items in four themes and 40 users who each mostly follow one theme."""
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
            rows.append({"item_id": iid, "title": title, "genres": GENRES[theme],
                         "description": f"a {theme} film about {words[n % 5].lower()}s"})
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


def _build_app(tmp: Path) -> tuple[Any, str]:
    """The real app (create_app over a started Engine and a SQLite store) on synthetic data.

    Returns (app, admin key).
    """
    from serendip.data import Dataset
    from serendip.pipeline import FitConfig, Recommender
    from serendip.service.app import create_app
    from serendip.service.engine import Engine, EngineConfig
    from serendip.store import open_store

    events, items = synthetic_frames()
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

    app, key = _build_app(tmp_path_factory.mktemp("web-app"))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
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
        yield LiveServer(f"http://127.0.0.1:{port}", key, app)
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

    def route(r: Any) -> None:
        if r.request.url.startswith(live_server.url + "/") or r.request.url.startswith("data:"):
            r.continue_()
        else:
            r.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.on("console", lambda m: log.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: log.console_errors.append(f"page error: {e}"))
    page.on("request", lambda r: log.requests.append(r.url))
    try:
        yield page, log
    finally:
        context.close()
