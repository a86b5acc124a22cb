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
over the catalog's own fields, so it never invents an item or a field.  ``reply`` writes the
short answer that comes back with each turn's recommendations, naming only items and
attributes in the state.

With a generator, ``parse_with_generator`` asks it for the update as JSON valid against
``UPDATE_SCHEMA`` and keeps only what the catalog holds (titles resolved by their normalised
form, unknown ones dropped; genres the catalog has); ``reply_with_generator`` asks it for the
reply and keeps it only when ``serendip.prose.check_facts`` finds nothing in it beyond the
state and the items recommended.  Callers fall back to the rules for the turn on any failure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from serendip.prose import TextGenerator, check_facts
from serendip.text.request import CatalogIndex, _category_of, _norm_title, parse_request

__all__ = ["ConversationState", "Update", "parse_message", "apply", "reply",
           "parse_with_generator", "reply_with_generator", "UPDATE_SCHEMA",
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
    # feelings, and the words asking for surprise or familiarity, are not part of what to
    # look for ("surprise me" alone asks for no topic)
    level_words = {w.casefold() for rx in (_SURPRISE, _FAMILIAR) for m in rx.finditer(message)
                   for w in m.group(0).split()}
    rest = " ".join(w for w in whole.text.split()
                    if not (_LIKE.fullmatch(w) or _DISLIKE.fullmatch(w) or w in avoid
                            or w.casefold() in level_words))
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
    if state.disliked:
        named = [titles[i] for i in state.disliked[-2:]]
        parts.append(f"leaving out {' and '.join(named)}")
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
    lead = lead[:1].upper() + lead[1:]
    if not recommended:
        if not lead:
            return ("I could not match that to anything in the catalog. Try naming a title "
                    "you liked or a genre.")
        return lead + ". Nothing in the catalog fits all of that; try loosening one of " \
            "the wishes."
    picks = ", ".join(recommended[:3])
    if not lead:
        return f"Here are some ideas: {picks}."
    return f"{lead}: {picks}."


# ---------------------------------------------------------------- with a generator
_NAMES = {"type": "array", "items": {"type": "string", "maxLength": 200}, "maxItems": 10}
_WORDS = {"type": "array", "items": {"type": "string", "maxLength": 60}, "maxItems": 10}
#: What a generator must answer for one message (structured output).
UPDATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["liked", "disliked", "genres", "not_genres", "avoid", "era", "discovery",
                 "text"],
    "properties": {
        "liked": _NAMES, "disliked": _NAMES, "genres": _WORDS, "not_genres": _WORDS,
        "avoid": _WORDS,
        "era": {"type": ["string", "null"], "enum": ["older", "newer", None]},
        "discovery": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
        "text": {"type": "string", "maxLength": 500},
    },
}
#: Tokens asked of a generator for a parse and for a reply.
PARSE_MAX_TOKENS = 300
REPLY_MAX_TOKENS = 120
#: Catalog categories named in the parse prompt (at most).
PROMPT_CATEGORIES = 60

PARSE_PROMPT = (
    "You read one message of a person asking a recommender for something to watch, read or "
    "hear, and answer with JSON only. Fields: liked / disliked: titles the message names with "
    "that feeling, written as in the message (a title named without a feeling counts as "
    "liked); genres / not_genres: genres wanted or refused, chosen from the catalog's genres "
    "given; avoid: other single words the person wants less of (\"less dark\" gives "
    "\"dark\"); era: \"older\", \"newer\" or null; discovery: 0.8 when the person asks to "
    "be surprised or for something different, 0.1 when they ask for more of the same, else "
    "null; text: what else they are looking for, in a few words (empty when nothing). Never "
    "add a title, genre or word the message does not contain."
)
REPLY_PROMPT = (
    "You are a recommender talking with a person. Write a short friendly reply (one or two "
    "sentences) to their latest message that presents the recommendations. Name only titles "
    "from the recommendations and the facts given; add no other title, name, number, date or "
    "link. Reply with the sentences only."
)


