from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytest

from serendip.data.dataset import Dataset
from serendip.enrich import GENERATED_COLUMN, enrich, fallback_description, thin_items
from serendip.errors import ConfigError, DataError
from serendip.prose import check_facts
from serendip.text.templates import item_texts

LONG = "A long account of the plot, the people in it and where it was made, " * 2


def catalog() -> Dataset:
    """Six films; Babe, Clueless and Nixon have thin text (no or a short description).

    Choices: u0 Heat Fargo Babe Clueless; u1, u2 Heat Fargo Babe; u3 Heat Fargo Alien;
    u4 Heat Alien Nixon; u5 Nixon.  Popularity: Heat 5, Fargo 4, Babe 3, Alien 2, Clueless 1,
    Nixon 2.
    """
    chosen = {"u0": [0, 1, 2, 4], "u1": [0, 1, 2], "u2": [0, 1, 2], "u3": [0, 1, 3],
              "u4": [0, 3, 5], "u5": [5]}
    rows = [(u, f"i{i}", float(t)) for t, (u, items) in enumerate(chosen.items()) for i in items]
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    items = pd.DataFrame({
        "item_id": [f"i{i}" for i in range(6)],
        "title": ["Heat (1995)", "Fargo (1996)", "Babe (1995)", "Alien (1979)",
                  "Clueless (1995)", "Nixon (1995)"],
        "genres": ["Action|Crime", "Comedy|Crime", "Comedy", "Horror|Sci-Fi", "Comedy",
                   "Drama"],
        "description": [LONG, LONG, None, LONG, "", "A president."],
    })
    data = Dataset.from_frames(inter, items)
    vec = np.array([[0.0, 1.0], [0.8, 0.2], [0.9, 0.1], [-1.0, 0.0], [1.0, 0.0], [0.1, 0.9]],
                   dtype=np.float32)
    return data.with_item_vectors(vec)


@dataclass
class Reply:
    text: str


class FixedGenerator:
    def __init__(self, text: str) -> None:
        self.text = text
        self.prompts: list[str] = []

    def generate(self, messages: Any, *, max_tokens: int, temperature: float = 0.0,
                 json_schema: Any = None) -> Reply:
        self.prompts.append("\n".join(m["content"] for m in messages))
        return Reply(self.text)


def test_thin_items_are_found_least_chosen_first() -> None:
    data = catalog()
    assert thin_items(data).tolist() == [4, 5, 2]  # Clueless 1, Nixon 2, Babe 3
    # a high bar makes every item thin; ties in popularity keep the catalog order
    assert thin_items(data, min_chars=10_000).tolist() == [4, 3, 5, 2, 1, 0]
    with pytest.raises(ConfigError, match="min_chars must be a non-negative integer, got -1"):
        thin_items(data, min_chars=-1)


def test_fallback_description_is_made_of_the_data() -> None:
    data = catalog()
    assert fallback_description(data, 4) == (
        "A 1995 comedy. People who chose it also chose Heat (1995), Fargo (1996) and "
        "Babe (1995)."
    )
    assert fallback_description(data, 4, data.item_vectors, neighbours=2) == (
        "A 1995 comedy. People who chose it also chose Heat (1995) and Fargo (1996). "
        "Close in description to Babe (1995) and Fargo (1996), mostly comedy."
    )
    assert fallback_description(data, 5, neighbours=1) == (
        "A 1995 drama. Description: A president. People who chose it also chose Heat (1995)."
    )
    texts = item_texts(data)
    for i in range(data.n_items):
        text = fallback_description(data, i, data.item_vectors, neighbours=3)
        assert check_facts(text, "", texts, max_chars=10_000) is None, text
    assert "Alien" not in fallback_description(data, 4, data.item_vectors, neighbours=3)


def test_fallback_description_without_genres_uses_tags() -> None:
    inter = pd.DataFrame({"user_id": ["a", "a", "b"], "item_id": ["x", "y", "x"]})
    items = pd.DataFrame({"item_id": ["x", "y"], "title": ["Dune", "Emma"],
                          "tags": ["slow burn|desert", ""], "year": [1965, None]})
    data = Dataset.from_frames(inter, items)
    assert fallback_description(data, 0) == (
        "From 1965. Tagged \u201cslow burn\u201d and \u201cdesert\u201d. "
        "People who chose it also chose Emma.")
    assert fallback_description(data, 1, neighbours=0) == (
        "Emma: nothing more is known of it yet.")
    many = items.assign(tags=["|".join(f"t{n}" for n in range(12)), "t3|t3"])
    text = fallback_description(Dataset.from_frames(inter, many), 0, neighbours=0)
    assert text.startswith("From 1965. Tagged \u201ct0\u201d, \u201ct1\u201d")
    assert "t7" in text and "t8" not in text
    assert fallback_description(Dataset.from_frames(inter, many), 1, neighbours=0) == (
        "Tagged \u201ct3\u201d.")


