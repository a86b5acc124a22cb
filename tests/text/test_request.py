"""Reading a request against a catalog: titles named, attribute words, known words; and, with
the real encoder on the bundled movie catalog, the search answers a person would expect."""

from __future__ import annotations

import numpy as np
import pytest

from serendip.text.request import CatalogIndex, item_years, parse_request
from serendip.text.templates import natural_title

TITLES = ["Star Wars (1977)", "Return of the Jedi (1983)", "Heat (1995)", "Kids (1995)",
          "Close Shave, A (1995)", "Casablanca (1942)", "Toy Story (1995)"]
GENRES = ["Sci-Fi|Adventure", "Sci-Fi|Adventure", "Crime|Thriller", "Drama", "Comedy|Animation",
          "Drama|Romance", "Comedy|Animation|Children's"]


@pytest.fixture(scope="module")
def index() -> CatalogIndex:
    return CatalogIndex(TITLES, [g.lower() for g in GENRES],
                        vocabulary=["funny", "space", "adventure", "dark", "film"])


def test_titles_named_are_found_longest_first_and_only_as_names(index: CatalogIndex) -> None:
    p = parse_request("something like Star Wars but older", index)
    assert p.mentions == (0,) and p.era == "older"
    # "for kids" is not the film Kids: a one-word title must be written as a name
    assert parse_request("a funny film for kids", index).mentions == ()
    assert parse_request("newer films like Heat", index).mentions == (2,)
    assert parse_request("like Return of the Jedi", index).mentions == (1,)


def test_genres_negations_and_leftover_words(index: CatalogIndex) -> None:
    p = parse_request("a comedy, not dark, no drama", index)
    assert p.genres == ("comedy",) and p.not_genres == ("drama",) and p.avoid == ("dark",)
    assert p.text == ""  # nothing else was asked
    q = parse_request("a funny space adventure for kids", index)
    assert q.genres == ("adventure",) and q.text == "funny space for kids"
    assert set(q.known_words) == {"funny", "space", "kids"}  # "kids" is in a title


def test_a_request_with_no_known_word_is_not_understood(index: CatalogIndex) -> None:
    p = parse_request("xqzv", index)
    assert not p.understood and p.known_words == ()
    assert parse_request("Heat", index).understood  # a title alone is enough


def test_years_from_a_field_or_the_title() -> None:
    y = item_years(["A (1999)", "B", "C (2001)"], ["1980", "", None])
    assert y[0] == 1980 and np.isnan(y[1]) and y[2] == 2001


def test_natural_titles() -> None:
    assert natural_title("Close Shave, A (1995)") == "A Close Shave (1995)"
    assert natural_title("Usual Suspects, The") == "The Usual Suspects"
    assert natural_title("Heat (1995)") == "Heat (1995)"
    assert natural_title(natural_title("Close Shave, A (1995)")) == "A Close Shave (1995)"


@pytest.mark.slow
def test_search_on_movielens_with_the_real_encoder(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from serendip.service import Engine, EngineConfig
    from serendip.store import open_store

    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    e = Engine(store, EngineConfig(data_dir=tmp_path, catalog_poll=None))
    try:
        e.start()
        nonsense = e.search("xqzv")
        assert nonsense["match"] == "none" and nonsense["items"] == [] and nonsense["note"]
        older = e.search("something like Star Wars but older", k=10)
        assert older["understood"]["titles"] == ["Star Wars"]
        years = [int(it["fields"]["year"]) for it in older["items"]]
        assert len(years) == 10 and all(y < 1977 for y in years)  # older than Star Wars
        assert all(not it["title"].startswith("Star Wars") for it in older["items"])
        kids = e.search("a funny space adventure for kids", k=10)
        titles = [it["title"] for it in kids["items"]]
        assert "Space Jam" in titles and kids["match"] == "good"
        docs = e.search("documentary", k=10)
        assert all("Documentary" in it["fields"]["genres"] for it in docs["items"])
        # the weak-match threshold: real requests' best matches are above it
        for q in ("a sad love story", "a funny space adventure for kids", "dark"):
            assert e.search(q, k=3)["match"] == "good", q
    finally:
        e.close()
        store.close()
