"""Compiled inner loop of the served bandit's propensity counting (``LinearTS._probed_firsts``).

Counting a slate's returns runs the policy about as many times as it has candidates, and a
run needs only a few scores: the shown items', then candidates by posterior mean until every
open slot has more candidates above its item than its number.  Written with numpy, that was
dozens of array calls per batch of runs, each on a small array, and the calls' own cost
outweighed the arithmetic.  Here one call makes a batch of runs, each scoring candidates one
at a time and stopping as soon as no open slot can still take its item, and the batch stops
at the run that settles its last open slot, so no run is made past it.

The arithmetic is ``_product``'s, term for term: float32 products ``w_f x_f`` summed in
feature order, then ``+ sd z`` with z from the normal grid; numba compiles without fast-math,
so no product and sum are fused and every score is numpy's value bit for bit (but for the
sign of a zero, where ``_product`` skips a term whose feature is 0; no comparison sees it),
which a test checks against ``_product``.  Run r's noise for the candidate at place t of the
scoring order is ``grid[bits(seed, r, t)]``: 16 bits of splitmix64's output for counter
``r * words + t // 4 + 1`` (Steele, Lea & Flood 2014, "Fast splittable pseudorandom number
generators"), so each run and candidate has its own draw, fixed whichever candidates a run
leaves unscored, and a test can recompute any of them.  The list shown draws its noise from
the policy's own generator instead: the same uniform 16-bit index into the same grid, so the
same policy in distribution.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numba import njit

__all__ = ["count_runs", "GOLDEN", "compiled"]


def compiled(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``numba.njit`` with its machine code cached on disk, or, where numba finds no writable
    place for that cache (a read-only install), compiled once in each process instead of
    failing the request that first needs it."""

    def wrap(fn: Callable[..., Any]) -> Any:
        try:
            return njit(cache=True, **options)(fn)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return njit(cache=False, **options)(fn)

    return wrap

#: splitmix64's increment (2^64 / the golden ratio)
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@compiled(nogil=True)
def count_runs(w, picks, xm, sd, cols, grid, seed, slots, last, own, above, first):  # pragma: no cover - compiled
    """Make up to ``len(w)`` runs over candidates in scoring order, counting per open slot how
    many candidates rank above its shown item, until every open slot has had a run that puts
    its item there; returns how many runs were made.

    ``w``: runs x features float32 weights (the offsets' column of ones last); ``picks``: per
    run the budget's pick as a candidate position (-1 none; empty: no budget), which takes the
    last slot; ``xm``: features x n float32, ``sd``: the n offsets' sd and ``cols``: the n
    candidate positions, all in scoring order, the slate's shown items first in slot order
    (slot j's item at place j); ``grid``: the normal quantiles; ``seed``: a uint64;
    ``slots``: the open slots; ``last``: the slate's last slot.  Fills ``own`` (open slots x
    runs: the shown items' scores), ``above`` (open slots x runs: the candidates ranking above,
    a higher score or an equal one and an earlier position; a run stops scoring once no slot
    still open in it, that is not yet settled by an earlier run of the batch, can take its
    item, so other counts may stop short) and ``first`` (per open slot, the first run that
    puts its item there, -1 none)."""
    n_runs = w.shape[0]
    n_feat, n = xm.shape
    n_open = slots.size
    k = last + 1
    words = np.uint64((n + 3) // 4)
    shown = np.empty(k, dtype=np.float32)
    first[:] = -1
    waiting = n_open
    for r in range(n_runs):
        if waiting == 0:
            return r
        pick = picks[r] if picks.size else -1
        base = np.uint64(r) * words
        for t in range(k):
            shown[t] = _score(w, r, xm, sd, cols, grid, seed, base, t, pick, n_feat)
        for q in range(n_open):
            own[q, r] = shown[slots[q]]
            above[q, r] = 0
        for t in range(n):
            s = shown[t] if t < k else _score(w, r, xm, sd, cols, grid, seed, base, t, pick,
                                              n_feat)
            open_any = False
            for q in range(n_open):
                o = own[q, r]
                if s > o or (s == o and cols[t] < cols[slots[q]]):
                    above[q, r] += 1
                # a slot settled by an earlier run of the batch keeps no run going
                if (first[q] < 0 and above[q, r] <= slots[q]
                        and not (slots[q] == last and pick >= 0)):
                    open_any = True
            if not open_any:
                break
        for q in range(n_open):
            if first[q] < 0:
                if slots[q] == last and pick >= 0:
                    hit = pick == cols[slots[q]]
                else:
                    hit = above[q, r] == slots[q]
                if hit:
                    first[q] = r
                    waiting -= 1
    return n_runs


@compiled(nogil=True, inline="always")
def _score(w, r, xm, sd, cols, grid, seed, base, t, pick, n_feat):  # pragma: no cover - compiled
    """Run r's score of the candidate at place t, in ``_product``'s order and precision."""
    if pick == cols[t]:
        return np.float32(-np.inf)
    acc = w[r, 0] * xm[0, t]
    for f in range(1, n_feat):
        acc = acc + w[r, f] * xm[f, t]
    z = seed + (base + np.uint64(t // 4 + 1)) * GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z = z ^ (z >> np.uint64(31))
    bits = (z >> np.uint64(16 * (t % 4))) & np.uint64(0xFFFF)
    return acc + grid[bits] * sd[t]