def test_bad_arguments_are_named() -> None:
    data = catalog()
    with pytest.raises(DataError, match="item index must be in 0..5, got 6"):
        fallback_description(data, 6)
    with pytest.raises(DataError, match=r"shape \(6, d\), got \(2, 2\)"):
        fallback_description(data, 0, np.zeros((2, 2)))
    with pytest.raises(ConfigError, match="budget_items must be a non-negative integer"):
        enrich(data, budget_items=-3, progress=False)


def test_enrich_adds_a_column_and_leaves_the_original_alone() -> None:
    data = catalog()
    before = data.items.copy()
    out = enrich(data, progress=False)
    pd.testing.assert_frame_equal(data.items, before)
    assert GENERATED_COLUMN not in data.items.columns
    pd.testing.assert_frame_equal(out.items.drop(columns=GENERATED_COLUMN), before)
    got = out.items[GENERATED_COLUMN].tolist()
    vec = data.item_vectors
    assert got[4] == fallback_description(data, 4, vec)
    assert got[5] == fallback_description(data, 5, vec)
    assert got[2] == fallback_description(data, 2, vec)
    assert got[0] == got[1] == got[3] == ""
    assert out.interactions is data.interactions and out.item_vectors is data.item_vectors
    assert out.has_time == data.has_time and out.category_column == data.category_column
    # the new text reaches the encoder's item texts, and described items are no longer thin
    assert "People who chose it also chose" in item_texts(out)[4]
    assert thin_items(out).size == 0


def test_the_budget_is_respected_and_descriptions_are_kept_on_a_second_pass() -> None:
    data = catalog()
    first = enrich(data, budget_items=1, progress=False)
    assert [bool(t) for t in first.items[GENERATED_COLUMN]] == [False] * 4 + [True, False]
    assert thin_items(first).tolist() == [5, 2]
    second = enrich(first, budget_items=1, progress=False)
    assert second.items[GENERATED_COLUMN].tolist()[4] == first.items[GENERATED_COLUMN].tolist()[4]
    assert [bool(t) for t in second.items[GENERATED_COLUMN]] == [False] * 4 + [True, True]
    none = enrich(data, budget_items=0)
    assert set(none.items[GENERATED_COLUMN]) == {""}


def test_a_generated_description_is_used_when_it_checks_out() -> None:
    data = catalog()
    gen = FixedGenerator("Clueless (1995) is a comedy chosen by the people who chose Heat "
                         "(1995) and Fargo (1996).")
    out = enrich(data, gen, budget_items=1, progress=False)
    assert out.items[GENERATED_COLUMN].iat[4] == gen.text
    prompt, = gen.prompts
    assert "Clueless (1995)" in prompt and "Heat (1995)" in prompt and "Babe (1995)" in prompt


@pytest.mark.parametrize("reply", [
    "Clueless is a comedy; read more at https://example.org/clueless.",
    "Clueless (1995) won 3 awards.",
    "Clueless (1995) was directed by Amy Heckerling.",
    "",
    "Clueless. " * 100,
])
def test_a_doubtful_generated_description_falls_back(reply: str) -> None:
    data = catalog()
    out = enrich(data, FixedGenerator(reply), budget_items=1, progress=False)
    assert out.items[GENERATED_COLUMN].iat[4] == fallback_description(data, 4,
                                                                      data.item_vectors)


def test_enrich_reports_its_counts() -> None:
    stats: dict[str, int] = {}
    enrich(catalog(), FixedGenerator("Made up by Nobody Known."), progress=False, stats=stats)
    assert stats == {"described": 3, "generated": 0, "refused": 3}
    enrich(catalog(), None, budget_items=2, progress=False, stats=stats)
    assert stats == {"described": 2, "generated": 0, "refused": 0}


def test_a_stored_item_is_thin_by_its_own_text_only() -> None:
    from serendip.enrich import record_is_thin, record_text

    assert record_text({"title": "Babe", "genres": "Comedy", "empty": " "}) == "Babe. Comedy"
    assert record_is_thin({"title": "Babe"}) and not record_is_thin({"title": "x" * 80})
    assert not record_is_thin({"title": "Babe", GENERATED_COLUMN: "A pig."})
    assert record_is_thin({"title": "Babe"}, min_chars=5)
    assert not record_is_thin({"title": "Babe"}, min_chars=4)


def test_describe_record_checks_the_generated_text() -> None:
    from serendip.enrich import describe_record

    gen = FixedGenerator("A comedy about a pig, close to Fargo (1996).")
    text, why = describe_record(gen, {"title": "Babe", "genres": "Comedy"},
                                ["Fargo (1996). Comedy|Crime"])
    assert (text, why) == (gen.text, None)
    prompt, = gen.prompts
    assert "Item: Babe. Comedy" in prompt and "- Fargo (1996). Comedy|Crime" in prompt
    text, why = describe_record(FixedGenerator("Babe won 7 awards."), {"title": "Babe"})
    assert text is None and why == "the number 7 is not in the facts"
