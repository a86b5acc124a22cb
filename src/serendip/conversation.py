"""A conversation about what to watch, read or hear next: the state a person's messages build.

Each message ("I just watched Inception and loved it — something less dark next?") updates a
:class:`ConversationState`:

- **items mentioned**, resolved against the catalog (``serendip.text.request``), go to
  ``liked`` or ``disliked`` by the words around them ("loved", "enjoyed" / "hated",
  "didn't like"); an item mentioned without a feeling counts as liked ("something like X");
- **wanted and unwanted attributes**: genres named ("a comedy" / "no horror"), words after a
  negation or "less" ("less dark" → avoid "dark"), an era ("older", "newer");
- **the discovery level**: "surprise me", "something different" raise it; "more like that",
  "nothing too weird" lower it;
- **the request text**: what is left to encode.

The next message refines the state (a liked item can become disliked; "actually, comedies are
fine" lifts "comedy" from the unwanted list).  Without a generator the parsing is these rules
over the catalog's own fields, so it never invents an item or a field; a generator, when one
is wired in, may only add what this parser can check.  ``reply`` writes the short answer that
comes back with each turn's recommendations, naming only items and attributes in the state.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from serendip.text.request import CatalogIndex, parse_request

__all__ = ["ConversationState", "Update", "parse_message", "apply", "reply",
           "SURPRISE", "FAMILIAR"]

#: Discovery a "surprise me" sets, and the one "more like that" sets.
SURPRISE = 0.8
FAMILIAR = 0.1

_LIKE = re.compile(r"\b(lov(?:e|ed|ing)|lik(?:e|ed)d?|enjoy(?:ed)?|adore[d]?|great|amazing|"
                   r"favou?rite|fantastic|brilliant|wonderful)\b", re.I)
_DISLIKE = re.compile(r"\b(hat(?:e|ed)|didn'?t\s+(?:like|enjoy)|did\s+not\s+(?:like|enjoy)|"
                      r"dislik(?:e|ed)|boring|awful|terrible|not\s+for\s+me|couldn'?t\s+stand)\b",
                      re.I)
_SURPRISE = re.compile(r"\b(surprise\s+me|something\s+(?:different|new|unexpected)|"
                       r"unexpected|off\s+the\s+beaten\s+track|hidden\s+gems?)\b", re.I)
_FAMILIAR = re.compile(r"\b(more\s+like\s+(?:that|this|those)|similar|nothing\s+too\s+"
                       r"(?:weird|strange)|safe\s+picks?)\b", re.I)
_CLAUSE = re.compile(r"[.;!?]|\bbut\b|\band\s+then\b|,", re.I)


@dataclass(frozen=True)
class ConversationState:
    """What a conversation has established so far (item indices of the catalog)."""

    liked: tuple[int, ...] = ()
    disliked: tuple[int, ...] = ()
    genres: tuple[str, ...] = ()
    not_genres: tuple[str, ...] = ()
    avoid: tuple[str, ...] = ()
    era: str | None = None
    discovery: float | None = None
    text: str = ""
    turns: int = 0

    def as_dict(self) -> dict[str, object]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class Update:
    """What one message says (the parse, before it is applied)."""

    liked: tuple[int, ...] = ()
    disliked: tuple[int, ...] = ()
    genres: tuple[str, ...] = ()
    not_genres: tuple[str, ...] = ()
    avoid: tuple[str, ...] = ()
    era: str | None = None
    discovery: float | None = None
    text: str = ""
    understood: bool = False
    notes: tuple[str, ...] = field(default=())


def parse_message(message: str, index: CatalogIndex) -> Update:
    """One message read against the catalog: items with the feeling of their clause,
    attributes, the discovery level and the rest of the request."""
    liked: list[int] = []
    disliked: list[int] = []
    for clause in _CLAUSE.split(message):
        if not clause.strip():
            continue
        found = parse_request(clause, index).mentions
        if not found:
            continue
        negative = bool(_DISLIKE.search(clause))
        (disliked if negative else liked).extend(found)
    whole = parse_request(message, index)
    discovery = None
    if _SURPRISE.search(message):
        discovery = SURPRISE
    elif _FAMILIAR.search(message):
        discovery = FAMILIAR
    # "less dark": the word after "less" is avoided, like "not dark"
    avoid = list(whole.avoid)
    for m in re.finditer(r"\bless\s+([a-z]+)", message, re.I):
        word = m.group(1).casefold()
        if word not in avoid and word not in whole.genres:
            avoid.append(word)
    # feelings and the words that carry them are not part of what to look for
    rest = " ".join(w for w in whole.text.split()
                    if not (_LIKE.fullmatch(w) or _DISLIKE.fullmatch(w) or w in avoid))
    return Update(
        liked=tuple(dict.fromkeys(liked)), disliked=tuple(dict.fromkeys(disliked)),
        genres=whole.genres, not_genres=whole.not_genres, avoid=tuple(avoid), era=whole.era,
        discovery=discovery, text=rest,
        understood=bool(liked or disliked or whole.genres or whole.not_genres or avoid
                        or whole.era or discovery is not None or whole.known_words),
    )


def apply(state: ConversationState, update: Update) -> ConversationState:
    """The state after a message: later messages win where they disagree."""
    liked = [i for i in state.liked if i not in update.disliked]
    disliked = [i for i in state.disliked if i not in update.liked]
    liked += [i for i in update.liked if i not in liked]
    disliked += [i for i in update.disliked if i not in disliked]
    genres = [g for g in state.genres if g not in update.not_genres]
    not_genres = [g for g in state.not_genres if g not in update.genres]
    genres += [g for g in update.genres if g not in genres]
    not_genres += [g for g in update.not_genres if g not in not_genres]
    avoid = list(dict.fromkeys([*state.avoid, *update.avoid]))
    return replace(
        state, liked=tuple(liked), disliked=tuple(disliked), genres=tuple(genres),
        not_genres=tuple(not_genres), avoid=tuple(avoid),
        era=update.era if update.era is not None else state.era,
        discovery=update.discovery if update.discovery is not None else state.discovery,
        text=update.text or state.text, turns=state.turns + 1,
    )


def reply(state: ConversationState, titles: list[str], recommended: list[str]) -> str:
    """A short answer naming only what the state holds (``titles``: the catalog's titles by
    item index) and the items recommended this turn."""
    parts = []
    if state.liked:
        named = [titles[i] for i in state.liked[-2:]]
        parts.append(f"Since you liked {' and '.join(named)}")
    wants = []
    if state.genres:
        wants.append(" or ".join(state.genres))
    if state.avoid:
        wants.append("less " + " or ".join(state.avoid))
    if state.not_genres:
        wants.append("no " + " or ".join(state.not_genres))
    if state.era:
        wants.append(state.era)
    lead = ", ".join(parts)
    if wants:
        lead = (lead + ", and you asked for " if lead else "You asked for ") + ", ".join(wants)
    if state.discovery is not None and state.discovery >= SURPRISE:
        lead = (lead + " — " if lead else "") + "here are some surprises"
    if not recommended:
        return (lead + ". " if lead else "") + "Nothing in the catalog fits all of that; " \
            "try loosening one of the wishes."
    picks = ", ".join(recommended[:3])
    if not lead:
        return f"Here are some ideas: {picks}."
    return f"{lead}: {picks}."
