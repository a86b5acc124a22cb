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


def test_surprise_me_alone_asks_for_no_topic_and_the_reply_reads_as_a_sentence(
        index: CatalogIndex) -> None:
    u = parse_message("Surprise me!", index)
    assert u.discovery == SURPRISE and u.text == "" and u.understood
    s = apply(ConversationState(), u)
    assert reply(s, TITLES, ["Amelie (2001)"]) == "Here are some surprises: Amelie (2001)."


def test_the_reply_names_what_was_disliked(index: CatalogIndex) -> None:
    s = apply(ConversationState(), parse_message("I loved Heat. I hated Saw", index))
    assert reply(s, TITLES, ["Amelie (2001)"]) == (
        "Since you liked Heat (1995), leaving out Saw (2004): Amelie (2001).")


def test_nothing_understood_and_nothing_found_says_what_to_try(index: CatalogIndex) -> None:
    s = apply(ConversationState(), parse_message("xqzv blorp", index))
    text = reply(s, TITLES, [])
    assert text.startswith("I could not match that") and "loosening" not in text


def test_titles_are_found_as_people_write_them() -> None:
    idx = CatalogIndex(["Close Shave, A (1995)", "The Heist (crime)", "Heist (2001)"])
    assert parse_message("I loved A Close Shave", idx).liked == (0,)
    assert parse_message("I loved The Heist", idx).liked == (1,)
    # an alias never hides a title the catalog holds as written
    assert parse_message("Heist was great", idx).liked == (2,)


# ---------------------------------------------------------------- with a generator
class Scripted:
    """Answers every request with the next of ``replies`` and keeps the messages."""

    def __init__(self, *replies: str) -> None:
        self.replies = list(replies)
        self.sent: list[tuple[list[dict[str, str]], object]] = []

    def generate(self, messages, *, max_tokens, temperature=0.0, json_schema=None):  # type: ignore[no-untyped-def]
        from serendip.llm import Generation

        self.sent.append((messages, json_schema))
        return Generation(self.replies.pop(0), "scripted", 1, 1)


def _json(**kw: object) -> str:
    import json

    base: dict[str, object] = {"liked": [], "disliked": [], "genres": [], "not_genres": [],
                               "avoid": [], "era": None, "discovery": None, "text": ""}
    base.update(kw)
    return json.dumps(base)


def test_a_generated_parse_is_resolved_against_the_catalog(index: CatalogIndex) -> None:
    from serendip.conversation import UPDATE_SCHEMA, parse_with_generator

    gen = Scripted(_json(liked=["inception", "Heat (1995)", "Blade Runner"],
                         disliked=["Saw"], genres=["Comedies", "western"],
                         not_genres=["Horror"], avoid=["Dark", "two words", "42"],
                         era="older", discovery=0.8, text="  something   fun "))
    up = parse_with_generator("whatever the person wrote", index, gen)
    # titles by their normalised form; "Blade Runner" is not in the catalog: dropped
    assert up.liked == (0, 2) and up.disliked == (5,)
    assert up.genres == ("comedy",) and up.not_genres == ("horror",)  # "western": unknown
    assert up.avoid == ("dark",) and up.era == "older" and up.discovery == 0.8
    assert up.text == "something fun" and up.understood
    messages, schema = gen.sent[0]
    assert schema == UPDATE_SCHEMA and messages[-1]["content"] == "whatever the person wrote"
    state = apply(ConversationState(), up)
    assert state.liked == (0, 2) and state.disliked == (5,) and state.turns == 1


@pytest.mark.parametrize("bad", [
    "not json", '{"liked": "Heat"}', _json(discovery=2.0), _json(era="future"),
    _json(extra=1), '{"liked": []}',
])
def test_an_invalid_generated_parse_raises(index: CatalogIndex, bad: str) -> None:
    from serendip.conversation import parse_with_generator
    from serendip.llm import GenerationError

    with pytest.raises(GenerationError):
        parse_with_generator("I loved Heat", index, Scripted(bad))


def test_a_generated_reply_may_name_only_the_state_and_the_items() -> None:
    from serendip.conversation import reply_with_generator

    state = ConversationState(liked=(2,), avoid=("dark",), turns=1)
    recs = ["Toy Story (1995)", "Amelie (2001)"]
    ok = "Since you liked Heat, try Amelie and Toy Story."
    assert reply_with_generator("hi", state, TITLES, recs, Scripted(ok)) == (ok, None)
    text, why = reply_with_generator("hi", state, TITLES, recs,
                                     Scripted("You would love The Matrix."))
    assert text is None and why == "\u201cThe Matrix\u201d is not in the facts"
    text, why = reply_with_generator("hi", state, TITLES, recs, Scripted("Only 3 left!"))
    assert text is None and why == "the number 3 is not in the facts"
    assert reply_with_generator("hi", state, TITLES, [], Scripted(ok))[0] is None
