"""``Runner``: calls bounded in time and in number, failures turned into None."""

from __future__ import annotations

import threading

from serendip.llm import Runner


def test_results_in_order_and_failures_as_none() -> None:
    r = Runner(deadline=5.0, workers=2)

    def boom() -> int:
        raise RuntimeError("no")

    assert r.map([(lambda x: x * 2, (3,)), (boom, ()), (str.upper, ("a",))]) == [6, None, "A"]
    assert r.failed == 1 and r.late == 0
    r.close()


def test_a_late_call_gives_none_and_finishes_in_the_background() -> None:
    r = Runner(deadline=0.05, workers=1)
    release = threading.Event()
    finished = threading.Event()

    def slow() -> str:
        release.wait(5)
        finished.set()
        return "late"

    assert r.call(slow) is None and r.late == 1
    release.set()
    assert finished.wait(5)  # it was not cancelled: a cache behind it would keep its text
    r.close()


def test_pending_calls_are_bounded() -> None:
    r = Runner(deadline=0.01, workers=1, max_pending=2)
    release = threading.Event()
    got = r.map([(release.wait, (5,))] * 3)
    assert got == [None, None, None] and r.refused == 1 and r.late == 2
    release.set()
    r.close()


def test_after_close_calls_give_none() -> None:
    r = Runner(deadline=1.0)
    r.close()
    assert r.call(lambda: 1) is None
