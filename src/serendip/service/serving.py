"""Serving: lists, similar items, search and explanations from the current model state.

Every method reads ``lifecycle.state`` once and works on that object only.  A user's history
comes from ``Feedback.history`` (the store, read per request), so feedback changes the next
list without a retrain.  Large catalogs are served by candidate retrieval
(``serendip.models.retrieval``): the blend scores only the items its sources return, and search
blends the text match with the user's taste on those candidates, standardising the taste with
statistics from the same sample.

With a generator (``Engine`` sets ``generator`` and ``runner``), nothing on the plain list path
calls it: a list's ``prose`` comes from templates unless the request asks for
``prose="generator"``; an explanation gets generated ``prose``; a conversation turn's parse
and reply are asked of it.  Every call waits at most the runner's deadline, and any failure,
late answer or failed fact check gives the template or rule-based answer instead: a
generator never fails a request.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from serendip.conversation import (
    ConversationState,
    Update,
    parse_message,
    parse_with_generator,
    reply_with_generator,
)
from serendip.conversation import apply as apply_message
from serendip.conversation import reply as conversation_reply
from serendip.errors import ConfigError, UnknownIdError
from serendip.llm.runner import Runner
from serendip.models._util import standardize
from serendip.models.base import TEXT_SPACE
from serendip.pipeline import Pipeline, with_relevance_rank
from serendip.prose import ProseResult, explain_in_prose
from serendip.prose import prose as make_prose
from serendip.rerank.base import RELEVANCE_REASONS
from serendip.service.catalog import Catalog
from serendip.service.feedback import Feedback
from serendip.service.impressions import ImpressionWriter, new_impression_id
from serendip.service.lifecycle import Lifecycle
from serendip.service.state import SERENDIPITY_QUANTILE, ModelState
from serendip.store.base import Impression, Store
from serendip.text import request_text
from serendip.text.request import CatalogIndex, ParsedRequest, parse_request
from serendip.text.templates import cell_text
from serendip.types import ItemList, Query

__all__ = ["Serving", "SESSION_ITEMS", "SEARCH_DISCOVERY", "WEAK_MATCH", "GOOD_MATCH",
           "PROSE_MODES"]

#: What a list request may ask for as its items' ``prose``.
PROSE_MODES = ("template", "generator")

#: Text matches used as session context by search (when the request names no title).
SESSION_ITEMS = 3
#: Search's discovery when a request gives none: the request decides what is relevant.
SEARCH_DISCOVERY = 0.0
#: Below this best cosine (request vs item text, all-MiniLM-L6-v2) a search answer is "weak"
#: and says so (tests/text/test_request.py checks it on the bundled movie catalog).
WEAK_MATCH = 0.30
#: Similar items: a text cosine from which "described in similar words" is said, and a
#: collaborative similarity (scaled so the closest item is 1) from which "chosen by many of
#: the same people" is.
SIMILAR_TEXT = 0.5
SIMILAR_PEOPLE = 0.3
#: Search blend shift (standardised units) for an item of a genre the request names.
GENRE_BOOST = 2.0
#: At or above this cosine an item "closely" matches the request's words.
GOOD_MATCH = 0.45


#: The "serendipitous" badge needs the item's closest history item below this cosine.
SERENDIPITY_MAX_NEAREST = 0.6
#: Unexpectedness (1 - mean cosine to the history) from which an explanation says the item
#: is unlike what the person usually chooses.
UNLIKE_HISTORY = 0.75


def popularity_sentence(title: str, users: int, n_users: int, more_popular_than: float,
                        head: bool, top: bool) -> str:
    """One sentence on an item's popularity, in people and in its place in the catalog."""
    people = "1 person" if users == 1 else f"{users:,} people"
    first = f"{people} of {n_users:,} in the data chose {title}"
    if users == 0:
        return f"Nobody in the data has chosen {title} yet: it is new or unknown here."
    if top:
        return first + ": it is the most popular item in the catalog."
    if head:
        share = math.floor(more_popular_than)  # never rounded up to a false "100%"
        if share >= 99:
            return first + "; it is more popular than nearly every item in the catalog."
        return first + f"; it is more popular than {share}% of the catalog."
    less = math.floor(100 - more_popular_than)
    return first + (f"; few people have found it: it is in the long tail, less popular than "
                    f"{less}% of the catalog.")


def _state_to_stored(state: ConversationState, s: ModelState) -> dict[str, Any]:
    """A conversation's state with item ids (indices change with every fit)."""
    out = state.as_dict()
    out["liked"] = [s.item_ids[i] for i in state.liked]
    out["disliked"] = [s.item_ids[i] for i in state.disliked]
    return out


