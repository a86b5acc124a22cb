"""Recommendation reasons as one or two plain sentences.

The pipeline gives every item a list of short, data-grounded reasons ("because you liked
Fargo and Heat", "few people have found it yet (12 so far)").  ``explain_in_prose`` turns
them into prose: by templates over the known reason kinds, or, given a text generator, by
asking it for one or two sentences from those facts alone and keeping its answer only when
it passes ``check_facts``: every title, quoted phrase, number and name it writes must be
found in the reasons or the facts it was given.  Otherwise the template answer is used.

A generator is any object with ``generate(messages, *, max_tokens, temperature=0.0,
json_schema=None)`` returning something with a ``text`` attribute; ``messages`` is a list of
``{"role": ..., "content": ...}`` dicts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

__all__ = [
    "ProseResult", "TextGenerator", "explain_in_prose", "prose", "template_prose",
    "reason_clause", "check_facts", "facts_text", "MAX_PROSE_CHARS",
]

#: Longest generated explanation accepted (characters).
MAX_PROSE_CHARS = 400
#: Tokens asked of a generator for an explanation.
PROSE_MAX_TOKENS = 120


class _GenerationLike(Protocol):
    @property
    def text(self) -> str: ...


class TextGenerator(Protocol):
    """What this module needs of a text generator."""

    def generate(self, messages: Any, *, max_tokens: int, temperature: float = ...,
                 json_schema: Any = ...) -> _GenerationLike: ...


@dataclass(frozen=True)
class ProseResult:
    """An explanation, where it came from, and why a generator's answer was refused (if it was)."""

    text: str
    source: Literal["template", "generator"]
    rejected_reason: str | None = None


# ---------------------------------------------------------------- templates
def _pronoun(names: str) -> str:
    return "them" if " and " in names else "it"


_PATTERNS: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (re.compile(r"because you liked (?P<names>.+)"),
     lambda m: f"you liked {m['names']}, and this is close to {_pronoun(m['names'])}"),
    (re.compile(r"popular right now"), lambda m: "many people are choosing it right now"),
    (re.compile(r"popular with many people"), lambda m: "many people have chosen it"),
    (re.compile(r"few people have found it yet \((?P<n>[\d,]+) so far\)"),
     lambda m: f"few people have found it yet \u2014 {m['n']} so far"),
    (re.compile(r"a rare find: (?P<who>.+)"),
     lambda m: f"it is a rare find \u2014 {m['who']}"),
    (re.compile(r"unlike the rest of this list: (?P<what>.+)"),
     lambda m: f"unlike the rest of this list, it is {m['what']}"),
    (re.compile(r"unlike the rest of this list"), lambda m: "it is unlike the rest of this list"),
    (re.compile(r"unlike what you usually choose, yet a good match"),
     lambda m: "it is unlike what you usually choose, yet a good match"),
    (re.compile(r"brings back your interest in (?P<what>.+) \((?P<n>[\d,]+) of the "
                r"(?P<m>[\d,]+) you chose\)"),
     lambda m: f"it brings back your interest in {m['what']} \u2014 {m['n']} of the {m['m']} "
               f"you chose"),
    (re.compile(r"new in the catalog: (?P<rest>.+)"),
     lambda m: f"it is new in the catalog, and {m['rest']}"),
    (re.compile(r"new here: (?P<rest>.+)"), lambda m: f"it is new here \u2014 {m['rest']}"),
    (re.compile(r"one of your closest matches"), lambda m: "it is one of your closest matches"),
    (re.compile(r"a good match for you"), lambda m: "it is a good match for you"),
    (re.compile(r"(?P<how>closely|partly) matches (?P<what>\u201c.+\u201d)"),
     lambda m: f"it {m['how']} matches {m['what']}"),
    (re.compile(r"like (?P<what>.+), which you named"),
     lambda m: f"it is like {m['what']}, which you named"),
    (re.compile(r"from (?P<year>\d+), (?P<era>\w+) as you asked"),
     lambda m: f"it is from {m['year']}, {m['era']} as you asked"),
    (re.compile(r"(?P<what>.+), as you asked"), lambda m: f"it fits {m['what']}, as you asked"),
    (re.compile(r"less well known than the usual picks"),
     lambda m: "it is less well known than the usual picks"),
    (re.compile(r"given a turn: (?P<rest>.+)"),
     lambda m: f"it is given a turn \u2014 {m['rest']}"),
    (re.compile(r"the nearest match to your request in this catalog"),
     lambda m: "it is the nearest match to your request in this catalog"),
]


