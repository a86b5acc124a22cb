"""Conversation turns with known expected state changes, on a small catalog."""

from __future__ import annotations

import re

import pytest

from serendip.conversation import (
    FAMILIAR,
    SURPRISE,
    ConversationState,
    apply,
    parse_message,
    reply,
)
from serendip.text.request import CatalogIndex

TITLES = ["Inception (2010)", "The Matrix (1999)", "Heat (1995)", "Toy Story (1995)",
          "Amelie (2001)", "Saw (2004)"]
GENRES = ["sci-fi|thriller", "sci-fi|action", "crime|thriller", "animation|comedy",
          "comedy|romance", "horror"]


@pytest.fixture(scope="module")
def index() -> CatalogIndex:
    return CatalogIndex(TITLES, GENRES, vocabulary=["funny", "space", "film", "dark", "next"])


def test_a_first_message_sets_liked_items_and_what_to_avoid(index: CatalogIndex) -> None:
    u = parse_message("I just watched Inception and loved it — something less dark next?",
                      index)
    assert u.liked == (0,) and u.disliked == ()
    assert u.avoid == ("dark",)
    s = apply(ConversationState(), u)
    assert s.liked == (0,) and s.avoid == ("dark",) and s.turns == 1


def test_feelings_follow_their_clause(index: CatalogIndex) -> None:
    u = parse_message("I loved The Matrix, but I hated Saw.", index)
    assert u.liked == (1,) and u.disliked == (5,)


def test_the_next_message_refines_the_state(index: CatalogIndex) -> None:
    s = apply(ConversationState(), parse_message("Something like Heat, no comedy", index))
    assert s.liked == (2,) and s.not_genres == ("comedy",)
    s = apply(s, parse_message("Actually I didn't like Heat. A comedy is fine", index))
    assert s.liked == () and s.disliked == (2,)
    assert s.genres == ("comedy",) and s.not_genres == ()  # the later wish wins
    s = apply(s, parse_message("surprise me", index))
    assert s.discovery == SURPRISE and s.genres == ("comedy",) and s.turns == 3
    s = apply(s, parse_message("hmm, more like that please", index))
    assert s.discovery == FAMILIAR


def test_the_reply_names_only_what_the_state_holds(index: CatalogIndex) -> None:
    s = apply(ConversationState(), parse_message("I loved Inception, something less dark",
                                                 index))
    text = reply(s, TITLES, ["Amelie (2001)", "Toy Story (1995)"])
    assert text == ("Since you liked Inception (2010), and you asked for less dark: "
                    "Amelie (2001), Toy Story (1995).")
    # every title named in the reply is a liked item or a recommendation
    rest = text
    for allowed in ("Inception (2010)", "Amelie (2001)", "Toy Story (1995)"):
        rest = rest.replace(allowed, "")
    assert not re.search(r"\(\d{4}\)", rest)
    assert "Nothing in the catalog fits" in reply(s, TITLES, [])


def test_a_message_with_nothing_known_is_not_understood(index: CatalogIndex) -> None:
    u = parse_message("xqzv blorp", index)
    assert not u.understood
    s = apply(ConversationState(), u)
    assert s.liked == () and s.genres == () and s.turns == 1
