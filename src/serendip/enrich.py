"""Richer text for items whose catalog text is thin.

An item with a bare title and nothing else gives the text encoder little to go on, and such
items are most often in the long tail.  ``enrich`` adds a ``generated_description`` column
for them (the catalog's own columns are never changed): by default a description built only
from the data (``fallback_description``: the item's year and categories, what the people who
chose it also chose, and which items are closest to it in the encoder space); with a text
generator, its answer to a prompt made of the same facts, kept only when it passes the
checks (not empty, no link, not too long, no title, name or number absent from the facts).

Because ``item_texts`` reads every item column, an enriched Dataset's new descriptions reach
the encoder the next time the catalog is encoded.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from serendip.data.dataset import Dataset
from serendip.errors import ConfigError, DataError
from serendip.prose import TextGenerator, check_facts
from serendip.text.templates import cell_text, item_texts, natural_title

__all__ = ["thin_items", "fallback_description", "enrich", "GENERATED_COLUMN",
           "MAX_DESCRIPTION_CHARS", "record_text", "record_is_thin", "describe_record"]

log = logging.getLogger(__name__)

#: The item column ``enrich`` writes.
GENERATED_COLUMN = "generated_description"
#: Longest generated description accepted (characters).
MAX_DESCRIPTION_CHARS = 600
#: Most categories a description names.
MAX_CATEGORIES = 8
#: Tokens asked of a generator for one description.
DESCRIPTION_MAX_TOKENS = 200
#: Characters of a neighbour's catalog text put in a generator prompt.
NEIGHBOUR_TEXT_CHARS = 200

_TITLE_COLUMNS = ("title", "name", "movie_title", "headline")
_YEAR_COLUMNS = ("year", "release_year", "publication_year")
_TITLE_YEAR = re.compile(r"\((\d{4})\)\s*$")
_URL = re.compile(r"https?://|www\.", re.IGNORECASE)


def _count(value: Any, name: str, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _own_columns(data: Dataset) -> list[str]:
    return [c for c in data.items.columns if c not in ("item_id", GENERATED_COLUMN)]


def _generated(data: Dataset) -> list[str]:
    if GENERATED_COLUMN not in data.items.columns:
        return [""] * data.n_items
    return [cell_text(v) for v in data.items[GENERATED_COLUMN].tolist()]


def thin_items(data: Dataset, min_chars: int = 80) -> np.ndarray:
    """Items whose catalog text (``item_texts``) is shorter than ``min_chars`` characters or
    that leave a column empty, the least chosen first (ties by item index).  Items that already
    have a generated description are left out."""
    min_chars = _count(min_chars, "min_chars") or 0
    texts = item_texts(data)
    cols = _own_columns(data)
    empty = np.zeros(data.n_items, dtype=bool)
    for c in cols:
        empty |= np.fromiter((cell_text(v) == "" for v in data.items[c].tolist()),
                             dtype=bool, count=data.n_items)
    short = np.fromiter((len(t) < min_chars for t in texts), dtype=bool, count=data.n_items)
    done = np.asarray([g != "" for g in _generated(data)], dtype=bool)
    thin = np.flatnonzero((short | empty) & ~done)
    order = np.argsort(data.item_popularity[thin], kind="stable")
    return thin[order].astype(np.int64)


def _year(data: Dataset, i: int) -> str | None:
    for c in _YEAR_COLUMNS:
        if c in data.items.columns:
            y = cell_text(data.items[c].iat[i])
            if y:
                return y
    m = _TITLE_YEAR.search(data.item_title(i))
    return m.group(1) if m else None


def _categories(data: Dataset, i: int) -> list[str]:
    """The item's categories in the catalog's own order (at most ``MAX_CATEGORIES``)."""
    if data.category_column is None:
        return []
    cell = cell_text(data.items[data.category_column].iat[i])
    names = dict.fromkeys(t.strip() for t in cell.split("|") if t.strip())
    return list(names)[:MAX_CATEGORIES]


def _genre_word(name: str) -> str:
    return name.casefold() if name[:1].isupper() and name[1:2].islower() else name


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def _article(word: str) -> str:
    if word[:1].isdigit():  # a year: "an 1895 ...", "an 8 ..." are said with a vowel sound
        return "an" if word.startswith(("8", "11", "18")) else "a"
    return "an" if word[:1].casefold() in "aeiou" else "a"


def _kind_sentence(data: Dataset, i: int) -> str | None:
    year = _year(data, i)
    cats = _categories(data, i)
    genre = "genre" in (data.category_column or "").casefold()
    if cats and genre:
        words = [_genre_word(c) for c in cats]
        head = f"{year} {_and(words)}" if year else _and(words)
        return f"{_capital(_article(head))} {head}."
    parts = []
    if year:
        parts.append(f"From {year}.")
    if cats:
        quoted = ["\u201c" + c + "\u201d" for c in cats]
        parts.append(f"Tagged {_and(quoted)}.")
    return " ".join(parts) or None


def _capital(s: str) -> str:
    return s[:1].upper() + s[1:]


def _field_sentences(data: Dataset, i: int) -> list[str]:
    """The item's other non-empty text columns, "Column: value." each."""
    skip = {*_TITLE_COLUMNS, *_YEAR_COLUMNS, data.category_column}
    out = []
    for c in _own_columns(data):
        if c in skip:
            continue
        v = cell_text(data.items[c].iat[i])
        if v and not _URL.search(v):
            out.append(f"{_capital(str(c).replace('_', ' '))}: {v.rstrip('.')}.")
    return out


