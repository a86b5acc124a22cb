from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from serendip.data import Dataset
from serendip.errors import ConfigError, DataError
from serendip.text import item_texts, request_text, user_text


@pytest.fixture
def movies() -> Dataset:
    items = pd.DataFrame(
        {
            "item_id": ["1", "2", "3", "4"],
            "title": ["Toy Story", "Heat", "Birdcage, The", "Casino"],
            "year": [1995.0, 1995.0, np.nan, 1995.0],
            "genres": ["Animation|Children's|Comedy", "Action|Crime", "Comedy", "Crime|Drama"],
        }
    )
    inter = pd.DataFrame(
        {
            "user_id": ["a", "a", "a", "a", "b"],
            "item_id": ["1", "3", "2", "4", "2"],
            "timestamp": [881250949.0, 881251000.0, 881252000.0, 881253000.0, 5.0],
        }
    )
    return Dataset.from_frames(inter, items)


def test_default_item_text(movies: Dataset) -> None:
    texts = item_texts(movies)
    assert texts[0] == "title: Toy Story; year: 1995; genres: Animation, Children's, Comedy"
    # empty year is skipped, not rendered as "nan"
    assert texts[2] == "title: Birdcage, The; genres: Comedy"


def test_template_item_text(movies: Dataset) -> None:
    texts = item_texts(movies, "{title} ({year}). Genres: {genres}")
    assert texts[1] == "Heat (1995). Genres: Action, Crime"
    assert texts[2] == "Birdcage, The (). Genres: Comedy"


@pytest.mark.parametrize("template", ["{title} {director}", "{0}", "{}", "{title!r"])
def test_template_errors_name_the_problem(movies: Dataset, template: str) -> None:
    with pytest.raises(ConfigError, match="template"):
        item_texts(movies, template)


def test_unknown_column_is_named(movies: Dataset) -> None:
    with pytest.raises(ConfigError, match="'director'"):
        item_texts(movies, "{title} by {director}")


def test_user_text_content(movies: Dataset) -> None:
    u = movies.user_number("a")
    text = user_text(movies, movies.history(u), movies.history_times(u))
    assert text.startswith("Favourite genres: Comedy (50%), Crime (50%), ")
    # most recent first; a title with a comma switches the separator to "; "
    assert "Recently watched: Casino; Heat; Birdcage, The; Toy Story." in text
    assert "4 items, the latest on 1997-12-04." in text


def test_user_text_order_without_times_and_max_items(movies: Dataset) -> None:
    hist = movies.item_numbers(["1", "2"])  # oldest first
    text = user_text(movies, hist, max_items=1, verb="liked")
    assert "Recently liked: Heat." in text
    assert "Toy Story" not in text
    assert "2 items." in text  # no times, no date


def test_user_text_uses_times_not_input_order(movies: Dataset) -> None:
    hist = movies.item_numbers(["1", "2"])
    text = user_text(movies, hist, times=[20.0, 10.0])
    assert "Recently watched: Toy Story, Heat." in text


def test_user_text_edge_cases(movies: Dataset) -> None:
    assert "no history" in user_text(movies, [])
    with pytest.raises(ConfigError, match="max_items"):
        user_text(movies, [0], max_items=0)
    with pytest.raises(DataError, match="outside"):
        user_text(movies, [99])
    with pytest.raises(DataError, match="times"):
        user_text(movies, [0, 1], times=[1.0])


def test_request_text() -> None:
    assert request_text("  a  cosy\n film ") == "a cosy film"
    with pytest.raises(DataError, match="whitespace"):
        request_text(" \n ")
    with pytest.raises(DataError, match="at most 10"):
        request_text("x" * 11, max_chars=10)
    with pytest.raises(DataError, match="string"):
        request_text(3)  # type: ignore[arg-type]


def test_link_columns_stay_out_of_the_encoded_text() -> None:
    import pandas as pd

    from serendip.data import Dataset
    from serendip.text import item_texts

    items = pd.DataFrame({"item_id": ["a", "b"], "title": ["Dune", "Emma"],
                          "image_url": ["https://img.example/dune.jpg", ""]})
    inter = pd.DataFrame({"user_id": ["u", "u"], "item_id": ["a", "b"]})
    texts = item_texts(Dataset.from_frames(inter, items))
    assert texts == ["title: Dune", "title: Emma"]