def _state_from_stored(stored: dict[str, Any], s: ModelState) -> ConversationState:
    """The stored state on the current model (items it no longer has are dropped)."""
    def items(key: str) -> tuple[int, ...]:
        return tuple(i for i in (s.index(str(x)) for x in stored.get(key, ())) if i is not None)

    return ConversationState(
        liked=items("liked"), disliked=items("disliked"),
        genres=tuple(stored.get("genres", ())), not_genres=tuple(stored.get("not_genres", ())),
        avoid=tuple(stored.get("avoid", ())), era=stored.get("era"),
        discovery=stored.get("discovery"), text=str(stored.get("text", "")),
        turns=int(stored.get("turns", 0)))


def _understood(parsed: ParsedRequest, s: ModelState) -> dict[str, Any]:
    """What search read from a request, echoed back so a person can see it."""
    out: dict[str, Any] = {}
    if parsed.mentions:
        out["titles"] = [s.titles[i] for i in parsed.mentions]
    for key in ("genres", "not_genres", "avoid"):
        if getattr(parsed, key):
            out[key] = list(getattr(parsed, key))
    if parsed.era:
        out["era"] = parsed.era
    if parsed.text:
        out["text"] = parsed.text
    return out


class Serving:
    """Lists, similar items, search, explanations and off-policy estimates."""

    def __init__(self, store: Store, lifecycle: Lifecycle, catalog: Catalog, feedback: Feedback,
                 impression_writer: ImpressionWriter) -> None:
        self.store = store
        self.lifecycle = lifecycle
        self.catalog = catalog
        self.feedback = feedback
        self.config = lifecycle.config
        self.impression_writer = impression_writer
        self.on_impression: Any = None  # a callable, set by the app for metrics
        # one request computes at a time: the numeric work is short (a few ms) and threads
        # that interleave it only contend for the interpreter lock and the cores
        self._compute_lock = threading.Lock()
        #: the text generator and the runner bounding its calls (None: templates and rules);
        #: conversations use the generator without the store's cache (a person's own words)
        self.generator: Any = None
        self.conversation_generator: Any = None
        self.runner: Runner | None = None

    # ------------------------------------------------------------------- recommendations
    def _allowed(self, s: ModelState, filters: Sequence[str], negative: np.ndarray
                 ) -> np.ndarray | None:
        mask = s.filter_mask(filters)
        if not s.excluded.any() and negative.size == 0 and mask is None:
            return None
        allowed = ~s.excluded if mask is None else mask & ~s.excluded
        if negative.size:
            allowed = allowed.copy()
            allowed[negative] = False
        return np.flatnonzero(allowed)

    def recommend(self, user_id: str, k: int = 10, preset: str | None = None,
                  discovery: float | None = None, filters: Sequence[str] = (),
                  explore: float | None = None, learn: bool = True,
                  prose: str = "template") -> dict[str, Any]:
        """A list for ``user_id``; with ``learn`` False (a caller that may not write) a bandit
        preset serves it without counting the list as shown; ``prose="generator"`` asks the
        generator (when there is one) for the items' prose."""
        if prose not in PROSE_MODES:
            raise ConfigError(f"prose must be one of {', '.join(PROSE_MODES)}, got {prose!r}")
        s = self.lifecycle.state
        hist, neg = self.feedback.history(s, user_id)
        # nothing stored about them (new, or erased and not yet retrained away): a new person,
        # whatever row the model may still hold
        q = Query(s.user_index(user_id) if hist.size or neg.size else None, hist)
        # a filtered list answers more than the user's state: its filter is logged as context
        # (and off-policy replay, which cannot re-apply it, leaves such lists out)
        context = f"filter: {'; '.join(filters)}" if filters else None
        return self._serve(s, q, user_id, k, preset, discovery, self._allowed(s, filters, neg),
                           context, explore=explore, learn=learn, prose=prose)

    def recommend_session(self, item_ids: Sequence[str], k: int = 10, preset: str | None = None,
                          discovery: float | None = None, learn: bool = True) -> dict[str, Any]:
        s = self.lifecycle.state
        hist = []
        for iid in item_ids:
            i = s.index(iid)
            if i is not None:
                hist.append(i)
            elif self.store.get_item(iid) is None:
                raise UnknownIdError(f"unknown item id {iid!r}")
            # else: in the catalog but newer than the model: no vector yet, dropped
        q = Query(None, np.asarray(hist, dtype=np.int64))
        return self._serve(s, q, None, k, preset, discovery,
                           self._allowed(s, (), np.zeros(0, np.int64)), learn=learn)

    def _pipeline(self, s: ModelState, preset: str) -> Pipeline:
        p = s.pipelines.get(preset)
        if p is None:
            if preset in s.unavailable:
                raise ConfigError(f"preset {preset!r} is not available on this model: "
                                  f"{s.unavailable[preset]}")
            raise ConfigError(f"unknown preset {preset!r}; valid: {', '.join(s.pipelines)}")
        return p

    def _serve(self, s: ModelState, q: Query, user_id: str | None, k: int, preset: str | None,
               discovery: float | None, candidates: np.ndarray | None,
               context: str | None = None, explore: float | None = None,
               learn: bool = True, prose: str = "template") -> dict[str, Any]:
        preset = preset or self.config.default_preset
        pipe = self._pipeline(s, preset)
        d = float(pipe.preset.discovery if discovery is None else discovery)
        eps = float(pipe.explorer.config.epsilon if explore is None else explore)
        at = None
        if pipe.bandit is not None and user_id is not None:  # its ``shown`` feature
            # the list is logged as of this read, so that replay, counting the lists logged
            # before it, counts what was read here (those still queued included)
            at = time.time()
            q = dataclasses.replace(q, shown=self.feedback.shown(
                s, user_id, self.impression_writer.unwritten(user_id)))
        # one request computes at a time: the numeric work is short (a few ms) and threads
        # that interleave it only contend for the interpreter lock and the cores
        with self._compute_lock:
            if candidates is not None and candidates.size == 0:
                lst = ItemList.empty()
            else:
                lst = pipe.recommend_many([q], k, d, candidates, explore=eps)[0]
                if learn:
                    self.feedback.remember_shown(pipe, preset, user_id, lst, s)
            items = self.describe(s, q, lst)
        # outside the lock: other requests go on meanwhile
        generated = self.generated_prose(items) if prose == "generator" else []
        imp_id = self.log_impression(user_id, items, preset, d, context, at)
        return {"user_id": user_id, "preset": preset, "discovery": d, "explore": eps,
                "impression_id": imp_id, "items": items, "generated_prose": generated}

    def log_impression(self, user_id: str | None, items: list[dict[str, Any]], preset: str,
                       discovery: float, context: str | None, at: float | None = None) -> str:
        """Queue the list for the impression log and return its public id at once.

        The id and timestamp are fixed here, at serve time (``at``: the time the request began
        reading the person's state, when a bandit read it); the row is written by the
        background writer within about ``flush_interval`` (``impression_writer.flush()``
        waits for it).
        """
        imp_id = new_impression_id()
        imp = Impression(
            user_id, tuple(it["item_id"] for it in items), tuple(it["score"] for it in items),
            preset, discovery, tuple(it["propensity"] for it in items), context,
            time.time() if at is None else at,
            imp_id,
        )
        self.impression_writer.submit(imp)
        if self.on_impression is not None:
            self.on_impression()
        return imp_id

    def describe(self, s: ModelState, q: Query, lst: ItemList) -> list[dict[str, Any]]:
        """Output rows with badges (see the module docstring for their definitions)."""
        if len(lst) == 0:
            return []
        idx = lst.items
        rel = np.asarray(lst.fields.get("relevance", lst.scores), dtype=np.float64)
        finite = np.isfinite(rel)
        top_half = rel >= (np.median(rel[finite]) if finite.any() else np.inf)
        hist = np.unique(q.history)
        if hist.size:
            ref_info = float(s.self_info[hist].mean())
            centre = s.vectors[hist].mean(axis=0)
            unexp_ref = 1.0 - s.reference_vectors @ centre
            threshold = float(np.quantile(unexp_ref, SERENDIPITY_QUANTILE))
            # and not close to any single item of the history either: a pick that is "because
            # you liked" a near twin is no surprise, however unlike the rest of the history
            nearest = (s.vectors[idx] @ s.vectors[hist[-50:]].T).max(axis=1)
            serendipitous = (((1.0 - s.vectors[idx] @ centre) >= threshold) & top_half
                             & (nearest < SERENDIPITY_MAX_NEAREST))
        else:
            ref_info = s.mean_info
            serendipitous = np.zeros(idx.size, dtype=bool)
        tail = ~s.head[idx]
        novel = s.self_info[idx] > ref_info
        # a list without exploration is deterministic given the user's state: propensity 1
        prop = np.asarray(lst.fields.get("propensity", np.ones(idx.size)), dtype=np.float64)
        explored = np.asarray(lst.fields.get("explored", np.zeros(idx.size, bool)), dtype=bool)
        # score: the share of the catalog the item outranks by relevance for this request
        # (1 = the best match), the same scale for every preset; an explored item gets its own
        rank = np.asarray(lst.fields.get("relevance_rank", np.arange(idx.size)), dtype=np.float64)
        score_of = 1.0 - rank / max(s.n_items, 1)
        out = []
        for n, (i, reasons) in enumerate(zip(idx.tolist(), lst.reason_lists(), strict=True)):
            score = float(score_of[n])
            badges = [b for b, on in (("tail", tail[n]), ("novel", novel[n]),
                                      ("serendipitous", serendipitous[n]),
                                      ("explore", explored[n])) if on]
            out.append({
                "item_id": s.item_ids[i], "title": s.titles[i],
                "score": round(float(score), 6) if math.isfinite(score) else 0.0,
                "reasons": reasons, "badges": badges, "propensity": float(prop[n]),
                "fields": s.fields(i),
                # the reasons as one or two sentences; facts only from the reasons
                "prose": explain_in_prose(s.titles[i], reasons),
            })
        return out

    def generated_prose(self, items: list[dict[str, Any]]) -> list[str]:
        """Replace the items' template prose by the generator's where it answers in time and
        passes the fact check (all items asked at once, one deadline for all); returns the ids
        of the items whose prose the generator wrote."""
        if self.generator is None or self.runner is None or not items:
            return []
        got = self.runner.map([(make_prose, (it["title"], it["reasons"], None, self.generator))
                               for it in items])
        done = []
        for it, res in zip(items, got, strict=True):
            if isinstance(res, ProseResult) and res.source == "generator":
                it["prose"] = res.text
                done.append(it["item_id"])
        return done

    # ------------------------------------------------------------------- similar items
    def similar(self, item_id: str, k: int = 10) -> dict[str, Any]:
        s = self.lifecycle.state
        i = s.index(item_id)
        if i is None:
            raise UnknownIdError(
                f"unknown item id {item_id!r}" + (" (in the catalog but not yet in the model; "
                                                  "retrain)" if item_id not in s.item_pos
                                                  and self.store.get_item(item_id) else "")
            )
        sem = s.vectors @ s.vectors[i]
        collab = self._collab_row(s, i)
        w = self.config.similar_semantic_weight
        score = sem if collab is None else w * sem + (1.0 - w) * collab
        score = score.astype(np.float64)
        score[i] = -np.inf
        score[s.excluded] = -np.inf
        lst = ItemList(np.arange(s.n_items), score)
        lst = lst.take(np.flatnonzero(np.isfinite(score))).top(k)
        items = []
        for j, sc in zip(lst.items.tolist(), lst.scores.tolist(), strict=True):
            reasons = []
            if sem[j] >= SIMILAR_TEXT:
                reasons.append("described in similar words")
            if collab is not None and collab[j] >= SIMILAR_PEOPLE:
                reasons.append("chosen by many of the same people")
            if not reasons:
                reasons.append("the closest match in this catalog")
            items.append({"item_id": s.item_ids[j], "title": s.titles[j],
                          "score": round(float(sc), 6), "reasons": reasons,
                          "fields": s.fields(j)})
        return {"item_id": item_id, "items": items}

    def _collab_row(self, s: ModelState, i: int) -> np.ndarray | None:
        """Collaborative similarity to item ``i`` in [0, 1]: EASE weights, else co-occurrence."""
        if s.collab is not None:
            row = np.asarray(s.collab[i], dtype=np.float64).clip(min=0.0)
        else:
            x = s.rec.data.matrix
            users = x[:, [i]].nonzero()[0]
            if users.size == 0:
                return None
            counts = np.asarray(x[users].sum(axis=0)).ravel()
            row = counts / np.sqrt(np.maximum(s.popularity[i] * s.popularity, 1.0))
        top = float(row.max()) if row.size else 0.0
        return row / top if top > 0 else None

    # ------------------------------------------------------------------- search
    def search(self, text: str, user_id: str | None = None, k: int = 10,
               discovery: float | None = None, *, parsed: ParsedRequest | None = None,
               exclude: Sequence[int] = ()) -> dict[str, Any]:
        """Items for a request in words, optionally blended with a user's taste.

        The request is read against the catalog first (``serendip.text.request``): titles it
        names become the context ("like Star Wars") and are not returned themselves; genre
        words, "older"/"newer" and "not ..." act on the catalog's own fields.  A request with
        no word the catalog or the encoder knows answers an empty list with a ``note``; a weak
        best match answers its nearest items with a ``note`` saying so.  ``discovery`` defaults
        to ``SEARCH_DISCOVERY`` (0: the request decides; the web page sends the same default).
        ``parsed``: a reading made elsewhere (a conversation's state) instead of the text's own;
        ``exclude``: items never to return (a conversation's disliked ones).
        """
        s = self.lifecycle.state
        enc = self.lifecycle.encoder()
        prompt = request_text(text)
        if parsed is None:
            parsed = parse_request(prompt, self._catalog_index(s, enc))
        d = SEARCH_DISCOVERY if discovery is None else float(discovery)
        preset = self.config.default_preset
        base = {"user_id": user_id, "preset": preset, "discovery": d, "query": text,
                "understood": _understood(parsed, s)}
        if not parsed.understood:
            return {**base, "impression_id": self.log_impression(user_id, [], preset, d, text),
                    "session_items": [], "items": [], "match": "none",
                    "note": f"Nothing in the catalog matches \u201c{prompt}\u201d: none of its "
                            "words is known here. Try other words, a title or a genre."}
        # what to encode: the request's own words; with none left (only titles, genres or
        # attribute words), the genres named, else the whole request
        main = (parsed.text if parsed.known_words else
                " ".join(parsed.genres) if parsed.genres else prompt)
        texts = [main, *parsed.avoid]
        with self.lifecycle.encoder_lock:
            vecs = np.asarray(enc.encode(texts, progress=False), dtype=np.float32)
        if vecs.shape[1] != s.vectors.shape[1]:
            raise ConfigError(
                f"the encoder gives {vecs.shape[1]}-d vectors but the model's items have "
                f"{s.vectors.shape[1]}-d ones; retrain with this encoder"
            )
        vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        qv = vecs[0]
        mentions = np.asarray([i for i in parsed.mentions if not s.excluded[i]], dtype=np.int64)
        if mentions.size:  # "like X": the named items' meaning, plus what else was asked
            mv = s.vectors[mentions].mean(axis=0)
            qv = (mv + (qv if parsed.known_words else 0.0)).astype(np.float32)
            qv /= max(float(np.linalg.norm(qv)), 1e-12)
        blocked = s.excluded.copy()
        blocked[mentions] = True
        blocked[np.asarray(list(exclude), dtype=np.int64)] = True
        hist = np.zeros(0, dtype=np.int64)
        neg = np.zeros(0, dtype=np.int64)
        u = None
        if user_id is not None:
            hist, neg = self.feedback.history(s, user_id)
            blocked[hist] = True
            blocked[neg] = True
            u = s.user_index(user_id) if hist.size or neg.size else None
        idx = self._catalog_index(s, enc)
        if parsed.not_genres:
            for i, cats in enumerate(idx.item_categories):
                if cats & set(parsed.not_genres):
                    blocked[i] = True
        era_ref = self._era_reference(idx, parsed, mentions)
        if era_ref is not None:  # "older"/"newer" is a condition on the catalog's years
            y = idx.years
            wrong = (y >= era_ref) if parsed.era == "older" else (y <= era_ref)
            blocked |= np.isfinite(y) & wrong
        adjust = self._attribute_boost(s, enc, parsed, mentions, vecs[1:])
        pipe = self._pipeline(s, preset)
        n_pool = max(pipe.preset.candidates, k)
        with self._compute_lock:
            pool, session, context, cos = self._search_pool(s, pipe, qv, u, hist, neg, blocked,
                                                            n_pool, mentions, adjust)
        q = Query(u, context, prompt, discovery=d)
        lst = pool
        for rr in pipe.rerankers:
            lst = rr(q, lst, k)
        lst = with_relevance_rank(lst.take(np.arange(min(k, len(lst)))), pool)
        lst = lst.with_reasons([
            [*self._request_reasons(s, parsed, mentions, i, cos(i)),
             *(x for x in r if x not in RELEVANCE_REASONS)]  # the request says why
            for i, r in zip(lst.items.tolist(), lst.reason_lists(), strict=True)])
        items = self.describe(s, Query(u, hist), lst)
        imp_id = self.log_impression(user_id, items, preset, d, text)
        best = max((cos(i) for i in lst.items.tolist()), default=0.0)
        weak = best < WEAK_MATCH and not (mentions.size or parsed.genres)
        out = {**base, "impression_id": imp_id,
               "session_items": [s.item_ids[i] for i in session.tolist()], "items": items,
               "match": "weak" if weak else "good"}
        if weak:
            out["note"] = ("Nothing in the catalog matches this request closely; these are the "
                           "nearest items.")
        return out

    def _catalog_index(self, s: ModelState, enc: Any) -> CatalogIndex:
        """The request parser's view of the catalog (built once per model state)."""
        got = getattr(s, "_catalog_index", None)
        if got is None:
            items = s.rec.data.items
            cat_col = s.rec.data.category_column or next(
                (c for c in ("genres", "genre", "categories", "tags") if c in items.columns), None)
            year_col = next((c for c in ("year", "release_year", "date", "release_date",
                                         "published", "original_publication_year")
                             if c in items.columns), None)
            vocab = enc.vocabulary() if hasattr(enc, "vocabulary") else ()
            texts = (" ".join(cell_text(v) for v in row)
                     for row in items.drop(columns=["item_id"]).itertuples(index=False))
            got = CatalogIndex(
                s.titles,
                [cell_text(v) for v in items[cat_col].tolist()] if cat_col else None,
                [cell_text(v) for v in items[year_col].tolist()] if year_col else None,
                texts, vocab)
            s._catalog_index = got  # type: ignore[attr-defined]
        return got

    @staticmethod
    def _era_reference(idx: CatalogIndex, parsed: ParsedRequest, mentions: np.ndarray
                       ) -> float | None:
        """The year "older"/"newer" is measured from: the titles named, else the catalog's
        median year (None without an era word or without years)."""
        if parsed.era is None or not idx.has_years:
            return None
        named = idx.years[mentions] if mentions.size else np.zeros(0)
        named = named[np.isfinite(named)]
        return float(named.mean()) if named.size else float(np.nanmedian(idx.years))

    def _attribute_boost(self, s: ModelState, enc: Any, parsed: ParsedRequest,
                         mentions: np.ndarray, avoid: np.ndarray) -> Any:
        """``adjust(items, scores)``: the request's attribute words as shifts of the search
        blend (in its standardised units): ``GENRE_BOOST`` for a genre it names, minus the
        standardised closeness to each "not ..." word.  ("older"/"newer" and "not <genre>" are
        conditions, applied as filters.)"""
        idx = self._catalog_index(s, enc)
        wanted = set(parsed.genres)

        def adjust(items: np.ndarray, scores: np.ndarray) -> np.ndarray:
            out = scores.copy()
            if wanted:
                out += GENRE_BOOST * np.fromiter(
                    (1.0 if idx.item_categories[i] & wanted else 0.0 for i in items.tolist()),
                    dtype=np.float64, count=items.size)
            for av in avoid:
                sim = (s.vectors[items] @ av).astype(np.float64)
                sd = float(sim.std())
                out -= (sim - float(sim.mean())) / (sd if sd > 0 else 1.0)
            return out

        return adjust

    def _request_reasons(self, s: ModelState, parsed: ParsedRequest, mentions: np.ndarray,
                         i: int, cosine: float) -> list[str]:
        """Why an item answers the request, in the request's own terms."""
        out = []
        if mentions.size:
            out.append(f"like {s.titles[int(mentions[0])]}, which you named")
        if parsed.genres:
            idx = self._catalog_index(s, None)
            got = sorted(idx.item_categories[i] & set(parsed.genres))
            if got:
                out.append(f"{' and '.join(got)}, as you asked")
        year = self._catalog_index(s, None).years[i]
        if parsed.era is not None and np.isfinite(year):
            out.append(f"from {int(year)}, {parsed.era} as you asked")
        if parsed.known_words and not mentions.size and cosine >= WEAK_MATCH:
            strength = "closely" if cosine >= GOOD_MATCH else "partly"
            out.append(f"{strength} matches \u201c{parsed.text}\u201d")
        return out or ["the nearest match to your request in this catalog"]

    def _search_pool(self, s: ModelState, pipe: Pipeline, qv: np.ndarray, u: int | None,
                     hist: np.ndarray, neg: np.ndarray, blocked: np.ndarray, n_pool: int,
                     named: np.ndarray | None = None, adjust: Any = None
                     ) -> tuple[ItemList, np.ndarray, np.ndarray, Any]:
        """Search candidates: standardised text match + weighted standardised taste.

        Returns the pool (best first), the session items (best text matches), the context
        (history + session) and a function giving an item's cosine to the request.
        """
        w = self.config.search_user_weight
        r = s.retriever
        space = r.spaces.get(TEXT_SPACE) if r is not None else None
        if r is None or space is None:
            cos = (s.vectors @ qv).astype(np.float64)
            text_score = np.where(blocked, -np.inf, cos)
            n_ok = int((~blocked).sum())
            if named is not None and named.size:
                session = named  # the titles the request names are its context
            else:
                session = np.argsort(-text_score, kind="stable")[: min(SESSION_ITEMS, n_ok)]
            context = np.concatenate([hist, session]).astype(np.int64)
            taste = standardize(pipe.hybrid.score_many([Query(u, context)])[0])
            taste = np.where(np.isfinite(taste), taste, 0.0)
            blend = standardize(text_score) + w * taste
            if adjust is not None:
                blend = adjust(np.arange(s.n_items), blend)
            blend = np.where(blocked, -np.inf, blend)
            pool = ItemList(np.arange(s.n_items), blend)
            pool = pool.take(np.flatnonzero(np.isfinite(blend))).top(n_pool)
            return pool, session, context, lambda i: float(cos[i])
        # large catalog: text matches from the text index + the taste blend's own candidates
        n_src = r.config.per_source + int(hist.size + neg.size)
        text_hits = space.search(qv, n_src)
        text_hits = text_hits[~blocked[text_hits]]
        session = (named if named is not None and named.size
                   else text_hits[:SESSION_ITEMS])
        context = np.concatenate([hist, session]).astype(np.int64)
        tq = Query(u, context)
        taste_hits = pipe.hybrid.retrieve(tq, r, n_src, allowed=~blocked).items
        cand = np.unique(np.concatenate([text_hits, taste_hits, session]))
        mu, sd = space.stats(qv.astype(np.float64), 0.0)
        cos_c = (s.vectors[cand] @ qv).astype(np.float64)
        text_z = (cos_c - mu) / (sd if sd > 0 else 1.0)
        ref = pipe.hybrid.score_items(tq, r, s.reference)
        ref = ref[np.isfinite(ref)]
        t_mu = float(ref.mean()) if ref.size else 0.0
        t_sd = float(ref.std()) if ref.size else 0.0
        taste = (pipe.hybrid.score_items(tq, r, cand) - t_mu) / (t_sd if t_sd > 0 else 1.0)
        taste = np.where(np.isfinite(taste), taste, 0.0)
        blend_c = text_z + w * taste
        if adjust is not None:
            blend_c = adjust(cand, blend_c)
        blend_c = np.where(blocked[cand], -np.inf, blend_c)
        keep = np.isfinite(blend_c)
        pool = ItemList(cand[keep], blend_c[keep]).top(n_pool)
        cos_of = dict(zip(cand.tolist(), cos_c.tolist(), strict=True))
        return pool, session, context, lambda i: cos_of.get(int(i), float(s.vectors[i] @ qv))

    # ------------------------------------------------------------------- conversation
    def converse(self, message: str, conversation_id: str | None = None,
                 user_id: str | None = None, k: int = 10) -> dict[str, Any]:
        """One turn of a conversation: the message refines the stored state
        (``serendip.conversation``), the state answers as a search, and a short reply comes
        back with the items.  A new conversation is started when no id is given."""
        s = self.lifecycle.state
        enc = self.lifecycle.encoder()
        prompt = request_text(message)
        idx = self._catalog_index(s, enc)
        stored = None
        if conversation_id is not None:
            stored = self.store.get_conversation(conversation_id)
            if stored is None:
                raise UnknownIdError(f"unknown conversation id {conversation_id!r}")
            user_id = stored["user_id"] if stored["user_id"] is not None else user_id
        cid = conversation_id or uuid.uuid4().hex
        state = _state_from_stored(stored["state"] if stored else {}, s)
        update, parse_source = self._parse_message(prompt, idx)
        state = apply_message(state, update)
        text = state.text or " ".join(state.genres) or prompt
        words = parse_request(text, idx)
        parsed = ParsedRequest(
            text=text, mentions=state.liked, era=state.era, genres=state.genres,
            not_genres=state.not_genres, avoid=state.avoid, known_words=words.known_words,
            words=words.words)
        if parsed.understood:
            out = self.search(text, user_id, k, state.discovery, parsed=parsed,
                              exclude=state.disliked)
        elif not state.text and not state.not_genres and update.understood:
            # nothing to look for yet, only how far to go ("surprise me" as a first message):
            # the person's own list (the trending one for someone new) at that discovery
            out = self._taste_list(s, user_id, k, state.discovery, state.disliked)
        else:
            out = self.search(prompt, user_id, k, state.discovery)
        titles = [it["title"] for it in out["items"]]
        answer, reply_source = conversation_reply(state, s.titles, titles), "template"
        gen = self.conversation_generator
        if gen is not None and self.runner is not None and titles:
            got = self.runner.call(reply_with_generator, prompt, state, s.titles, titles, gen)
            if got is not None and got[0] is not None:
                answer, reply_source = got[0], "generator"
        messages = [*(stored["messages"] if stored else []),
                    {"role": "user", "text": prompt},
                    {"role": "assistant", "text": answer, "items": [it["item_id"] for it in
                                                                    out["items"]]}]
        self.store.save_conversation(cid, user_id, _state_to_stored(state, s), messages)
        return {**out, "conversation_id": cid, "reply": answer,
                "state": _state_to_stored(state, s), "turns": state.turns,
                "parse_source": parse_source, "reply_source": reply_source}

    def _taste_list(self, s: ModelState, user_id: str | None, k: int,
                    discovery: float | None, exclude: Sequence[int]) -> dict[str, Any]:
        """A conversation's list when it names no topic: the person's recommendations (the
        trending ones without a history), leaving out the items disliked in it."""
        if user_id is not None:
            hist, neg = self.feedback.history(s, user_id)
        else:
            hist, neg = np.zeros(0, np.int64), np.zeros(0, np.int64)
        neg = np.union1d(neg, np.asarray(list(exclude), dtype=np.int64))
        q = Query(s.user_index(user_id) if user_id is not None and (hist.size or neg.size)
                  else None, hist)
        out = self._serve(s, q, user_id, k, None, discovery, self._allowed(s, (), neg))
        return {**out, "query": "", "session_items": [], "match": "good"}

    def _parse_message(self, prompt: str, idx: CatalogIndex) -> tuple[Update, str]:
        """The generator's parse of a message when it gives a valid one in time, else the
        rules' (with where it came from)."""
        gen = self.conversation_generator
        if gen is not None and self.runner is not None:
            got = self.runner.call(parse_with_generator, prompt, idx, gen)
            if got is not None:
                return got, "generator"
        return parse_message(prompt, idx), "rules"

    def conversation(self, conversation_id: str) -> dict[str, Any]:
        got = self.store.get_conversation(conversation_id)
        if got is None:
            raise UnknownIdError(f"unknown conversation id {conversation_id!r}")
        return got

    # ------------------------------------------------------------------- explanations
    def explain(self, user_id: str, item_id: str) -> dict[str, Any]:
        """Why ``item_id`` suits ``user_id``, in sentences built only from the data: how many
        people chose it, where it stands in the catalog's popularity, and which of the
        person's items it is most like.  Works for a person without history too."""
        s = self.lifecycle.state
        i = s.index(item_id)
        if i is None:
            raise UnknownIdError(f"unknown item id {item_id!r}")
        hist, _ = self.feedback.history(s, user_id)
        title = s.titles[i]
        recent = np.unique(hist[-50:])
        recent = recent[recent != i]  # the item itself explains nothing
        because: list[dict[str, Any]] = []
        unexp: float | None = None
        if recent.size:
            sims = s.vectors[recent] @ s.vectors[i]
            order = np.argsort(-sims, kind="stable")[:3]
            because = [{"item_id": s.item_ids[int(recent[j])], "title": s.titles[int(recent[j])],
                        "similarity": round(float(sims[j]), 4)} for j in order]
            unexp = round(float(1.0 - sims.mean()), 4)
        users = int(s.popularity[i])
        pct = round(float(s.percentile[i]), 1)
        below = round(float(s.less_popular_share[i]), 1)
        bits = round(float(s.self_info[i]), 3)
        parts = [popularity_sentence(title, users, s.n_users, below, bool(s.head[i]),
                                     bool(s.popularity[i] >= s.popularity.max()))]
        if i in set(hist.tolist()):
            parts.append("You have already chosen it.")
        if because:
            named = [b["title"] for b in because[:2]]
            parts.append(f"Of what you liked, it is most like {' and '.join(named)}.")
            if unexp is not None and unexp >= UNLIKE_HISTORY:
                parts.append("It is unlike most of what you usually choose, so it may be a "
                             "surprise.")
        elif hist.size == 0:
            parts.append("You have no history yet, so it was picked because many people chose "
                         "it lately, not for your taste.")
        text = " ".join(parts)
        prose_text, prose_source = text, "template"
        if self.generator is not None and self.runner is not None:
            facts = {"similar titles": [b["title"] for b in because], "people who chose it":
                     users, "people in the data": s.n_users}
            got = self.runner.call(make_prose, title, parts, facts, self.generator)
            if isinstance(got, ProseResult) and got.source == "generator":
                prose_text, prose_source = got.text, "generator"
        return {"user_id": user_id, "item_id": item_id, "title": title, "because": because,
                "popularity": {"users": users, "of_people": s.n_users, "percentile": pct,
                               "more_popular_than_share": below},
                "novelty_bits": bits, "unexpectedness": unexp, "text": text,
                "prose": prose_text, "prose_source": prose_source}

    # ------------------------------------------------------------------- off-policy evaluation
    def off_policy(self, presets: Sequence[str] | None = None, explore: float = 0.0,
                   window: float = 86_400.0, limit: int = 2_000) -> dict[str, Any]:
        """IPS/SNIPS estimates of presets' reward per slot from the impression and event logs
        (``serendip.explore.replay``), under the current model."""
        from serendip.explore.replay import as_json, evaluate_targets, replay_log

        s = self.lifecycle.state
        names = list(dict.fromkeys(presets)) if presets else list(s.pipelines)
        targets = {n: self._pipeline(s, n) for n in names}
        self.impression_writer.flush(10.0)  # include what was just served
        excluded = s.excluded if s.excluded.any() else None
        # histories rebuilt as serving reads them: low ratings as negatives, deleted items out
        replay = replay_log(self.store.impressions_frame(), self.store.events_frame(),
                            s.item_pos, s.user_pos, s.n_items, window, limit,
                            history_limit=self.config.history_limit,
                            shown_limit=self.config.shown_limit,
                            negative_below=s.rec.negative_below, excluded=excluded)
        return as_json(evaluate_targets(replay, targets, explore, excluded), extended=True)

    def presets(self) -> list[dict[str, Any]]:
        s = self.lifecycle.current
        if s is None:
            return [{"name": name, "description": p.description, "discovery": p.discovery}
                    for name, p in self.config.all_presets().items()]
        return [{"name": name, "description": pipe.preset.description,
                 "discovery": pipe.preset.discovery,
                 "learned": None if pipe.bandit is None else {
                     k: round(v, 6) for k, v in pipe.bandit.weights().items()}}
                for name, pipe in s.pipelines.items()]