class _Neighbours:
    """What finding an item's neighbours needs, computed once per catalog: the choices by
    item (CSC) and the unit item vectors (None without vectors)."""

    def __init__(self, data: Dataset, vectors: np.ndarray | None) -> None:
        self.matrix = data.matrix
        self.by_item = data.matrix.tocsc()
        self.unit: np.ndarray | None = None
        if vectors is not None:
            v = np.asarray(vectors, dtype=np.float64)
            norms = np.linalg.norm(v, axis=1, keepdims=True)
            self.unit = v / np.where(norms > 0, norms, 1.0)

    def co_chosen(self, i: int, k: int) -> np.ndarray:
        """Up to ``k`` items most often chosen by the people who chose ``i`` (ties by index)."""
        users = self.by_item[:, i].indices
        if users.size == 0 or k == 0:
            return np.zeros(0, dtype=np.int64)
        counts = np.asarray(self.matrix[users].sum(axis=0)).ravel()
        counts[i] = 0
        order = np.argsort(-counts, kind="stable")[:k]
        return order[counts[order] > 0].astype(np.int64)

    def nearest(self, i: int, k: int) -> np.ndarray:
        """Up to ``k`` items closest to ``i`` by cosine (none without vectors)."""
        if self.unit is None or k == 0:
            return np.zeros(0, dtype=np.int64)
        sims = self.unit @ self.unit[i]
        sims[i] = -np.inf
        return np.argsort(-sims, kind="stable")[:min(k, sims.size - 1)].astype(np.int64)


def _titles(data: Dataset, items: np.ndarray) -> list[str]:
    return [natural_title(data.item_title(int(j))) for j in items]


def _check_item(data: Dataset, i: int) -> int:
    if isinstance(i, bool) or not isinstance(i, int | np.integer) or not 0 <= i < data.n_items:
        raise DataError(f"item index must be in 0..{data.n_items - 1}, got {i!r}")
    return int(i)


def _check_vectors(data: Dataset, vectors: np.ndarray | None) -> np.ndarray | None:
    if vectors is None:
        return None
    v = np.asarray(vectors)
    if v.ndim != 2 or v.shape[0] != data.n_items:
        raise DataError(f"item vectors must have shape ({data.n_items}, d), got {v.shape}")
    return v


def fallback_description(data: Dataset, i: int, vectors: np.ndarray | None = None,
                         neighbours: int = 5) -> str:
    """A description of item ``i`` made only of facts from the data.

    Its year and categories ("A 1995 comedy and drama."), its other text columns, the items
    most often chosen by the people who chose it, and, given item ``vectors``, the items
    closest to it in that space (with their most shared category when most of them have it).
    """
    i = _check_item(data, i)
    k = _count(neighbours, "neighbours") or 0
    return _describe(data, i, _Neighbours(data, _check_vectors(data, vectors)), k)


def _describe(data: Dataset, i: int, nb: _Neighbours, k: int) -> str:
    parts = []
    kind = _kind_sentence(data, i)
    if kind:
        parts.append(kind)
    parts += _field_sentences(data, i)
    co = nb.co_chosen(i, k)
    if co.size:
        parts.append(f"People who chose it also chose {_and(_titles(data, co))}.")
    near = nb.nearest(i, k)
    if near.size:
        line = f"Close in description to {_and(_titles(data, near))}"
        shared: Counter[str] = Counter(c for j in near for c in _categories(data, int(j)))
        if shared:
            name, n = min(shared.items(), key=lambda kv: (-kv[1], kv[0]))
            if n * 2 > near.size:
                genre = "genre" in (data.category_column or "").casefold()
                line += (f", mostly {_genre_word(name)}" if genre
                         else f", mostly tagged \u201c{name}\u201d")
        parts.append(line + ".")
    if not parts:
        return f"{natural_title(data.item_title(i))}: nothing more is known of it yet."
    return " ".join(parts)


SYSTEM_PROMPT = (
    "You write a short factual description (two or three sentences) of a catalog item for a "
    "search index. Use only the facts given: the item's own fields and the items related to "
    "it. Do not add any title, name, number, date, link or claim that is not in the facts. "
    "Reply with the description only."
)


