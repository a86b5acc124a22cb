"""Compiled inner loop of the served bandit's propensity counting (``LinearTS._probed_hits``).

Counting a slate's returns runs the policy about as many times as it has candidates, and each
run needs only a few scores (the probe block's, and those of later blocks for the few runs
still open).  Written with numpy, a block of runs was some fifty array calls, each on a small
array, so the calls' own cost outweighed the arithmetic.  Here one call scores a block for a
batch of runs and counts, per open slot, how many of its candidates rank above that slot's
shown item, stopping a run's block as soon as no open slot can still take its item.

The arithmetic is ``_product``'s, term for term: float32 products ``w_f x_f`` summed in
feature order, then ``+ sd z`` with z from the normal grid; numba compiles without fast-math,
so no product and sum are fused and every score is the same bits as numpy's (a test checks
this against ``_product``).  Leaving the rest of a dead run's block unscored changes no run's
outcome: its answer no longer depends on those scores (see ``LinearTS._probed_hits``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["probe_block"]


@njit(cache=True, nogil=True)
def probe_block(w, rows, xm, sd, grid, bits, picks, cols, before, own, above, slots,  # pragma: no cover - compiled
                last, first):
    """Score one block of candidates for the runs ``rows`` and add to ``above``.

    ``w``: runs x features float32 weights (the offsets' column of ones last); ``xm``:
    features x m float32 block features, ``sd``: the m offsets' sd; ``grid``: the normal
    quantiles; ``bits``: at least len(rows) x m uint16, run t's candidate i drawing
    ``grid[bits[t * m + i]]``; ``picks``: per run the budget's pick (-1 none; empty: no
    budget), ``cols``: the block's candidate positions; ``before``: per open slot, how many of
    the block's candidates come before its shown item (in the first block, the item's own
    index); ``own``: open slots x runs, the shown items' scores (filled here when ``first``);
    ``above``: open slots x runs counts; ``slots``: the open slots' numbers; ``last``: the
    slate's last slot.  Returns, per row of ``rows``, whether some open slot can still take its
    shown item (scored in full when so)."""
    n_rows = rows.size
    n_feat, m = xm.shape
    n_open = slots.size
    alive = np.zeros(n_rows, dtype=np.bool_)
    score = np.empty(m, dtype=np.float32)
    done = np.zeros(m, dtype=np.bool_)
    for t in range(n_rows):
        r = rows[t]
        pick = picks[r] if picks.size else -1
        base = t * m
        if first:  # the shown items' own scores come before any comparison
            done[:] = False
            for q in range(n_open):
                i = before[q]
                if not done[i]:
                    score[i] = _score(w, r, xm, sd, grid, bits, base, i, cols, pick, n_feat)
                    done[i] = True
                own[q, r] = score[i]
        open_any = False
        for q in range(n_open):
            if _may_take(above[q, r], slots[q], last, pick):
                open_any = True
        for i in range(m):
            if not open_any:
                break
            if first and done[i]:
                s = score[i]
            else:
                s = _score(w, r, xm, sd, grid, bits, base, i, cols, pick, n_feat)
            open_any = False
            for q in range(n_open):
                o = own[q, r]
                if s > o or (s == o and i < before[q]):
                    above[q, r] += 1
                if _may_take(above[q, r], slots[q], last, pick):
                    open_any = True
        alive[t] = open_any
    return alive


@njit(cache=True, nogil=True, inline="always")
def _may_take(above, slot, last, pick):  # pragma: no cover - compiled
    """Whether a run with ``above`` candidates over a slot's item may still put it there."""
    return above <= slot and not (slot == last and pick >= 0)


@njit(cache=True, nogil=True, inline="always")
def _score(w, r, xm, sd, grid, bits, base, i, cols, pick, n_feat):  # pragma: no cover - compiled
    """Run r's score of the block's candidate i, in ``_product``'s order and precision."""
    if pick == cols[i]:
        return np.float32(-np.inf)
    acc = w[r, 0] * xm[0, i]
    for f in range(1, n_feat):
        acc = acc + w[r, f] * xm[f, i]
    z = grid[bits[base + i]] * sd[i]
    return acc + z