def _resolve(names: list[str], index: CatalogIndex) -> tuple[int, ...]:
    """Catalog items for titles a generator wrote (by normalised title; unknown ones are
    dropped, never guessed)."""
    out: list[int] = []
    for name in names:
        hit = index.by_title.get(_norm_title(str(name)))
        if hit and hit[0] not in out:
            out.append(hit[0])
    return tuple(out)


def _known_categories(words: list[str], index: CatalogIndex) -> tuple[str, ...]:
    got = (_category_of(str(w).strip().casefold(), index.categories) for w in words)
    return tuple(dict.fromkeys(g for g in got if g))


def _avoid_words(words: list[str]) -> tuple[str, ...]:
    out = []
    for w in words:
        w = str(w).strip().casefold()
        if re.fullmatch(r"[^\W\d_][\w'-]{0,39}", w):
            out.append(w)
    return tuple(dict.fromkeys(out))


def parse_with_generator(message: str, index: CatalogIndex, generator: TextGenerator
                         ) -> Update:
    """The generator's reading of ``message``, validated against ``UPDATE_SCHEMA`` and
    resolved against the catalog.  Raises (GenerationError, ValueError) when the reply is
    not valid JSON for the schema."""
    from serendip.llm.base import validate_json

    cats = sorted(index.categories)[:PROMPT_CATEGORIES]
    system = PARSE_PROMPT + (f" The catalog's genres: {', '.join(cats)}." if cats else "")
    out = generator.generate([{"role": "system", "content": system},
                              {"role": "user", "content": message}],
                             max_tokens=PARSE_MAX_TOKENS, temperature=0.0,
                             json_schema=UPDATE_SCHEMA)
    got = validate_json(str(out.text), UPDATE_SCHEMA)  # whatever the back end checked
    liked = _resolve(got["liked"], index)
    disliked = tuple(i for i in _resolve(got["disliked"], index) if i not in liked)
    genres = _known_categories(got["genres"], index)
    not_genres = tuple(g for g in _known_categories(got["not_genres"], index)
                       if g not in genres)
    avoid = tuple(w for w in _avoid_words(got["avoid"]) if w not in genres + not_genres)
    era = got["era"] if index.has_years else None
    discovery = None if got["discovery"] is None else float(got["discovery"])
    text = " ".join(str(got["text"]).split())
    return Update(liked=liked, disliked=disliked, genres=genres, not_genres=not_genres,
                  avoid=avoid, era=era, discovery=discovery, text=text,
                  understood=bool(liked or disliked or genres or not_genres or avoid or era
                                  or discovery is not None or text),
                  notes=("generator",))


def reply_facts(state: ConversationState, titles: list[str], recommended: list[str]
                ) -> list[str]:
    """What a generated reply may name: the state and the items recommended."""
    lines = []
    if state.liked:
        lines.append("liked: " + "; ".join(titles[i] for i in state.liked))
    if state.disliked:
        lines.append("disliked: " + "; ".join(titles[i] for i in state.disliked))
    for key in ("genres", "not_genres", "avoid"):
        if getattr(state, key):
            lines.append(f"{key.replace('_', ' ')}: " + ", ".join(getattr(state, key)))
    if state.era:
        lines.append(f"era: {state.era}")
    if state.discovery is not None and state.discovery >= SURPRISE:
        lines.append("the person asked to be surprised")
    lines.append("recommended now (best first): " + "; ".join(recommended))
    return lines


def reply_with_generator(message: str, state: ConversationState, titles: list[str],
                         recommended: list[str], generator: TextGenerator) -> tuple[str | None,
                                                                                     str | None]:
    """The generator's reply and None, or None and why it was refused (it names something
    beyond the state and the recommendations, or the generator failed)."""
    if not recommended:
        return None, "nothing was recommended"
    facts = reply_facts(state, titles, recommended)
    user = f"Message: {message}\nFacts:\n" + "\n".join(f"- {f}" for f in facts)
    try:
        out = generator.generate([{"role": "system", "content": REPLY_PROMPT},
                                  {"role": "user", "content": user}],
                                 max_tokens=REPLY_MAX_TOKENS, temperature=0.0)
        text = " ".join(str(out.text).split())
    except Exception as e:  # any generator failure leaves the template reply
        return None, f"the generator failed: {e}"
    why = check_facts(text, "", facts)
    return (None, why) if why is not None else (text, None)

