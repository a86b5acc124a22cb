"""Reading a natural-language request against a catalog: titles it names, attribute words, and
whether it contains anything a catalog could match.

``parse_request("something like Star Wars but older, not dark", catalog)`` gives:

- ``mentions``: catalog items whose title the request names ("Star Wars" -> *Star Wars
  (1977)*), matched on whole words, longest title first, ignoring a trailing year;
- ``era``: ``"older"`` or ``"newer"`` when the request says so ("older", "earlier",
  "classic", "old" / "newer", "recent", "latest", "modern", "new");
- ``genres`` / ``not_genres``: values of the catalog's category column named in the request
  (after "not", "no", "without", "nothing" they are unwanted);
- ``avoid``: other words after a negation ("not dark" -> ``["dark"]``), matched in meaning
  by the caller;
- ``text``: what is left to encode once the mentions and attribute words are removed;
- ``known_words``: request words that the catalog's text or the encoder's vocabulary knows.
  A request without any (``"xqzv"``) cannot match anything, and the caller says so.

The parser is rules over the catalog's own fields, so it works without a generator and never
invents a field the catalog lacks (``era`` is used only where items have a year).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["ParsedRequest", "CatalogIndex", "parse_request", "item_years", "STOPWORDS"]

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?", re.UNICODE)
_YEAR_IN_TITLE = re.compile(r"\((\d{4})\)\s*$")
_YEAR = re.compile(r"\b(1[5-9]\d\d|20\d\d)\b")
OLDER = {"older", "earlier", "classic", "classics", "old", "vintage", "oldies"}
NEWER = {"newer", "recent", "latest", "modern", "new", "newest", "contemporary"}
NEGATIONS = {"not", "no", "without", "nothing", "never", "less", "avoid", "except"}
#: words that carry no request on their own
STOPWORDS = frozenset("""
a an the and or but of for to in on at by with from into about like than as is are be was
were something anything some any one me my i you we want would love loved liked like more
please give show find recommend recommendation recommendations similar same kind sort type
that this these those it its very really just also maybe perhaps good great nice best
watch read listen movie movies film films book books song songs music album albums artist
next then so too
""".split())


@dataclass(frozen=True)
class ParsedRequest:
    text: str
    mentions: tuple[int, ...] = ()
    era: str | None = None
    genres: tuple[str, ...] = ()
    not_genres: tuple[str, ...] = ()
    avoid: tuple[str, ...] = ()
    known_words: tuple[str, ...] = ()
    words: tuple[str, ...] = field(default=())

    @property
    def understood(self) -> bool:
        """Whether anything in the request can be matched against a catalog."""
        return bool(self.known_words or self.mentions or self.genres or self.era)


def _norm_title(title: str) -> str:
    t = _YEAR_IN_TITLE.sub("", title).strip()
    return " ".join(w.casefold() for w in _WORD.findall(t))


_TRAILING_NOTE = re.compile(r"\s*\([^()]*\)\s*$")


def _title_aliases(title: str) -> list[str]:
    """Other ways a person writes ``title``: with a leading article put back in front, and
    without trailing notes in brackets ("(1995)", "(crime)", "(live)")."""
    from serendip.text.templates import natural_title

    out: list[str] = []
    natural = natural_title(title)
    for t in dict.fromkeys((title, natural)):
        bare = t
        while _TRAILING_NOTE.search(bare) and _TRAILING_NOTE.sub("", bare).strip():
            bare = _TRAILING_NOTE.sub("", bare)
        out.extend(x for x in (t, bare) if x != title)
    return list(dict.fromkeys(out))


def item_years(titles: Sequence[str], years: Sequence[object] | None = None) -> np.ndarray:
    """Each item's year (NaN when unknown): a year field when given, else "(1995)" in the
    title."""
    out = np.full(len(titles), np.nan)
    for n, t in enumerate(titles):
        raw = years[n] if years is not None else None
        m = _YEAR.search(str(raw)) if raw not in (None, "") else None
        if m is None:
            m2 = _YEAR_IN_TITLE.search(t or "")
            if m2 is not None:
                out[n] = float(m2.group(1))
        else:
            out[n] = float(m.group(1))
    return out


class CatalogIndex:
    """What the parser needs of a catalog, built once per model: normalised titles (for
    mentions), category values, years and the catalog's word vocabulary."""

    def __init__(self, titles: Sequence[str], categories: Sequence[str] | None = None,
                 years: Sequence[object] | None = None, texts: Iterable[str] = (),
                 vocabulary: Iterable[str] = ()) -> None:
        self.titles = list(titles)
        by_title: dict[str, list[int]] = {}
        for i, t in enumerate(self.titles):
            key = _norm_title(t)
            if len(key) >= 3:
                by_title.setdefault(key, []).append(i)
        # how people write titles the catalog spells otherwise ("A Close Shave" for "Close
        # Shave, A (1995)", "The Heist" for "The Heist (crime)"); an alias never takes the
        # place of a title the catalog holds as written
        aliases: dict[str, list[int]] = {}
        for i, t in enumerate(self.titles):
            for alt in _title_aliases(t):
                key = _norm_title(alt)
                if len(key) >= 3 and key not in by_title:
                    aliases.setdefault(key, []).append(i)
        for key, items in aliases.items():
            by_title[key] = items
        self.by_title = by_title
        #: longest first, so "star wars" wins over "star"
        self.max_words = max((len(k.split()) for k in by_title), default=0)
        self.item_categories: list[set[str]] = []
        values: set[str] = set()
        for raw in categories or ():
            cats = {c.strip().casefold() for c in re.split(r"[|,;]", raw or "") if c.strip()}
            self.item_categories.append(cats)
            values |= cats
        self.categories = values
        self.years = item_years(self.titles, years)
        vocab = {w.casefold() for t in self.titles for w in _WORD.findall(t)}
        for t in texts:
            vocab.update(w.casefold() for w in _WORD.findall(t))
        vocab.update(w.casefold() for w in vocabulary)
        self.vocabulary = vocab

    @property
    def has_years(self) -> bool:
        return bool(np.isfinite(self.years).mean() >= 0.5) if self.years.size else False


