"""``serendip simulate``: exploration policies in the simulated MovieLens-100K world.

The world and the policies live in ``serendip.explore.simulator`` (docs/simulate.md); this
module is the command's parser and body, kept apart from ``serendip.cli`` so that ``--help``
imports nothing heavy.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from serendip.errors import ConfigError

__all__ = ["add_simulate_parser", "cmd_simulate"]

#: Policy names (``serendip.explore.simulator.POLICY_NAMES``; kept here so --help is light).
POLICIES = ("oracle", "random", "greedy", "egreedy", "lints", "linucb", "squarecb", "personal",
            "personal+new", "hier", "hier+new", "hier-squarecb", "hier-greedy", "served",
            "greedy+new", "greedy-pos", "vw-squarecb", "vw-epsilon", "mab-linucb", "mab-lints")
DEFAULT_POLICIES = ("oracle,random,greedy,greedy-pos,egreedy,lints,hier,hier+new,hier-squarecb,"
                    "hier-greedy,served")
#: Policies that need an optional library, and the library.
NEEDS = {"vw-squarecb": "vowpalwabbit", "vw-epsilon": "vowpalwabbit",
         "mab-linucb": "mabwiser", "mab-lints": "mabwiser"}


def add_simulate_parser(sub: Any, command: Callable[..., argparse.ArgumentParser]
                        ) -> argparse.ArgumentParser:
    """Add ``simulate`` to ``sub`` with the CLI's ``command`` helper; returns its parser."""
    s = command(sub, "simulate", "run exploration policies in a simulated MovieLens-100K world "
                "and print clicks, regret and discovery with intervals over seeds",
                "serendip simulate",
                "serendip simulate --policies greedy,hier,hier+new --seeds 5 --visits 6000 "
                "--json sim.json --plot sim.png",
                "serendip simulate --policies greedy,vw-squarecb,mab-linucb --quick")
    s.add_argument("--policies", default=DEFAULT_POLICIES,
                   help=f"comma list of {', '.join(POLICIES)}")
    s.add_argument("--seeds", type=int, default=5,
                   help="worlds to run (seeds 1..N); intervals need at least 2")
    s.add_argument("--visits", type=int, default=3000, help="visits per seed")
    s.add_argument("--users", type=int, default=300,
                   help="people who visit (drawn from MovieLens-100K's 943 per seed)")
    s.add_argument("--world", metavar="FILE.json",
                   help="world settings to change, as a JSON object (e.g. "
                   '{"novelty_share": 0.5, "position_decay": 1.0}; see docs/simulate.md)')
    s.add_argument("--quick", action="store_true",
                   help="2 seeds, 1,000 visits, 150 people (replaces --seeds, --visits, --users)")
    s.add_argument("--json", metavar="FILE", help="also write the table and settings as JSON")
    s.add_argument("--plot", metavar="FILE.png",
                   help="also plot cumulative clicks and discovery over the visits")
    s.set_defaults(func=cmd_simulate)
    return s


def _output(path: str | None, what: str) -> Path | None:
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{what} {path!r} is a directory; give a file name")
    if not p.parent.exists():
        raise ConfigError(f"{what} {path!r}: directory {str(p.parent)!r} does not exist")
    return p


def _world_settings(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        values = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"--world {path!r}: no such file") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"--world {path!r} is not readable JSON: {e}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"--world {path!r} must hold a JSON object of settings")
    return values


def cmd_simulate(args: argparse.Namespace) -> int:
    """Run the chosen policies in every seed's world; print the table and the targets."""
    if args.quick:
        args.seeds, args.visits, args.users = 2, 1000, 150
    for name in ("seeds", "visits", "users"):
        value = getattr(args, name)
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"--{name} must be a positive integer, got {value}")
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if not policies:
        raise ConfigError("--policies names no policy")
    for p in policies:
        if p not in POLICIES:
            raise ConfigError(f"--policies: unknown policy {p!r}; choose from "
                              f"{', '.join(POLICIES)}")
        if p in NEEDS and importlib.util.find_spec(NEEDS[p]) is None:
            raise ConfigError(f"--policies: {p!r} needs {NEEDS[p]} (pip install {NEEDS[p]})")
    json_out, plot_out = _output(args.json, "--json"), _output(args.plot, "--plot")
    from pydantic import ValidationError

    from serendip.explore.simulator import (
        LIBRARY_POLICIES,
        SERENDIP_POLICIES,
        WorldConfig,
        build_world,
        format_table,
        plot_traces,
        simulate,
        summarize,
        verdict,
    )

    try:
        config = WorldConfig(**_world_settings(args.world))
    except ValidationError as e:
        err = e.errors()[0]
        raise ConfigError(f"--world: {'.'.join(map(str, err['loc']))}: {err['msg']} "
                          f"(got {err.get('input')!r})") from None
    from serendip.data import load_movielens_100k
    from serendip.pipeline import default_cache_dir
    from serendip.text import Encoder, EncoderConfig

    quiet = bool(getattr(args, "quiet", False))
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = load_movielens_100k()
    vectors = Encoder(EncoderConfig(cache_dir=default_cache_dir())).encode_items(
        data, progress=not quiet)

    def progress(msg: str) -> None:
        if not quiet:
            print(f"[{time.perf_counter() - t0:5.0f}s] {msg}", file=sys.stderr, flush=True)

    seeds = list(range(1, args.seeds + 1))
    traces = simulate(lambda s: build_world(data, vectors, config, s, args.visits), policies,
                      seeds, args.visits, users=args.users, progress=progress)
    rows = summarize(traces, config.slots)
    people = min(args.users, data.n_users)
    capped = f" (MovieLens-100K has {data.n_users})" if args.users > data.n_users else ""
    print(f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} x {args.visits} visits by "
          f"{people} people{capped}; mean ± 95% t interval over seeds"
          f"{' (one seed: no interval)' if len(seeds) == 1 else ''}")
    print(format_table(rows))
    lines = verdict(rows, [p for p in SERENDIP_POLICIES if p in policies],
                    [p for p in LIBRARY_POLICIES if p in policies])
    print("\n".join(lines))
    if json_out is not None:
        text = json.dumps({"seeds": seeds, "visits": args.visits, "users": people,
                           "policies": policies, "world": config.model_dump(), "rows": rows,
                           "targets": lines}, indent=2)
        tmp = json_out.with_name(f".{json_out.name}.tmp-{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, json_out)
    if plot_out is not None:
        tmp = plot_out.with_name(f".{plot_out.stem}.tmp-{os.getpid()}{plot_out.suffix or '.png'}")
        plot_traces(traces, tmp)
        os.replace(tmp, plot_out)
    return 0