def reason_clause(reason: str) -> str:
    """One reason as a clause of a sentence (lower-case start); unknown reasons verbatim."""
    text = " ".join(str(reason).split())
    for pattern, build in _PATTERNS:
        m = pattern.fullmatch(text)
        if m is not None:
            return build(m)
    return text


def _capitalise(s: str) -> str:
    return s[:1].upper() + s[1:]


def template_prose(title: str, reasons: Iterable[str]) -> str:
    """The reasons as one sentence, or two when there are more than three of them."""
    clauses = list(dict.fromkeys(c for c in (reason_clause(r) for r in reasons) if c))
    if not clauses:
        return f"No reason was recorded for {title}."
    groups = [clauses] if len(clauses) <= 3 else [clauses[:2], clauses[2:]]
    return " ".join(_capitalise("; ".join(g)) + "." for g in groups)


# ---------------------------------------------------------------- fact check
_URL = re.compile(r"https?://|www\.", re.IGNORECASE)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_QUOTED = re.compile(r"\u201c([^\u201d]+)\u201d|\"([^\"]+)\"")
_WORD = re.compile(r"[^\W_][\w'\u2019-]*")
#: Small words a title may have between its capitalised words ("Pride and Prejudice").
_CONNECTORS = frozenset({"and", "of", "the", "a", "an", "in", "on", "to", "for", "with", "at",
                         "or", "de", "la", "le", "du", "del", "von", "van", "der"})
_SENTENCE_OPENERS = ".!?\"\u201c(\u2014:;"


def facts_text(title: str, reasons: Iterable[str], facts: Mapping[str, Any] | None = None
               ) -> str:
    """Everything a generated explanation may name, as one text."""
    parts = [str(title), *map(str, reasons)]
    parts.extend(_flatten(facts or {}))
    return "\n".join(parts)


def _flatten(value: Any) -> list[str]:
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _flatten(v)]
    if isinstance(value, list | tuple | set | frozenset):
        return [s for v in value for s in _flatten(v)]
    if isinstance(value, float) and value.is_integer():
        return [str(int(value))]
    return [str(value)]


def _numbers(text: str) -> set[str]:
    return {m.group().replace(",", "") for m in _NUMBER.finditer(text)}


def _strip_possessive(word: str) -> str:
    for end in ("'s", "\u2019s"):
        if word.endswith(end) and len(word) > len(end):
            return word[: -len(end)]
    return word


def _found(span: str, source: str) -> bool:
    pattern = r"(?<!\w)" + re.escape(span) + r"(?!\w)"
    return re.search(pattern, source, re.IGNORECASE) is not None


def _spans(text: str) -> list[tuple[list[str], bool]]:
    """Runs of capitalised words (small connecting words allowed inside), each with whether
    it opens a sentence."""
    out: list[tuple[list[str], bool]] = []
    run: list[str] = []
    opens = False
    last_end = 0
    for m in _WORD.finditer(text):
        word = _strip_possessive(m.group())
        gap = text[last_end:m.start()]
        joined = bool(run) and gap.strip() == ""
        if not joined and run:
            out.append((run, opens))
            run = []
        if word[0].isupper():
            if not run:
                before = text[:m.start()].rstrip()
                opens = before == "" or before[-1] in _SENTENCE_OPENERS
            run.append(word)
        elif run and word.casefold() in _CONNECTORS:
            run.append(word)
        elif run:
            out.append((run, opens))
            run = []
        last_end = m.end()
    if run:
        out.append((run, opens))
    trimmed = []
    for words, first in out:
        while words and not words[-1][0].isupper():
            words = words[:-1]
        if words:
            trimmed.append((words, first))
    return trimmed