def _prompt(data: Dataset, i: int, texts: list[str], near: np.ndarray, co: np.ndarray
            ) -> tuple[list[dict[str, str]], str]:
    """The generator's messages and the text of every fact they give."""
    lines = [f"Item: {texts[i] or natural_title(data.item_title(i))}"]
    if co.size:
        lines.append("Often chosen by the same people:")
        lines += [f"- {texts[int(j)][:NEIGHBOUR_TEXT_CHARS]}" for j in co]
    if near.size:
        lines.append("Closest in description:")
        lines += [f"- {texts[int(j)][:NEIGHBOUR_TEXT_CHARS]}" for j in near]
    user = "\n".join(lines)
    return ([{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}],
            user)


def _generated_description(generator: TextGenerator, messages: list[dict[str, str]],
                           title: str, facts: str) -> tuple[str | None, str | None]:
    """The generator's description, or None and why it was refused."""
    try:
        reply = generator.generate(messages, max_tokens=DESCRIPTION_MAX_TOKENS, temperature=0.0)
        text = " ".join(str(reply.text).split())
    except Exception as e:  # any generator failure leaves the fallback description
        return None, f"the generator failed: {e}"
    why = check_facts(text, title, [facts], max_chars=MAX_DESCRIPTION_CHARS)
    return (None, why) if why is not None else (text, None)


def enrich(data: Dataset, generator: TextGenerator | None = None,
           budget_items: int | None = None, progress: bool = True, *,
           min_chars: int = 80, vectors: np.ndarray | None = None,
           neighbours: int = 5, stats: dict[str, int] | None = None) -> Dataset:
    """A copy of ``data`` whose items have a ``generated_description`` for thin items.

    The thin items (``thin_items``, the least chosen first) are described, at most
    ``budget_items`` of them (all when None); the others keep an empty description, and an
    existing one is kept.  ``vectors`` default to the dataset's item vectors.  Interactions,
    vectors and every other column are those of ``data``; re-encode the catalog to use the
    new text.  ``stats``, when given, receives the counts: ``described``, ``generated`` (the
    generator's description kept) and ``refused`` (the fallback used instead).
    """
    budget = _count(budget_items, "budget_items", allow_none=True)
    k = _count(neighbours, "neighbours") or 0
    v = _check_vectors(data, vectors if vectors is not None else data.item_vectors)
    nb = _Neighbours(data, v)
    targets = thin_items(data, min_chars)
    if budget is not None:
        targets = targets[:budget]
    texts = item_texts(data) if generator is not None else []
    out = _generated(data)
    used = refused = 0
    for i in tqdm(targets.tolist(), desc="enrich", unit="item", disable=not progress):
        text = None
        if generator is not None:
            near, co = nb.nearest(i, k), nb.co_chosen(i, k)
            messages, facts = _prompt(data, i, texts, near, co)
            text, why = _generated_description(generator, messages, data.item_title(i), facts)
            if text is None:
                refused += 1
                log.debug("item %s: generated description refused: %s",
                          data.item_ids[i], why)
            else:
                used += 1
        out[i] = text if text is not None else _describe(data, i, nb, k)
    if generator is not None:
        log.info("enrich: %d generated description(s) kept, %d refused (fallback used)",
                 used, refused)
    if stats is not None:
        stats.update(described=len(targets), generated=used, refused=refused)
    items = data.items.copy()
    items[GENERATED_COLUMN] = out
    return Dataset(data.user_ids, data.item_ids, items, data.interactions,
                   data.category_column, data.item_vectors, has_time=data.has_time)


# ---------------------------------------------------------------- one stored item (service)
def record_text(fields: Mapping[str, str]) -> str:
    """An item record's own text: its non-empty fields other than the generated one."""
    return ". ".join(str(v).strip() for k, v in fields.items()
                     if k not in ("item_id", GENERATED_COLUMN) and str(v).strip())


def record_is_thin(fields: Mapping[str, str], min_chars: int = 80) -> bool:
    """Whether a stored item needs a description: its own text is under ``min_chars``
    characters and it has no generated description yet."""
    if str(fields.get(GENERATED_COLUMN, "")).strip():
        return False
    return len(record_text(fields)) < min_chars


def describe_record(generator: TextGenerator, fields: Mapping[str, str],
                    neighbour_texts: Sequence[str] = ()) -> tuple[str | None, str | None]:
    """A generated description of one item from its own fields and the text of the items
    nearest to it, with the same prompt and checks as ``enrich``: the text and None, or None
    and why it was refused."""
    own = record_text(fields)
    title = next((str(fields[c]) for c in _TITLE_COLUMNS if str(fields.get(c, "")).strip()),
                 own)
    lines = [f"Item: {own or title}"]
    if neighbour_texts:
        lines.append("Closest in description:")
        lines += [f"- {t[:NEIGHBOUR_TEXT_CHARS]}" for t in neighbour_texts]
    user = "\n".join(lines)
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]
    return _generated_description(generator, messages, title, user)
