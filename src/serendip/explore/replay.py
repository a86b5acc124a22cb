"""Off-policy evaluation of presets from the service's own logs: impressions and events.

Every list the service shows is logged with each slot's propensity.  A slot earns reward 1 when
the user posts a rewarding event (click, like, purchase by default) on that item within
``window`` seconds after the list was shown.  The context of an impression is the user's
history *as it was then*: their events before the impression's time, so a target preset is
asked exactly what the logged policy was asked.  Each target's exact slot distribution
(``Pipeline.slot_distribution``) gives its probability of every logged (item, slot), and
``estimate_from_target`` turns those into IPS and SNIPS estimates of its reward per slot.

Only personalised lists are used: search results (which answer a text request), filtered lists
(logged with their filter as context) and anonymous session lists are left out.  A logged slot
whose item the current model does not know stays in the log as a round no target can show (an
extra action index, ``n_items``): it adds a zero term to every target's IPS and its reward to
the logged value, rather than being dropped (dropping it would inflate the per-slot IPS).  The
user's history is rebuilt as serving builds it (``Feedback.history``): the latest event on an
item decides, skips, dislikes and ratings below the model's negative threshold are negative,
and items deleted from the catalog are left out; skipped or disliked items are left out of the
targets' lists, as serving leaves them out.  Every round carries its user as its cluster, so
intervals treat a user's slots as one unit.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from serendip.errors import DataError
from serendip.explore.bandit import SHOWN_LIMIT
from serendip.explore.log import BanditLog
from serendip.explore.ope import Estimate, estimate_from_target, on_policy_value
from serendip.types import Query

__all__ = [
    "ReplayLog", "replay_log", "evaluate_targets", "evaluate_store", "as_json",
    "served_distribution", "REWARD_TYPES", "NEGATIVE_TYPES",
]

#: Event types that count as a reward for the slot that showed the item.
REWARD_TYPES = ("click", "like", "purchase")
#: Event types that never count as history (as in serving).
NEGATIVE_TYPES = ("skip", "dislike")


@dataclass(frozen=True)
class ReplayLog:
    """Logged slots as a BanditLog, with each round's impression and the impressions' contexts."""

    log: BanditLog
    impression: np.ndarray  # round -> index into ``queries`` / ``sizes``
    queries: list[Query]  # per impression: the user's history when the list was shown
    sizes: list[int]  # per impression: the list length (slots)
    impression_ids: list[str | None]
    negatives: list[np.ndarray]  # per impression: items skipped or disliked by then
    unknown: int = 0  # logged slots whose item the model does not know (zero terms)


def replay_log(
    impressions: pd.DataFrame,
    events: pd.DataFrame,
    item_pos: Mapping[str, int],
    user_pos: Mapping[str, int],
    n_items: int,
    window: float = 86_400.0,
    limit: int | None = 5_000,
    reward_types: Sequence[str] = REWARD_TYPES,
    history_limit: int = 500,
    negative_below: float | None = None,
    excluded: np.ndarray | None = None,
    shown_limit: int = SHOWN_LIMIT,
) -> ReplayLog:
    """Rounds from logged impressions (``Store.impressions_frame``) and events
    (``Store.events_frame``), in a model's item and user index spaces.

    ``negative_below`` (the model's ``negative_below``) makes lower ratings negative feedback
    and ``excluded`` (a boolean mask) drops deleted items from histories, as serving does.
    Each query's ``shown`` holds the items of the person's ``shown_limit`` lists logged before
    it (any kind of list, as serving reads them), for a bandit's ``shown`` feature.
    Action ``n_items`` stands for every item the model does not know.
    """
    if not (np.isfinite(window) and window > 0):
        raise DataError(f"window must be a positive number of seconds, got {window!r}")
    imps = impressions[impressions["user_id"].notna() & impressions["context"].isna()
                       & impressions["propensities"].notna()]
    imps = imps.sort_values("timestamp", kind="stable")
    if limit is not None:
        imps = imps.tail(limit)
    # every list each person was shown, in time order (for ``Query.shown``)
    lists: dict[str, tuple[list[float], list[np.ndarray]]] = {}
    if shown_limit > 0 and len(imps):  # only the people and times replayed
        every = impressions[impressions["user_id"].notna()
                            & impressions["user_id"].astype(str).isin(set(imps["user_id"].astype(str)))
                            & (impressions["timestamp"] < float(imps["timestamp"].max()))]
        every = every.sort_values("timestamp", kind="stable")
        for u, t, got in zip(every["user_id"].astype(str), every["timestamp"].astype(float),
                             every["item_ids"], strict=True):
            ts_, idx_ = lists.setdefault(u, ([], []))
            ts_.append(t)
            idx_.append(np.fromiter((i for i in (item_pos.get(str(x)) for x in got)
                                     if i is not None), dtype=np.int64))
    by_user: dict[str, tuple[list[float], list[str], list[str]]] = {}
    ev = events.sort_values("timestamp", kind="stable")
    values = (ev["value"].astype(float).to_numpy() if "value" in ev.columns
              else np.full(len(ev), np.nan))
    for u, t, i, ty, v in zip(ev["user_id"].astype(str), ev["timestamp"].astype(float),
                              ev["item_id"].astype(str), ev["type"].astype(str), values,
                              strict=True):
        ts, items, types = by_user.setdefault(u, ([], [], []))
        ts.append(t)
        items.append(i)
        # a rating below the negative threshold is negative feedback, as in serving
        low = (ty == "rating" and negative_below is not None and np.isfinite(v)
               and v < negative_below)
        types.append("dislike" if low else ty)
    user_ids: dict[str, int] = {}
    unknown_item = n_items
    n_unknown = 0
    rewarding = set(reward_types)
    rows: list[tuple[int, int, int, float, float, int]] = []
    queries: list[Query] = []
    negatives: list[np.ndarray] = []
    sizes: list[int] = []
    ids: list[str | None] = []
    for user, shown, props, t0, imp_id in zip(
            imps["user_id"].astype(str), imps["item_ids"], imps["propensities"],
            imps["timestamp"].astype(float), imps["impression_id"], strict=True):
        ts, items, types = by_user.get(user, ([], [], []))
        cut = bisect.bisect_left(ts, t0)
        pos, neg = _history(items[:cut][-history_limit:], types[:cut][-history_limit:], item_pos,
                            excluded)
        # nothing known about them then: served as a new person (as serving does); what
        # they were shown before, as serving reads it
        seen = np.zeros(0, dtype=np.int64)
        if user in lists:
            ts_, idx_ = lists[user]
            before = bisect.bisect_left(ts_, t0)
            if before:
                seen = np.concatenate(idx_[max(before - shown_limit, 0):before])
        queries.append(Query(user_pos.get(user) if pos.size or neg.size else None, pos,
                             shown=seen))
        cluster = user_ids.setdefault(user, len(user_ids))
        negatives.append(neg)
        end = bisect.bisect_right(ts, t0 + window)
        later = {items[j] for j in range(cut, end) if types[j] in rewarding}
        n = len(queries) - 1
        sizes.append(len(shown))
        ids.append(None if imp_id is None or (isinstance(imp_id, float) and np.isnan(imp_id))
                   else str(imp_id))
        for slot, (iid, p) in enumerate(zip(shown, props, strict=True)):
            if p is None or not np.isfinite(p) or p <= 0:
                continue  # no propensity logged: the slot cannot be weighed
            index = item_pos.get(str(iid))
            if index is None:
                index = unknown_item
                n_unknown += 1
            rows.append((n, index, slot, float(str(iid) in later), float(p), cluster))
    if not rows:
        raise DataError(
            "no logged recommendation slots to evaluate: serve personalised lists (they log "
            "propensities) and post events before estimating"
        )
    arr = np.array(rows, dtype=np.float64)
    log = BanditLog(action=arr[:, 1].astype(np.int64), position=arr[:, 2].astype(np.int64),
                    reward=arr[:, 3], pscore=arr[:, 4], n_actions=n_items + 1,
                    n_positions=max(sizes), cluster=arr[:, 5].astype(np.int64))
    return ReplayLog(log, arr[:, 0].astype(np.int64), queries, sizes, ids, negatives, n_unknown)


def _history(items: list[str], types: list[str], item_pos: Mapping[str, int],
             excluded: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(positive history oldest first, negative items); the latest event on an item decides,
    as in serving."""
    last: dict[int, bool] = {}
    for iid, ty in zip(items, types, strict=True):
        i = item_pos.get(iid)
        if i is None or (excluded is not None and excluded[i]):
            continue
        last.pop(i, None)
        last[i] = ty not in NEGATIVE_TYPES
    return (np.fromiter((i for i, ok in last.items() if ok), dtype=np.int64),
            np.fromiter((i for i, ok in last.items() if not ok), dtype=np.int64))


def evaluate_targets(replay: ReplayLog, targets: Mapping[str, object],
                     explore: float | None = 0.0, excluded: np.ndarray | None = None,
                     ) -> dict[str, object]:
    """IPS and SNIPS per target pipeline (name -> ``Pipeline``), plus the logged value.

    ``explore`` is the targets' exploration rate (0: their deterministic lists; None: each
    preset's own).  Returns ``{"logged": Estimate, "rounds": n, "impressions": m,
    "seconds": s, "targets": {name: {"ips": Estimate, "snips": Estimate, "support": x}}}``
    where overlap is the share of logged rounds whose (item, slot) the target can show.
    ``excluded`` (a boolean mask) marks items no list may show (deleted from the catalog).
    """
    t0 = time.perf_counter()
    log = replay.log
    out: dict[str, dict[str, object]] = {}
    for name, pipe in targets.items():
        probs = np.zeros(len(log))
        per_imp: dict[int, dict[tuple[int, int], float]] = {}
        for r, (n, a, p) in enumerate(zip(replay.impression.tolist(), log.action.tolist(),
                                          log.position.tolist(), strict=True)):
            dist = per_imp.get(n)
            if dist is None:
                allowed = None
                neg = replay.negatives[n]
                n_items = log.n_actions - 1  # the last action: items the model does not know
                if neg.size or excluded is not None:
                    allowed = (np.ones(n_items, dtype=bool) if excluded is None
                               else ~np.asarray(excluded, dtype=bool))
                    allowed[neg] = False
                items, pr = served_distribution(pipe, replay.queries[n], replay.sizes[n],
                                                explore, allowed)
                dist = {(int(items[i]), int(s)): float(pr[i, s])
                        for i, s in zip(*np.nonzero(pr), strict=True)}
                per_imp[n] = dist
            probs[r] = dist.get((a, p), 0.0)
        if probs.sum() > 0:
            est = estimate_from_target(log, probs)
            ips, snips = est["ips"], est["snips"]
        else:  # the target shows none of the logged (item, slot) pairs: IPS says 0, SNIPS nothing
            ips, snips = Estimate.from_terms(np.zeros(len(log))), None
        out[name] = {"ips": ips, "snips": snips, "overlap": float(np.mean(probs > 0))}
    logged: Estimate = on_policy_value(log)
    return {"logged": logged, "rounds": len(log), "impressions": len(replay.queries),
            "unknown_items": replay.unknown, "users": log.n_clusters,
            "seconds": time.perf_counter() - t0, "targets": out}


def served_distribution(pipe: object, query: Query, k: int, explore: float | None = 0.0,
                        allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The (items, slot probabilities) ``pipe`` serves for ``query``, as serving computes it.

    Serving (``Serving._serve``) calls ``Pipeline.recommend_many([query], k, discovery=None
    (the preset's), candidates=allowed items, explore=...)``; ``Pipeline.slot_distribution``
    goes through the same candidates, cold-start pool, rerankers and discovery, with the
    explorer's exact marginals, and with ``record=False`` so that replaying leaves the
    rerankers' exposure memory alone.
    """
    return pipe.slot_distribution(query, k, explore=explore, allowed=allowed)  # type: ignore[attr-defined,no-any-return]


def evaluate_store(store: object, rec: object, targets: Mapping[str, object],
                   explore: float | None = 0.0, window: float = 86_400.0,
                   limit: int | None = 5_000, shown_limit: int = SHOWN_LIMIT
                   ) -> dict[str, object]:
    """``evaluate_targets`` over a store's impressions and events for a fitted Recommender
    (``shown_limit``: the service's, when it serves with another than the default)."""
    data = rec.data  # type: ignore[attr-defined]
    item_pos = {str(x): i for i, x in enumerate(data.item_ids)}
    user_pos = {str(x): i for i, x in enumerate(data.user_ids)}
    replay = replay_log(store.impressions_frame(), store.events_frame(),  # type: ignore[attr-defined]
                        item_pos, user_pos, data.n_items, window, limit,
                        negative_below=getattr(rec, "negative_below", None),
                        shown_limit=shown_limit)
    return evaluate_targets(replay, targets, explore)


def as_json(result: Mapping[str, object], extended: bool = False) -> dict[str, object]:
    """``evaluate_targets``' result with estimates as plain dicts (infinities as None).

    ``extended`` adds each estimate's ``n_clusters`` and the result's ``unknown_items`` and
    ``users`` (the service's response schema does not carry them yet)."""

    def est(e: object) -> object:
        if not isinstance(e, Estimate):
            return e
        return {k: (None if not np.isfinite(v) else float(v)) if isinstance(v, float) else v
                for k, v in (("value", e.value), ("stderr", e.stderr), ("ci_low", e.ci_low),
                             ("ci_high", e.ci_high), ("n", e.n),
                             *((("n_clusters", e.n_clusters),) if extended else ()))}

    targets = result["targets"]
    assert isinstance(targets, Mapping)
    out = {
        "logged": est(result["logged"]), "rounds": result["rounds"],
        "impressions": result["impressions"], "seconds": round(float(result["seconds"]), 3),  # type: ignore[arg-type]
        "targets": {name: {k: est(v) for k, v in t.items()} for name, t in targets.items()},
    }
    if extended:
        out["unknown_items"] = result.get("unknown_items", 0)
        out["users"] = result.get("users")
    return out
