"""The ``serendip`` command: fit, tune, recommend, evaluate, demo, serve, ope."""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from serendip.errors import ConfigError, DataError, SerendipError

log = logging.getLogger("serendip")


def _atomic_write(path: Path, text: str) -> None:
    """Write to a temp file beside ``path`` then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _unit(name: str) -> Callable[[str], float]:
    """An argparse type: a number in [0, 1], errors naming the option."""

    def parse(value: str) -> float:
        try:
            x = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number in [0, 1], got {value!r}") from None
        if not 0.0 <= x <= 1.0:
            raise argparse.ArgumentTypeError(f"{name} must be in [0, 1], got {value}")
        return x

    return parse


_discovery = _unit("discovery")


def _positive_int(value: str) -> int:
    try:
        x = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if x < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {x}")
    return x


def _read_user_ids(path: str) -> list[str]:
    p = Path(path)
    if not p.exists():
        raise DataError(f"users file not found: {path!r}")
    text = p.read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise DataError(f"users file is empty: {path!r}")
    if p.suffix.lower() in (".csv", ".tsv") and "user_id" in lines[0].split("," if p.suffix.lower() == ".csv" else "\t"):
        from serendip.data.io import read_table

        return read_table(p, id_columns=("user_id",))["user_id"].tolist()
    if p.suffix.lower() in (".jsonl", ".parquet", ".pq"):
        from serendip.data.io import read_table

        df = read_table(p, id_columns=("user_id",))
        if "user_id" not in df.columns:
            raise DataError(f"users file {path!r} has no 'user_id' column; found {list(df.columns)}")
        return df["user_id"].tolist()
    return lines


# ---------------------------------------------------------------------------- commands
def _input_data(args: argparse.Namespace, cfg):  # type: ignore[no-untyped-def]
    """The data named by --dataset, or read from --interactions/--items."""
    from serendip.data import Dataset, load_dataset

    if getattr(args, "dataset", None):
        if args.interactions or args.items:
            raise ConfigError("give either --dataset or --interactions/--items, not both")
        return load_dataset(args.dataset)
    if not args.interactions or not args.items:
        raise ConfigError("give --interactions FILE and --items FILE (or --dataset NAME)")
    return Dataset.from_files(args.interactions, args.items, category_column=cfg.category_column)


def _encoded(data, cfg, quiet: bool):  # type: ignore[no-untyped-def]
    from serendip.text import Encoder, EncoderConfig

    enc = Encoder(EncoderConfig(**cfg.encoder))
    return data.with_item_vectors(enc.encode_items(data, template=cfg.item_template,
                                                   progress=not quiet))


def _tune_config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from serendip.tune import TuneConfig

    values: dict[str, object] = {"budget_seconds": args.budget}
    if getattr(args, "protocol_tune", None):
        values["protocol"] = args.protocol_tune
    if getattr(args, "deep", False):
        values["deep"] = True
    from serendip.pipeline import _validate

    return _validate(TuneConfig, values, "tune")


def _print_tuning(result) -> None:  # type: ignore[no-untyped-def]
    print(f"tuned on a {result.protocol} validation split in {result.seconds:.0f}s")
    for name, m in result.models.items():
        print(f"  model {name}: {m['params']} (validation NDCG {m['ndcg']:.4f})")
    acc = result.validation["accurate"]["ndcg"]
    for name, m in result.validation.items():
        print(f"  preset {name}: NDCG {m['ndcg']:.4f} ({m['ndcg'] / acc:.3f} x accurate), "
              f"tail share {m['tail_share']:.3f}, coverage {m['coverage']:.3f}, "
              f"novelty {m['novelty']:.2f}")
    for note in result.notes:
        print(f"  note: {note}")


def cmd_fit(args: argparse.Namespace) -> int:
    from serendip.pipeline import Recommender, load_fit_config

    cfg = load_fit_config(args.config)
    t0 = time.perf_counter()
    data = _input_data(args, cfg)
    log.info("loaded %r", data)
    if args.tune:
        from serendip.tune import tune

        data = _encoded(data, cfg, args.quiet)
        result = tune(data, _tune_config(args), fit_config=cfg if args.config else None,
                      progress=not args.quiet)
        if not args.quiet:
            _print_tuning(result)
        rec = Recommender.fit(data, result.fit_config, progress=not args.quiet)
        rec.presets = dict(result.presets)
        rec.tuning = result.summary()
    else:
        rec = Recommender.fit(data, cfg, progress=not args.quiet)
    rec.save(args.out)
    tuned = f", presets tuned: {', '.join(rec.presets)}" if rec.presets else ""
    print(f"fitted {len(rec.scorers)} models on {data!r} in {time.perf_counter() - t0:.1f}s"
          f"{tuned} -> {args.out}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from serendip.pipeline import load_fit_config
    from serendip.tune import tune

    cfg = load_fit_config(args.config)
    data = _encoded(_input_data(args, cfg), cfg, args.quiet)
    result = tune(data, _tune_config(args), fit_config=cfg if args.config else None,
                  progress=not args.quiet)
    _print_tuning(result)
    written = result.write(args.out)
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    from serendip.pipeline import Recommender

    if (args.users is None) == (args.user is None):
        raise ConfigError("give exactly one of --users FILE or --user ID")
    rec = Recommender.load(args.model)
    pipe = rec.pipeline(args.preset)
    user_ids = [args.user] if args.user is not None else _read_user_ids(args.users)
    queries = [pipe.query(u) for u in user_ids]
    unknown = sum(q.user is None for q in queries)
    if unknown:
        log.warning("%d of %d user ids are not in the model; they get cold-start lists",
                    unknown, len(user_ids))
    t0 = time.perf_counter()
    lists = pipe.recommend_many(queries, args.k, args.discovery, explore=args.explore)
    log.info("recommended for %d users in %.2fs", len(user_ids), time.perf_counter() - t0)
    item_ids = rec.data.item_ids
    buf = io.StringIO()
    if args.format == "jsonl":
        for uid, lst in zip(user_ids, lists, strict=True):
            rows: list[dict[str, object]] = [
                {"item_id": str(item_ids[i]), "score": round(float(s), 6), "reasons": r}
                for i, s, r in zip(lst.items, lst.scores, lst.reason_lists(), strict=True)
            ]
            if "propensity" in lst.fields:  # exploring: each slot's probability, for logging
                for row, p in zip(rows, lst.fields["propensity"].tolist(), strict=True):
                    row["propensity"] = round(float(p), 9)
            buf.write(json.dumps({"user_id": uid, "items": rows}, ensure_ascii=False) + "\n")
    else:
        w = csv.writer(buf, lineterminator="\n")
        explored = any("propensity" in lst.fields for lst in lists)  # --explore or the preset
        w.writerow(["user_id", "rank", "item_id", "score", "reasons"]
                   + (["propensity"] if explored else []))
        for uid, lst in zip(user_ids, lists, strict=True):
            props = lst.fields.get("propensity")
            for rank, (i, s, r) in enumerate(
                zip(lst.items, lst.scores, lst.reason_lists(), strict=True), start=1
            ):
                extra = [f"{float(props[rank - 1]):.9g}"] if explored and props is not None else []
                w.writerow([uid, rank, str(item_ids[i]), f"{float(s):.6f}", " | ".join(r), *extra])
    if args.output:
        _atomic_write(Path(args.output), buf.getvalue())
        print(f"wrote {len(user_ids)} lists to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(buf.getvalue())
    return 0


def _cut(value: str) -> float | str:
    """--cut: a quantile in (0, 1), or a time (number or ISO-8601 date) kept as text."""
    try:
        return float(value)
    except ValueError:
        return value


def cmd_evaluate(args: argparse.Namespace) -> int:
    import pandas as pd

    from serendip.data import make_split
    from serendip.eval.report import write_report
    from serendip.eval.runner import run_experiment
    from serendip.pipeline import Preset, load_fit_config

    cfg = load_fit_config(args.config)
    if not args.dataset and not args.interactions:
        args.dataset = "movielens"
    data = _encoded(_input_data(args, cfg), cfg, args.quiet)
    frames = []
    cuts = [_cut(c.strip()) for c in args.cut.split(",") if c.strip()] if args.cut else [None]
    jobs = [(p.strip(), c) for p in args.protocol.split(",") if p.strip()
            for c in (cuts if p.strip() == "time" else [None])]
    for protocol, cut in jobs:
        split = make_split(data, protocol, **({"cut": cut} if cut is not None else {}))
        models = [m for m in args.models.split(",") if m]
        presets: list[str | Preset] = [p for p in args.presets.split(",") if p]
        if args.tune:  # tuned on a validation split carved from this split's training part
            from serendip.tune import tune

            result = tune(split.train, _tune_config(args), progress=not args.quiet)
            if not args.quiet:
                _print_tuning(result)
            tuned = [result.presets[n].model_copy(update={"name": f"{n} (tuned)"})
                     for n in ("accurate", "balanced", "discovery") if n in result.presets]
            # the tuned presets and models on the tuned fit; the shipped presets on the
            # default fit they were made for
            parts = [run_experiment(data, protocol, models, tuned, k=args.k,
                                    fit_config=result.fit_config, split=split,
                                    progress=not args.quiet)]
            shipped = [p for p in presets if p in ("accurate", "balanced", "discovery")]
            if shipped:
                part = run_experiment(data, protocol, [], shipped, k=args.k, fit_config=cfg,
                                      split=split, progress=not args.quiet)
                parts.append(part.assign(name=part["name"] + " (shipped)"))
            frame = pd.concat(parts, ignore_index=True)
        else:
            frame = run_experiment(data, protocol, models, presets, k=args.k, fit_config=cfg,
                                   split=split, progress=not args.quiet)
        if protocol == "time" and len(cuts) > 1:
            frame["protocol"] = f"time@{cut}"
        frames.append(frame)
    results = pd.concat(frames, ignore_index=True)
    rolled = results[results["protocol"].str.startswith("time@")]
    if len(rolled):  # rolling origin: the mean over the cuts too
        mean = rolled.groupby(["kind", "name", "discovery"], sort=False).mean(numeric_only=True)
        mean = mean.reset_index().assign(protocol=f"time, mean of {len(cuts)} cuts",
                                         split=",".join(str(c) for c in cuts))
        results = pd.concat([results, mean[results.columns]], ignore_index=True)
    cols = ["protocol", "split", "kind", "name", "discovery", "ndcg", "recall", "novelty", "tail_share",
            "coverage", "max_list_share_tail", "new_item_share", "recall_new"]
    cols = [c for c in cols if c in results.columns]
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(results[results["kind"] != "sweep"][cols].round(4).to_string(index=False))
    if args.csv:
        _atomic_write(Path(args.csv), results.to_csv(index=False))
    if args.report:
        write_report(results, args.report, title=f"serendip evaluation ({data!r})")
        print(f"report: {Path(args.report).resolve()}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    ns = argparse.Namespace(
        interactions=None, items=None, dataset="movielens", config=None,
        protocol="time,temporal,loo,cold-items", cut=None, tune=False, budget=300.0,
        models="popularity,ease,als,knn,semantic,textcf", presets="accurate,balanced,discovery",
        k=10, csv=str(out / "results.csv"), report=str(out / "report.html"), quiet=args.quiet,
    )
    print("serendip demo: MovieLens-100K, language-model item vectors, models and presets")
    return cmd_evaluate(ns)


def cmd_ope(args: argparse.Namespace) -> int:
    """Off-policy estimates of presets from a store's impressions and events."""
    from serendip.explore.replay import as_json, evaluate_store
    from serendip.pipeline import PRESETS, Recommender, load_preset
    from serendip.store import open_store

    if not (args.window > 0 and math.isfinite(args.window)):
        raise ConfigError(f"--window must be a positive number of seconds, got {args.window}")
    if not 0.0 <= args.explore <= 1.0:
        raise ConfigError(f"--explore must be between 0 and 1, got {args.explore}")
    rec = Recommender.load(Path(args.data_dir) / "model" if args.model is None else args.model)
    names = [n.strip() for n in args.presets.split(",") if n.strip()]
    targets = {}
    for name in names:
        preset = load_preset(name)
        targets[preset.name] = rec.pipeline(name if name in PRESETS else preset)
    store = open_store(args.store or f"sqlite:///{Path(args.data_dir).resolve() / 'serendip.db'}")
    try:
        result = as_json(evaluate_store(store, rec, targets, args.explore, args.window,
                                        args.limit))
    finally:
        store.close()
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    logged = result["logged"]
    assert isinstance(logged, dict)
    print(f"{result['impressions']} impressions, {result['rounds']} logged slots; "
          f"logged reward per slot {logged['value']:.4f}")
    print(f"{'target':<24} {'IPS':>8} {'± stderr':>9} {'SNIPS':>8} {'overlap':>8}")
    targets_out = result["targets"]
    assert isinstance(targets_out, dict)
    for name, t in targets_out.items():
        ips, snips = t["ips"], t["snips"]
        se = "-" if ips["stderr"] is None else f"{ips['stderr']:.4f}"
        sn = "-" if snips is None else f"{snips['value']:.4f}"
        print(f"{name:<24} {ips['value']:>8.4f} {se:>9} {sn:>8} {t['overlap']:>8.3f}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from serendip.service.app import serve

    if (args.seed_items is not None) and args.seed_interactions is None:
        raise ConfigError("--seed-items needs --seed-interactions")
    if not (args.refresh_interval >= 0 and math.isfinite(args.refresh_interval)):
        raise ConfigError(f"--refresh-interval must be >= 0 seconds, got {args.refresh_interval}")
    return serve(
        store_url=args.store, data_dir=args.data_dir, host=args.host, port=args.port,
        api_key=args.api_key, cors_origin=args.cors_origin,
        seed_interactions=args.seed_interactions, seed_items=args.seed_items,
        fit_config=args.config, max_body=args.max_body, presets=args.preset or (),
        refresh_interval=args.refresh_interval or None,
        log_level="info" if args.verbose else "warning",
    )


# ---------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="serendip", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="command", required=True)

    def data_args(a: argparse.ArgumentParser, default: str = "") -> None:
        a.add_argument("--interactions", help="CSV/Parquet/JSONL: user_id,item_id[,timestamp][,rating]")
        a.add_argument("--items", help="CSV/Parquet/JSONL: item_id + text columns")
        a.add_argument("--dataset", choices=("movielens", "goodbooks", "lastfm"),
                       help=f"a bundled real data set instead of files{default}")
        a.add_argument("--config", help="TOML fit config (encoder, models, item_template)")

    def tune_args(a: argparse.ArgumentParser) -> None:
        a.add_argument("--budget", type=float, default=600.0, metavar="SECONDS",
                       help="time budget of the tuning search (default 600)")
        a.add_argument("--tune-protocol", dest="protocol_tune",
                       choices=("time", "random", "temporal", "loo"),
                       help="validation protocol (default: time when timestamps can be "
                       "trusted, else random)")
        a.add_argument("--deep", action="store_true", help="also train the two-tower and "
                       "sequential models and let the blend weigh them (default: only when a "
                       "CUDA GPU is present; minutes on CPUs)")

    f = sub.add_parser("fit", help="encode the catalog and train every model")
    data_args(f)
    f.add_argument("--out", required=True, help="model directory to write")
    f.add_argument("--preset", help="accepted for symmetry; presets apply at recommend time")
    f.add_argument("--tune", action="store_true", help="first tune models, blend and presets "
                   "on a validation split carved from the data; the model keeps the tuned "
                   "presets")
    tune_args(f)
    f.set_defaults(func=cmd_fit)

    t = sub.add_parser("tune", help="choose models, blend and presets for this catalog on a "
                       "validation split; writes fit.toml, presets/*.toml and tuning.json")
    data_args(t)
    t.add_argument("--out", required=True, help="directory to write")
    tune_args(t)
    t.set_defaults(func=cmd_tune)

    r = sub.add_parser("recommend", help="top-k lists from a fitted model")
    r.add_argument("--model", required=True)
    r.add_argument("--users", help="file of user ids (one per line, or a table with user_id)")
    r.add_argument("--user", help="a single user id")
    r.add_argument("-k", type=_positive_int, default=10)
    r.add_argument("--preset", default="balanced", help="accurate | balanced | discovery | FILE.toml")
    r.add_argument("--discovery", type=_discovery, default=None, help="0 = accuracy .. 1 = discovery")
    r.add_argument("--explore", type=_unit("explore"), default=None,
                   help="exploration rate: each slot shows, with this chance, an item from just "
                   "below the list; items then carry their propensity (default: the preset's)")
    r.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    r.add_argument("--output", help="write here instead of stdout")
    r.set_defaults(func=cmd_recommend)

    e = sub.add_parser("evaluate", help="compare models and presets on a split")
    data_args(e, " (default: movielens)")
    e.add_argument("--protocol", default="time", help="time (fit on the past, predict the "
                   "future) | random | temporal | loo | cold-items (comma list)")
    e.add_argument("--cut", default=None, help="time protocol: quantile of event time "
                   "(default 0.8), or a time (number or ISO-8601 date); several, comma "
                   "separated, evaluate each cut (rolling origin) and their mean")
    e.add_argument("--tune", action="store_true", help="also tune presets on a validation "
                   "split carved from each training part, and evaluate them")
    tune_args(e)
    e.add_argument("--models", default="popularity,ease,als")
    e.add_argument("--presets", default="accurate,balanced,discovery")
    e.add_argument("-k", type=_positive_int, default=10)
    e.add_argument("--csv", help="write all result rows as CSV")
    e.add_argument("--report", help="write an HTML report with plots")
    e.set_defaults(func=cmd_evaluate)

    d = sub.add_parser("demo", help="the whole flow on MovieLens-100K, ending in an HTML report")
    d.add_argument("--out", default="out/demo")
    d.set_defaults(func=cmd_demo)

    s = sub.add_parser("serve", help="the HTTP API and web page over a store")
    s.add_argument("--store", help="sqlite:///abs/path.db or postgresql://... "
                   "(default: sqlite:///DATA_DIR/serendip.db)")
    s.add_argument("--data-dir", default="serendip-data", help="model and admin key directory")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-key", help="an admin key to accept (default: one created and kept "
                   "in DATA_DIR/admin.key)")
    s.add_argument("--cors-origin", help="allow this one browser origin (CORS is off otherwise)")
    s.add_argument("--seed-interactions", help="seed an empty store from this file instead "
                   "of MovieLens-100K")
    s.add_argument("--seed-items", help="the item catalog for --seed-interactions")
    s.add_argument("--config", help="TOML fit config used when fitting from the store")
    s.add_argument("--preset", action="append", metavar="FILE.toml",
                   help="serve this preset file too (repeatable); its name (the file's stem or "
                   "its 'name') replaces a shipped preset of that name")
    s.add_argument("--refresh-interval", type=float, default=60.0, metavar="SECONDS",
                   help="check this often for new catalog items (or 10%% more events) and "
                   "retrain in the background when there are some; 0 turns it off (default 60)")
    s.add_argument("--max-body", type=_positive_int, default=1 << 20,
                   help="largest request body in bytes (default 1 MiB)")
    s.set_defaults(func=cmd_serve)

    o = sub.add_parser("ope", help="estimate presets off-policy from a store's logged lists "
                       "and events")
    o.add_argument("--store", help="store URL (default: sqlite:///DATA_DIR/serendip.db)")
    o.add_argument("--data-dir", default="serendip-data", help="the service's data directory")
    o.add_argument("--model", help="fitted model directory (default: DATA_DIR/model)")
    o.add_argument("--presets", default="accurate,balanced,discovery",
                   help="comma list of shipped presets or .toml files")
    o.add_argument("--explore", type=float, default=0.0, help="the targets' exploration rate")
    o.add_argument("--window", type=float, default=86_400.0,
                   help="seconds after a list in which an event on a shown item is its reward")
    o.add_argument("--limit", type=_positive_int, default=5_000,
                   help="most recent impressions used")
    o.add_argument("--json", help="also write the estimates to this file")
    o.set_defaults(func=cmd_ope)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("evaluate", "fit", "tune") and bool(args.interactions) != bool(args.items):
        print("serendip: error: --interactions and --items go together", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except SerendipError as e:
        print(f"serendip: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
