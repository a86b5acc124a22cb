"""Prometheus metrics in the text exposition format (0.0.4), written by hand.

Request counts by method/route/status, a latency histogram per route, model age, events and
impressions counted by this process, and the impression writer's counters (written, dropped,
lost, failed writes).  Routes are labelled by their template
(``/v1/users/{user_id}/recommendations``), never by the raw path, so label cardinality stays
bounded whatever ids clients send.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable

__all__ = ["Metrics", "BUCKETS"]

#: Latency histogram upper bounds in seconds (the last bucket, +Inf, is implicit).
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(x: float) -> str:
    if x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return repr(float(x))


class Metrics:
    """Thread-safe counters and histograms; ``render`` writes the exposition text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self._buckets: dict[str, list[int]] = {}
        self._sum: dict[str, float] = defaultdict(float)
        self._count: dict[str, int] = defaultdict(int)
        self._events: dict[str, int] = defaultdict(int)
        self._impressions = 0
        self.started = time.time()

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self._requests[(method, route, status)] += 1
            b = self._buckets.get(route)
            if b is None:
                b = self._buckets[route] = [0] * len(BUCKETS)
            for i, upper in enumerate(BUCKETS):
                if seconds <= upper:
                    b[i] += 1
            self._sum[route] += seconds
            self._count[route] += 1

    def events(self, new: int, duplicate: int) -> None:
        with self._lock:
            self._events["new"] += new
            self._events["duplicate"] += duplicate

    def impression(self) -> None:
        with self._lock:
            self._impressions += 1

    def render(self, gauges: Callable[[], dict[str, tuple[str, float | None]]] | None = None,
               counters: Callable[[], dict[str, tuple[str, float | None]]] | None = None) -> str:
        """The exposition text; ``gauges`` and ``counters`` return name -> (help, value), read
        at scrape time (counters kept elsewhere, e.g. by the impression writer)."""
        out: list[str] = []
        with self._lock:
            out += [
                "# HELP serendip_http_requests_total HTTP requests by method, route and status.",
                "# TYPE serendip_http_requests_total counter",
            ]
            for (method, route, status), n in sorted(self._requests.items()):
                out.append(
                    f'serendip_http_requests_total{{method="{_label(method)}",'
                    f'route="{_label(route)}",status="{status}"}} {n}'
                )
            out += [
                "# HELP serendip_http_request_duration_seconds Request latency by route.",
                "# TYPE serendip_http_request_duration_seconds histogram",
            ]
            for route in sorted(self._buckets):
                r = _label(route)
                for upper, n in zip(BUCKETS, self._buckets[route], strict=True):
                    out.append(
                        f'serendip_http_request_duration_seconds_bucket{{route="{r}",'
                        f'le="{upper}"}} {n}'
                    )
                out.append(
                    f'serendip_http_request_duration_seconds_bucket{{route="{r}",le="+Inf"}} '
                    f"{self._count[route]}"
                )
                out.append(
                    f'serendip_http_request_duration_seconds_sum{{route="{r}"}} '
                    f"{self._sum[route]:.6f}"
                )
                out.append(
                    f'serendip_http_request_duration_seconds_count{{route="{r}"}} '
                    f"{self._count[route]}"
                )
            out += [
                "# HELP serendip_events_total Events accepted by this process (new or duplicate).",
                "# TYPE serendip_events_total counter",
            ]
            for result in ("new", "duplicate"):
                out.append(f'serendip_events_total{{result="{result}"}} {self._events[result]}')
            out += [
                "# HELP serendip_impressions_total Recommendation lists served and logged.",
                "# TYPE serendip_impressions_total counter",
                f"serendip_impressions_total {self._impressions}",
            ]
        out += [
            "# HELP serendip_uptime_seconds Seconds since this process started serving.",
            "# TYPE serendip_uptime_seconds gauge",
            f"serendip_uptime_seconds {time.time() - self.started:.3f}",
        ]
        for kind, read in (("counter", counters), ("gauge", gauges)):
            for name, (help_text, value) in (read() if read else {}).items():
                if value is None:
                    continue
                out += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}",
                        f"{name} {_num(value)}"]
        return "\n".join(out) + "\n"
