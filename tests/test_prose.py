from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serendip.prose import (
    ProseResult,
    check_facts,
    explain_in_prose,
    prose,
    reason_clause,
    template_prose,
)
from serendip.rerank.base import RELEVANCE_GOOD, RELEVANCE_TOP
from serendip.rerank.calibration import interest_reason
from serendip.rerank.mmr import VARIETY
from serendip.rerank.multi_objective import exposure_reason, fresh_reason, novelty_reason
from serendip.rerank.serendipity import unexpected_reason
from serendip.rerank.tail import tail_reason

LIKED = "because you liked Fargo and Heat"
FEW = "few people have found it yet (12 so far)"


@dataclass
class Reply:
    text: str


class FixedGenerator:
    """Answers every request with the same text and keeps the messages it was sent."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.calls: list[Any] = []

    def generate(self, messages: Any, *, max_tokens: int, temperature: float = 0.0,
                 json_schema: Any = None) -> Reply:
        self.calls.append((messages, max_tokens, temperature))
        return Reply(self.text)


class BrokenGenerator:
    def generate(self, messages: Any, *, max_tokens: int, temperature: float = 0.0,
                 json_schema: Any = None) -> Reply:
        raise RuntimeError("model not loaded")


def test_the_example_reads_as_one_sentence() -> None:
    assert explain_in_prose("Blue Velvet", [LIKED, FEW]) == (
        "You liked Fargo and Heat, and this is close to them; few people have found it yet "
        "\u2014 12 so far."
    )


@pytest.mark.parametrize(("reason", "clause"), [
    ("because you liked Fargo", "you liked Fargo, and this is close to it"),
    ("popular right now", "many people are choosing it right now"),
    ("popular with many people", "many people have chosen it"),
    ("few people have found it yet (1,204 so far)", "few people have found it yet \u2014 1,204 so far"),
    ("nobody has chosen it yet", "nobody has chosen it yet"),
    ("a rare find: only 3 people have chosen it", "it is a rare find \u2014 only 3 people have chosen it"),
    ("unlike the rest of this list: a documentary", "unlike the rest of this list, it is a documentary"),
    ("unlike the rest of this list: tagged \u201cslow burn\u201d",
     "unlike the rest of this list, it is tagged \u201cslow burn\u201d"),
    ("unlike the rest of this list", "it is unlike the rest of this list"),
    ("unlike what you usually choose, yet a good match",
     "it is unlike what you usually choose, yet a good match"),
    ("brings back your interest in Film-Noir (3 of the 40 you chose)",
     "it brings back your interest in Film-Noir \u2014 3 of the 40 you chose"),
    ("new in the catalog: nobody has chosen it yet",
     "it is new in the catalog, and nobody has chosen it yet"),
    ("new here: only 2 people have chosen it so far",
     "it is new here \u2014 only 2 people have chosen it so far"),
    ("one of your closest matches", "it is one of your closest matches"),
    ("a good match for you", "it is a good match for you"),
    ("closely matches \u201cquiet films about the sea\u201d",
     "it closely matches \u201cquiet films about the sea\u201d"),
    ("partly matches \u201cspace\u201d", "it partly matches \u201cspace\u201d"),
    ("like Toy Story (1995), which you named", "it is like Toy Story (1995), which you named"),
    ("from 1972, older as you asked", "it is from 1972, older as you asked"),
    ("Comedy and Drama, as you asked", "it fits Comedy and Drama, as you asked"),
    ("less well known than the usual picks", "it is less well known than the usual picks"),
    ("given a turn: not recommended to anyone lately",
     "it is given a turn \u2014 not recommended to anyone lately"),
    ("the nearest match to your request in this catalog",
     "it is the nearest match to your request in this catalog"),
    ("listed to fill the list: no relevance score", "listed to fill the list: no relevance score"),
    ("Handpicked by the staff", "Handpicked by the staff"),
])
def test_each_reason_kind_has_its_clause(reason: str, clause: str) -> None:
    assert reason_clause(reason) == clause
    assert template_prose("X", [reason]) == clause[0].upper() + clause[1:] + "."


def test_the_reasons_the_rerankers_write_are_all_recognised() -> None:
    written = [tail_reason(12), tail_reason(0), novelty_reason(3, True), novelty_reason(0, True),
               novelty_reason(900, False), fresh_reason(0), fresh_reason(4),
               exposure_reason(0.0), exposure_reason(0.02), VARIETY, unexpected_reason(0.1),
               interest_reason("Film-Noir", 3, 40), RELEVANCE_TOP, RELEVANCE_GOOD]
    for r in written:
        assert reason_clause(r) != r or r == tail_reason(0), r


def test_many_reasons_make_two_sentences_and_repeats_are_dropped() -> None:
    text = template_prose("X", [LIKED, RELEVANCE_TOP, FEW, "popular right now", FEW])
    assert text == (
        "You liked Fargo and Heat, and this is close to them; it is one of your closest "
        "matches. Few people have found it yet \u2014 12 so far; many people are choosing it "
        "right now."
    )


def test_no_reasons_says_so() -> None:
    assert explain_in_prose("Heat", []) == "No reason was recorded for Heat."


def test_a_faithful_generation_is_kept() -> None:
    gen = FixedGenerator("Since you liked Heat and Fargo, this is close to both, and only 12 "
                         "people have found it.")
    got = prose("Blue Velvet", [LIKED, FEW], generator=gen)
    assert got == ProseResult(gen.text, "generator", None)
    (messages, max_tokens, temperature), = gen.calls
    assert temperature == 0.0 and max_tokens > 0
    prompt = "\n".join(m["content"] for m in messages)
    assert LIKED in prompt and FEW in prompt and "Blue Velvet" in prompt


def test_an_invented_title_falls_back_to_the_template() -> None:
    gen = FixedGenerator("You liked Fargo, and fans of The Big Lebowski love it too.")
    got = prose("Blue Velvet", [LIKED, FEW], generator=gen)
    assert got.source == "template"
    assert got.text == template_prose("Blue Velvet", [LIKED, FEW])
    assert got.rejected_reason is not None and "Big Lebowski" in got.rejected_reason


def test_an_invented_number_falls_back_to_the_template() -> None:
    gen = FixedGenerator("You liked Fargo and Heat; only 15 people have found it so far.")
    got = prose("Blue Velvet", [LIKED, FEW], generator=gen)
    assert got.source == "template"
    assert got.rejected_reason == "the number 15 is not in the facts"


def test_an_invented_quote_a_link_and_a_name_are_refused() -> None:
    reasons = ["closely matches \u201cquiet films about the sea\u201d"]
    assert check_facts("It closely matches \u201cquiet films about the sea\u201d.", "Jaws",
                       reasons) is None
    assert check_facts("It matches \u201cloud films\u201d.", "Jaws", reasons) is not None
    assert check_facts("See https://example.org for more.", "Jaws", reasons) == (
        "the answer contains a link")
    assert check_facts("It is by Steven Spielberg.", "Jaws", reasons) is not None
    assert check_facts("Jaws is a quiet film about the sea.", "Jaws", reasons) is None
    assert check_facts("", "Jaws", reasons) == "the answer is empty"


def test_facts_widen_what_may_be_named() -> None:
    facts = {"because": [{"title": "The Godfather"}], "popularity": {"users": 1204.0}}
    text = "Like The Godfather, which you liked, 1,204 people chose it."
    assert check_facts(text, "Heat", ["popular right now"], facts) is None
    assert check_facts(text, "Heat", ["popular right now"]) is not None
    gen = FixedGenerator(text)
    assert prose("Heat", ["popular right now"], facts, gen).source == "generator"


def test_a_failing_or_silent_generator_leaves_the_template() -> None:
    got = prose("Heat", [FEW], generator=BrokenGenerator())
    assert got.source == "template" and got.text == template_prose("Heat", [FEW])
    assert got.rejected_reason == "the generator failed: model not loaded"
    assert prose("Heat", [FEW], generator=FixedGenerator("  ")).rejected_reason == (
        "the answer is empty")


_NAME = st.lists(st.from_regex(r"[A-Z][a-z]{1,7}", fullmatch=True), min_size=1, max_size=3
                 ).map(" ".join)
_COUNT = st.integers(0, 2_000_000)
_KINDS = [
    st.builds(lambda a, b: f"because you liked {a} and {b}", _NAME, _NAME),
    st.builds(lambda a: f"because you liked {a}", _NAME),
    st.builds(lambda n: tail_reason(n), _COUNT),
    st.builds(lambda n: novelty_reason(n, True), _COUNT),
    st.builds(lambda n: fresh_reason(n), _COUNT),
    st.builds(lambda a, n, m: interest_reason(a, n, m), _NAME, _COUNT, _COUNT),
    st.builds(lambda a: f"unlike the rest of this list: tagged \u201c{a}\u201d", _NAME),
    st.builds(lambda a: f"like {a}, which you named", _NAME),
    st.builds(lambda a: f"{a}, as you asked", _NAME),
    st.builds(lambda y: f"from {y}, older as you asked", st.integers(1800, 2030)),
    st.builds(lambda a: f"closely matches \u201c{a.lower()}\u201d", _NAME),
    st.sampled_from(["popular right now", VARIETY, RELEVANCE_TOP, RELEVANCE_GOOD,
                     unexpected_reason(0.0), "a documentary for you"]),
]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(*_KINDS), min_size=1, max_size=6), _NAME)
def test_the_template_names_nothing_absent_from_the_reasons(reasons: list[str],
                                                            title: str) -> None:
    text = template_prose(title, reasons)
    assert check_facts(text, "", reasons, max_chars=10_000) is None
    source = " ".join(reasons)
    for n in re.findall(r"\d[\d,]*", text):
        assert n.rstrip(",") in source
    assert text.endswith(".") and text[0].isupper()