def parse_request(text: str, index: CatalogIndex) -> ParsedRequest:
    raw = _WORD.findall(text)
    words = [w.casefold() for w in raw]
    used = [False] * len(words)
    mentions: list[int] = []
    # titles named in the request: longest word spans first
    for size in range(min(index.max_words, len(words)), 0, -1):
        for start in range(0, len(words) - size + 1):
            if any(used[start:start + size]):
                continue
            key = " ".join(words[start:start + size])
            # a one-word title, or two words one of which is common ("the game"), must be
            # written as a name (a capital letter): "for kids" does not name the film *Kids*,
            # while "gone girl" names the book
            common = size == 1 or any(w in STOPWORDS for w in words[start:start + size])
            if common and not any(w[:1].isupper() for w in raw[start:start + size]):
                continue
            if size == 1 and (key in STOPWORDS or len(key) < 3):
                continue
            hit = index.by_title.get(key)
            if hit:
                mentions.extend(hit[:1])
                used[start:start + size] = [True] * size
    era = None
    genres: list[str] = []
    not_genres: list[str] = []
    avoid: list[str] = []
    negated = False
    for n, w in enumerate(words):
        if used[n]:
            negated = False
            continue
        if w in NEGATIONS:
            negated = True
            used[n] = True
            continue
        if index.has_years and w in OLDER | NEWER:
            era = "older" if w in OLDER else "newer"
            used[n] = True
            continue
        cat = _category_of(w, index.categories)
        if cat is not None:
            (not_genres if negated else genres).append(cat)
            used[n] = True
            negated = False
            continue
        if negated and w not in STOPWORDS:
            avoid.append(w)
            used[n] = True
            negated = False
    rest = [w for n, w in enumerate(words) if not used[n]]
    while rest and rest[0] in STOPWORDS:  # "a funny film" -> "funny film"
        rest.pop(0)
    while rest and rest[-1] in STOPWORDS:
        rest.pop()
    known = tuple(w for w in rest if w not in STOPWORDS and len(w) > 1 and w in index.vocabulary)
    return ParsedRequest(
        text=" ".join(rest), mentions=tuple(dict.fromkeys(mentions)), era=era,
        genres=tuple(dict.fromkeys(genres)), not_genres=tuple(dict.fromkeys(not_genres)),
        avoid=tuple(dict.fromkeys(avoid)), known_words=known, words=tuple(words),
    )


def _category_of(word: str, categories: set[str]) -> str | None:
    """The category a request word names ("comedies" -> "comedy", "sci-fi" stays)."""
    if word in categories:
        return word
    for form in (word[:-1] if word.endswith("s") else None,
                 word[:-3] + "y" if word.endswith("ies") else None):
        if form and form in categories:
            return form
    return None