def _span_known(words: list[str], source: str) -> bool:
    if _found(" ".join(words), source):
        return True
    # "Heat and Fargo" when the facts say "Fargo and Heat": each name on its own
    parts: list[list[str]] = [[]]
    for w in words:
        if w.casefold() in ("and", "or"):
            parts.append([])
        else:
            parts[-1].append(w)
    return len(parts) > 1 and all(p and _found(" ".join(p), source) for p in parts)


def check_facts(text: str, title: str, reasons: Iterable[str],
                facts: Mapping[str, Any] | None = None, *,
                max_chars: int = MAX_PROSE_CHARS) -> str | None:
    """None when ``text`` names only what the reasons and facts hold, else why not.

    Checked: every number, every quoted phrase, and every run of capitalised words (a title or
    a name) must occur in the title, the reasons or the facts.  A sentence's first word may be
    capitalised for the sentence's sake alone, so it is not taken as a name by itself.
    """
    source = facts_text(title, reasons, facts)
    if not text.strip():
        return "the answer is empty"
    if _URL.search(text):
        return "the answer contains a link"
    if len(text) > max_chars:
        return f"the answer is too long ({len(text)} characters, at most {max_chars})"
    known_numbers = _numbers(source)
    for n in sorted(_numbers(text)):
        if n not in known_numbers:
            return f"the number {n} is not in the facts"
    for m in _QUOTED.finditer(text):
        quoted = (m.group(1) or m.group(2) or "").strip()
        if quoted and quoted.casefold() not in source.casefold():
            return f"the quoted \u201c{quoted}\u201d is not in the facts"
    for words, opens in _spans(text):
        if _span_known(words, source):
            continue
        if opens and (len(words) == 1 or _span_known(words[1:], source)):
            continue  # the capital is the sentence's, not a name's
        if words == ["I"]:
            continue
        return f"\u201c{' '.join(words)}\u201d is not in the facts"
    return None


# ---------------------------------------------------------------- with a generator
SYSTEM_PROMPT = (
    "You explain to a person, in one or two short plain sentences, why an item was "
    "recommended to them. Use only the facts given. Do not add any title, name, number, date, "
    "link or claim that is not in the facts. Address the person as \"you\". Reply with the "
    "sentences only."
)


def prompt_messages(title: str, reasons: list[str], facts: Mapping[str, Any] | None = None
                    ) -> list[dict[str, str]]:
    """The messages asking a generator for an explanation built from the facts alone."""
    lines = [f"Item: {title}", "Reasons:"]
    lines += [f"- {r}" for r in reasons]
    if facts:
        lines.append("Facts:")
        lines += [f"- {k}: {'; '.join(_flatten(v))}" for k, v in facts.items()]
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": "\n".join(lines)}]


def prose(title: str, reasons: list[str], facts: Mapping[str, Any] | None = None,
          generator: TextGenerator | None = None) -> ProseResult:
    """The explanation with its source; a generator's answer only when it passes the check."""
    reasons = [str(r) for r in reasons]
    fallback = template_prose(title, reasons)
    if generator is None or not reasons:
        return ProseResult(fallback, "template")
    try:
        reply = generator.generate(prompt_messages(title, reasons, facts),
                                   max_tokens=PROSE_MAX_TOKENS, temperature=0.0)
        text = " ".join(str(reply.text).split())
    except Exception as e:  # any generator failure leaves the template answer
        return ProseResult(fallback, "template", f"the generator failed: {e}")
    why = check_facts(text, title, reasons, facts)
    if why is not None:
        return ProseResult(fallback, "template", why)
    return ProseResult(text, "generator")


def explain_in_prose(title: str, reasons: list[str], facts: Mapping[str, Any] | None = None,
                     generator: TextGenerator | None = None) -> str:
    """One or two sentences from an item's reasons (see ``prose`` for where they come from)."""
    return prose(title, reasons, facts, generator).text
