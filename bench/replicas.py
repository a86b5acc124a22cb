"""How fast several replicas over one PostgreSQL store follow each other.

Runs the real-process test ``tests/service/test_replicas.py::test_replicas_over_one_postgres``
(three ``serendip serve`` processes on loopback and a throwaway PostgreSQL server) with
``SERENDIP_REPLICA_TIMINGS`` set, and writes what it measured to
``bench/results/replicas.md``: the seconds until a deletion made through one replica is
invisible on the others, and until a model published by one is served by all.

    python bench/replicas.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST = "tests/service/test_replicas.py::test_replicas_over_one_postgres"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "replicas.md"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        timings = Path(tmp) / "replicas.json"
        env = {**os.environ, "SERENDIP_REPLICA_TIMINGS": str(timings)}
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              "-m", "slow", TEST], cwd=ROOT, env=env)
        if run.returncode != 0 or not timings.exists():
            print("the replica test did not pass (or was skipped: PostgreSQL missing); "
                  "nothing written", file=sys.stderr)
            return 1
        got = json.loads(timings.read_text())
    secs = ", ".join
    lines = [
        "# Replicas over one PostgreSQL store",
        "",
        f"Written by `python bench/replicas.py`; do not edit by hand. Machine: "
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}.",
        f"{got['replicas']} `serendip serve` processes on loopback, one throwaway PostgreSQL "
        f"server, catalog and model polls every {got['poll_seconds']} s, a small synthetic "
        f"model (loading a larger model takes longer).",
        "",
        "| change, made through one replica | seen by every other replica after (s) | max (s) |",
        "| --- | --- | --- |",
        f"| an item deleted | {secs(f'{v:.3f}' for v in got['deletion_seconds'])} | "
        f"{got['max_deletion_seconds']:.3f} |",
        f"| a new model published | {secs(f'{v:.3f}' for v in got['new_model_seconds'])} | "
        f"{got['max_new_model_seconds']:.3f} |",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
