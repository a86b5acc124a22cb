"""The ``serendip`` command: fit, tune, enrich, recommend, chat, evaluate, demo, serve, ope,
simulate, keys, users."""

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
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from serendip import __version__
from serendip.errors import ConfigError, DataError, SerendipError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from serendip.data import Dataset
    from serendip.types import ItemList

log = logging.getLogger("serendip")

#: The shipped presets, in the order help lists them (``serendip.pipeline.PRESETS``; kept
#: here so that ``--help`` does not import the models).
PRESET_NAMES = ("accurate", "balanced", "discovery", "adaptive")
#: ``--unknown-items`` choices (``serendip.data.io.UNKNOWN_ITEMS``).
UNKNOWN_ITEMS = ("error", "drop")
#: ``keys create --role`` choices (``serendip.store.ROLES``).
KEY_ROLES = ("read", "write", "admin")
#: Users per ``recommend`` batch (one progress-bar step each).
RECOMMEND_BATCH = 256


def _n(count: int, word: str, plural: str | None = None) -> str:
    """'1 list', '3 lists', '0 lists'."""
    return f"{count} {word if count == 1 else plural or word + 's'}"


def _check_out_dir(path: str, what: str = "--out") -> None:
    """Refuse, before any work, an output directory that cannot be written."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{what} {path!r} is a file; give a directory (it is created if missing)")


def _check_model_out(path: str) -> None:
    """``fit --out``: a new or empty directory, or a model directory to replace."""
    _check_out_dir(path)
    p = Path(path)
    if p.is_dir() and any(p.iterdir()) and not (p / "serendip.json").exists():
        raise ConfigError(f"--out {path!r} is a directory that is not empty and not a serendip "
                          "model; give a new directory")


def _check_out_file(path: str | None, what: str) -> None:
    if path is not None and Path(path).is_dir():
        raise ConfigError(f"{what} {path!r} is a directory; give a file name")


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


#: How ``--store`` defaults (the environment variable keeps a password off the command line).
STORE_DEFAULT = (" (default: $SERENDIP_STORE, else sqlite:///DATA_DIR/serendip.db; the "
                 "variable keeps a password off the command line, where other local users "
                 "can read it)")


def _positive_int(value: str) -> int:
    try:
        x = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if x < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {x}")
    return x


def _positive_float(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}") from None
    if not (x > 0 and math.isfinite(x)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
    return x


def _id_lines(path: str, what: str) -> list[str]:
    """Ids one per line, exactly as written (blank lines skipped, nothing trimmed)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what} file not found: {path!r}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = p.read_bytes()[: e.start].count(b"\n") + 1
        raise DataError(f"{what} file {path!r} line {line} is not valid UTF-8") from None
    ids = [ln for ln in text.splitlines() if ln.strip()]
    if not ids:
        raise DataError(f"{what} file is empty: {path!r}")
    return ids


def _read_user_ids(path: str) -> list[str]:
    """``--users``: one id per line, or a table (CSV/TSV/JSONL/Parquet) with a user_id
    column; ids exactly as written, like the events reader keeps them."""
    from serendip.data.io import TABLE_SUFFIXES, _table_suffix, read_table

    p = Path(path)
    if not p.is_file():
        raise DataError(f"users file not found: {path!r}")
    suffix = _table_suffix(p)[0]
    if suffix in (".csv", ".tsv"):
        from serendip.data.io import detect_delimiter

        first = _id_lines(path, "users")[0]
        sep = "\t" if suffix == ".tsv" else detect_delimiter(first)
        if "user_id" not in [f.strip().strip('"') for f in first.split(sep)]:
            # a plain list of ids that happens to end in .csv
            return _id_lines(path, "users")
    elif suffix not in TABLE_SUFFIXES:
        return _id_lines(path, "users")
    df = read_table(p, id_columns=("user_id",))
    if "user_id" not in df.columns:
        raise DataError(f"users file {path!r} has no 'user_id' column; found {list(df.columns)}")
    if df["user_id"].isna().any():
        raise DataError(f"users file {path!r} has rows without a user_id")
    return df["user_id"].astype(str).tolist()


def _candidates(args: argparse.Namespace, rec) -> tuple[np.ndarray | None, str]:  # type: ignore[no-untyped-def]
    """(item indices allowed by --candidates and --filter, or None; a description)."""
    import numpy as np

    from serendip.data.io import item_filter_mask

    data = rec.data
    allowed = None
    said = []
    if args.candidates:
        ids = _id_lines(args.candidates, "candidates")
        idx = data.item_index.get_indexer(ids)
        unknown = [i for i, j in zip(ids, idx, strict=True) if j < 0]
        if unknown:
            shown = ", ".join(repr(x) for x in unknown[:5])
            if len(unknown) == len(ids):
                raise DataError(f"none of the {_n(len(ids), 'candidate id')} in "
                                f"{args.candidates!r} is an item of the model, e.g. {shown}")
            log.warning("%s of %d in %r %s not in the model and left out, e.g. %s",
                        _n(len(unknown), "candidate id"), len(ids), args.candidates,
                        "is" if len(unknown) == 1 else "are", shown)
        allowed = np.zeros(data.n_items, dtype=bool)
        allowed[idx[idx >= 0]] = True
        said.append(f"{_n(int(allowed.sum()), 'candidate')} from {args.candidates}")
    mask = item_filter_mask(data.items, args.filter or ())
    if mask is not None:
        if not mask.any():
            _no_match(data.items, args.filter)
        allowed = mask if allowed is None else allowed & mask
        said.append(f"--filter {' and '.join(repr(f) for f in args.filter)}")
    if allowed is None:
        return None, ""
    if not allowed.any():
        raise DataError(f"no item of the model is left to recommend after {' and '.join(said)}")
    return np.flatnonzero(allowed), " and ".join(said)


def _no_match(items: pd.DataFrame, filters: Sequence[str]) -> None:
    """Raise naming the first filter that matches no item (with some values it could take),
    or all of them when only their combination matches nothing."""
    from serendip.data.io import item_filter_mask
    from serendip.text.templates import cell_text

    for f in filters:
        mask = item_filter_mask(items, [f])
        if mask is not None and not mask.any():
            cut = min(i for i in (f.find("="), f.find(":")) if i >= 0)
            column = f[:cut].strip()
            values = list(dict.fromkeys(
                part.strip() for cell in items[column].tolist()
                for part in cell_text(cell).split("|") if part.strip()))
            shown = ", ".join(repr(v) for v in values[:5])
            raise DataError(f"--filter {f!r} matches no item of the model"
                            + (f"; {column} values are e.g. {shown}" if shown else
                               f"; no item has a {column}"))
    raise DataError(f"no item of the model matches every --filter "
                    f"({' and '.join(repr(f) for f in filters)}) at once")


# ---------------------------------------------------------------------------- commands
def _input_data(args: argparse.Namespace, cfg):  # type: ignore[no-untyped-def]
    """The data named by --dataset, or read from --interactions/--items; and its name."""
    from serendip.data import Dataset, load_dataset

    if getattr(args, "dataset", None):
        if args.interactions or args.items:
            raise ConfigError("give either --dataset or --interactions/--items, not both")
        if (getattr(args, "sep", None) or getattr(args, "items_sep", None)
                or getattr(args, "encoding", None)):
            raise ConfigError("--sep, --items-sep and --encoding are for --interactions/--items "
                              f"files; the bundled {args.dataset!r} needs none of them")
        data = load_dataset(args.dataset)
        name = args.dataset
    else:
        if not args.interactions or not args.items:
            raise ConfigError("give --interactions FILE and --items FILE (or --dataset NAME)")
        data = Dataset.from_files(
            args.interactions, args.items, category_column=cfg.category_column,
            unknown_items=getattr(args, "unknown_items", "error"),
            sep=getattr(args, "sep", None), items_sep=getattr(args, "items_sep", None),
            encoding=getattr(args, "encoding", None),
        )
        name = Path(args.interactions).name
    log.info("loaded %s: %s", name, data.describe())
    return data, name


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

    _check_model_out(args.out)
    _check_ray(args)
    cfg = load_fit_config(args.config)
    t0 = time.perf_counter()
    data, name = _input_data(args, cfg)
    encoder = trainer = None
    if getattr(args, "ray", None) is not None:  # encoding and ALS sharded on Ray
        from serendip.distributed import RayEncoder, RayTrainer
        from serendip.text import EncoderConfig

        encoder = RayEncoder(EncoderConfig(**cfg.encoder), address=args.ray or None)
        trainer = RayTrainer(args.ray or None)
    if args.tune:
        from serendip.tune import tune

        if encoder is None:
            data = _encoded(data, cfg, args.quiet)
        else:
            data = data.with_item_vectors(encoder.encode_items(
                data, template=cfg.item_template, progress=not args.quiet))
        result = tune(data, _tune_config(args), fit_config=cfg if args.config else None,
                      progress=not args.quiet)
        if not args.quiet:
            _print_tuning(result)
        rec = Recommender.fit(data, result.fit_config, progress=not args.quiet,
                              trainer=trainer)
        rec.presets = dict(result.presets)
        rec.tuning = result.summary()
    else:
        rec = Recommender.fit(data, cfg, progress=not args.quiet, encoder=encoder,
                              trainer=trainer)
    rec.save(args.out)
    tuned = f", presets tuned: {', '.join(rec.presets)}" if rec.presets else ""
    print(f"fitted {_n(len(rec.scorers), 'model')} on {name} ({data.describe()}) in "
          f"{time.perf_counter() - t0:.1f}s{tuned} -> {args.out}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from serendip.pipeline import load_fit_config
    from serendip.tune import tune

    _check_out_dir(args.out)
    cfg = load_fit_config(args.config)
    data = _encoded(_input_data(args, cfg)[0], cfg, args.quiet)
    result = tune(data, _tune_config(args), fit_config=cfg if args.config else None,
                  progress=not args.quiet)
    _print_tuning(result)
    written = result.write(args.out)
    print(f"wrote {', '.join(str(p) for p in written)}")
    for line in _tuned_usage(args, sorted(result.presets)):
        print(line)
    return 0


#: ``enrich --out`` formats, by suffix (text formats optionally compressed).
ENRICH_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")
_COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd"}


def _count_option(value: str | None, option: str) -> int | None:
    """A non-negative integer option, checked here so a bad value is a one-line error."""
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise ConfigError(f"{option} must be a non-negative integer, got {value!r}")
    return n


def _generator_config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The ``--llm-*`` options (else the ``SERENDIP_LLM_*`` variables) as a GeneratorConfig,
    or None when no generator is asked for."""
    from serendip.llm.settings import generator_config

    return generator_config(args.llm_url, args.llm_model, args.llm_api_key_env,
                            args.llm_model_dir, args.llm_timeout)


def _enrich_out(path: str) -> tuple[str, str]:
    """(format suffix, compression suffix) of ``enrich --out``, refused before any work."""
    from serendip.data.io import _table_suffix

    _check_out_file(path, "--out")
    suffix, compression = _table_suffix(Path(path))
    if suffix not in ENRICH_SUFFIXES:
        raise ConfigError(f"--out {path!r}: write the items as {', '.join(ENRICH_SUFFIXES)} "
                          f"(by suffix), not {suffix or 'a file without a suffix'!r}")
    if compression and suffix in (".parquet", ".pq"):
        raise ConfigError(f"--out {path!r}: Parquet files compress internally; drop "
                          f"{compression!r}")
    return suffix, compression


def _items_as_read(args: argparse.Namespace, data, text_out: bool):  # type: ignore[no-untyped-def]
    """The catalog to write back.  Written as text from a CSV/TSV ``--items`` file, every cell
    is the text the file holds (numbers are not re-formatted), so the catalog's own columns
    come back unchanged; otherwise the table as loaded."""
    from serendip.data.io import _table_suffix, read_table

    if (getattr(args, "dataset", None) or not text_out
            or _table_suffix(Path(args.items))[0] not in (".csv", ".tsv")):
        return data.items.copy()
    raw = read_table(args.items, id_columns=list(data.items.columns), sep=args.items_sep,
                     encoding=args.encoding).reset_index(drop=True)
    if raw["item_id"].tolist() != data.items["item_id"].tolist():  # the loader keeps file order
        return data.items.copy()
    return raw


def cmd_enrich(args: argparse.Namespace) -> int:
    from serendip.enrich import GENERATED_COLUMN, enrich
    from serendip.pipeline import load_fit_config
    from serendip.text.templates import cell_text

    budget = _count_option(args.budget, "--budget")
    min_chars = _count_option(args.min_chars, "--min-chars")
    suffix, compression = _enrich_out(args.out)
    gen_cfg = _generator_config(args)
    cfg = load_fit_config(args.config)
    data, name = _input_data(args, cfg)
    generator = cache_store = None
    if gen_cfg is not None:
        from serendip.llm import MemoryCache, make_generator
        from serendip.store import open_store

        cache_store = open_store(args.store) if args.store else None
        generator = make_generator(gen_cfg, cache=cache_store or MemoryCache())
    stats: dict[str, int] = {}
    try:
        out = enrich(data, generator, budget_items=budget, progress=not args.quiet,
                     min_chars=min_chars or 0, stats=stats)
    finally:
        if cache_store is not None:
            cache_store.close()
    items = _items_as_read(args, data, suffix in (".csv", ".tsv"))
    before = (items[GENERATED_COLUMN].tolist() if GENERATED_COLUMN in items.columns
              else [None] * data.n_items)
    after = out.items[GENERATED_COLUMN].tolist()
    new = [i for i in range(data.n_items) if not cell_text(before[i]) and after[i]]
    column = list(before)
    for i in new:
        column[i] = after[i]
    items[GENERATED_COLUMN] = column
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if suffix in (".parquet", ".pq"):
            items.to_parquet(tmp, index=False)
        else:
            items.to_csv(tmp, sep="\t" if suffix == ".tsv" else ",", index=False,
                         encoding="utf-8", compression=_COMPRESSIONS.get(compression))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    how = ""
    if generator is not None:
        how = (f" ({stats.get('generated', 0)} written by {generator.model}, "
               f"{stats.get('refused', 0)} from the data after the generator's answer failed "
               f"or was refused)")
    print(f"described {_n(len(new), 'item')} of {data.n_items} in {name}{how} -> {args.out}")
    return 0


def _data_words(args: argparse.Namespace) -> list[str]:
    """The data options as given, to repeat them in a suggested command."""
    if getattr(args, "dataset", None):
        return ["--dataset", args.dataset]
    words = ["--interactions", args.interactions, "--items", args.items]
    for option, value in (("--sep", args.sep), ("--items-sep", args.items_sep),
                          ("--encoding", args.encoding)):
        if value:
            words += [option, value]
    if args.unknown_items != "error":
        words += ["--unknown-items", args.unknown_items]
    return words


def _tuned_usage(args: argparse.Namespace, presets: Sequence[str]) -> list[str]:
    """How to use what ``tune`` wrote: fit with its fit.toml, then pick its presets."""
    import shlex

    out = Path(args.out)
    model = "model/"
    fit = ["serendip", "fit", *_data_words(args), "--config", str(out / "fit.toml"),
           "--out", model]
    lines = ["next: fit a model with the tuned config, then use the tuned presets on it "
             "(they need that model):",
             f"  {shlex.join(fit)}"]
    if presets:
        pick = "balanced" if "balanced" in presets else presets[0]
        file = str(out / "presets" / f"{pick}.toml")
        rec = ["serendip", "recommend", "--model", model, "--preset", file]
        lines += [f"  {shlex.join(rec)} --user ID",
                  f"  (tuned presets: {', '.join(presets)}, in {out / 'presets'}; serve takes "
                  "the same files: --config for its fits, --preset FILE.toml, repeatable)"]
    return lines


def _scores(lst: ItemList, n_items: int) -> list[float]:
    """Output scores on the HTTP API's scale: ``1 - relevance_rank / n_items``, the share of
    the catalog an item outranks by relevance (1 = the best match), the same for every
    preset; a list without ranks keeps its own scores."""
    ranks = lst.fields.get("relevance_rank")
    if ranks is None:
        return [round(float(s), 6) for s in lst.scores]
    return [round(1.0 - float(r) / max(n_items, 1), 6) for r in ranks]


def _titles(data: Dataset) -> Callable[[int], str]:
    """Item index -> its title as a person writes it (the HTTP API's ``title``)."""
    from serendip.text.templates import natural_title

    return lambda i: natural_title(data.item_title(int(i)))


def _check_ray(args: argparse.Namespace) -> None:
    """``--ray``: Ray must be importable; refused before any work when it is not."""
    if getattr(args, "ray", None) is not None:
        from serendip.distributed import import_ray

        import_ray()


def cmd_recommend(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from serendip.pipeline import Recommender

    if (args.users is None) == (args.user is None):
        raise ConfigError("give exactly one of --users FILE or --user ID")
    _check_out_file(args.output, "--output")
    _check_ray(args)
    if args.processes > 1 and getattr(args, "ray", None) is not None:
        raise ConfigError("give --processes or --ray, not both")
    if args.user is not None and not args.user.strip():
        raise ConfigError("--user must name a user id, got an empty one")
    rec = Recommender.load(args.model)
    pipe = rec.pipeline(args.preset)
    user_ids = [args.user] if args.user is not None else _read_user_ids(args.users)
    candidates, restricted = _candidates(args, rec)
    if restricted:
        log.info("recommending from %s", restricted)
    queries = [pipe.query(u) for u in user_ids]
    unknown = sum(q.user is None for q in queries)
    if unknown:
        log.warning("%d of %s %s not in the model; %s cold-start %s", unknown,
                    _n(len(user_ids), "user id"), "is" if unknown == 1 else "are",
                    "it gets a" if unknown == 1 else "they get",
                    "list" if unknown == 1 else "lists")
    t0 = time.perf_counter()
    lists = []
    if getattr(args, "ray", None) is not None:  # sharded on Ray, one model load per worker
        from serendip.distributed import recommend_batch_ray

        lists = recommend_batch_ray(args.model, user_ids, args.k, pipe.preset,
                                    discovery=args.discovery, candidates=candidates,
                                    explore=args.explore, address=args.ray or None,
                                    progress=not args.quiet, loaded=rec)
    elif args.processes > 1:  # forked copies of this process, sharing the loaded model
        from serendip.distributed import recommend_batch_local

        with tqdm(total=len(queries), desc="recommend", unit="user", file=sys.stderr,
                  disable=args.quiet or len(queries) < 2) as bar:
            lists = recommend_batch_local(pipe, queries, args.k, discovery=args.discovery,
                                          candidates=candidates, explore=args.explore,
                                          processes=args.processes,
                                          progress=bar.update)
    else:
        with tqdm(total=len(queries), desc="recommend", unit="user", file=sys.stderr,
                  disable=args.quiet or len(queries) < 2) as bar:
            for start in range(0, len(queries), RECOMMEND_BATCH):
                batch = queries[start : start + RECOMMEND_BATCH]
                lists.extend(pipe.recommend_many(batch, args.k, args.discovery, candidates,
                                                 explore=args.explore))
                bar.update(len(batch))
    log.info("recommended for %s in %.2fs", _n(len(user_ids), "user"),
             time.perf_counter() - t0)
    item_ids = rec.data.item_ids
    title = _titles(rec.data)
    buf = io.StringIO()
    if args.format == "jsonl":
        for uid, lst in zip(user_ids, lists, strict=True):
            rows: list[dict[str, object]] = [
                {"item_id": str(item_ids[i]), "title": title(i), "score": s, "reasons": r}
                for i, s, r in zip(lst.items, _scores(lst, rec.data.n_items),
                                   lst.reason_lists(), strict=True)
            ]
            if "propensity" in lst.fields:  # exploring: each slot's probability, for logging
                for row, p in zip(rows, lst.fields["propensity"].tolist(), strict=True):
                    row["propensity"] = round(float(p), 9)
            buf.write(json.dumps({"user_id": uid, "items": rows}, ensure_ascii=False) + "\n")
    else:
        w = csv.writer(buf, lineterminator="\n")
        explored = any("propensity" in lst.fields for lst in lists)  # --explore or the preset
        w.writerow(["user_id", "rank", "item_id", "title", "score", "reasons"]
                   + (["propensity"] if explored else []))
        for uid, lst in zip(user_ids, lists, strict=True):
            props = lst.fields.get("propensity")
            for rank, (i, s, r) in enumerate(
                zip(lst.items, _scores(lst, rec.data.n_items), lst.reason_lists(), strict=True),
                start=1,
            ):
                extra = [f"{float(props[rank - 1]):.9g}"] if explored and props is not None else []
                w.writerow([uid, rank, str(item_ids[i]), title(i), f"{s:.6f}", " | ".join(r),
                            *extra])
    if args.output:
        _atomic_write(Path(args.output), buf.getvalue())
        print(f"wrote {_n(len(user_ids), 'list')} to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(buf.getvalue())
    return 0


def _chat_lines() -> Iterator[str]:
    """The person's messages: with a prompt on a terminal, else every line of the input."""
    if sys.stdin.isatty():
        while True:
            try:
                yield input("you> ")
            except EOFError:
                print(file=sys.stderr)
                return
    else:
        yield from sys.stdin


def _chat_turn_json(n: int, message: str, turn: dict[str, object]) -> str:
    items = turn["items"]
    assert isinstance(items, list)
    return json.dumps({
        "turn": n, "message": message, "conversation_id": turn["conversation_id"],
        "reply": turn["reply"], "parse_source": turn.get("parse_source"),
        "reply_source": turn.get("reply_source"), "state": turn["state"],
        "understood": turn.get("understood", {}), "match": turn.get("match"),
        "items": [{"rank": r, "item_id": it["item_id"], "title": it["title"],
                   "score": it["score"], "reasons": it["reasons"], "badges": it["badges"]}
                  for r, it in enumerate(items, start=1)],
    }, ensure_ascii=False)


def _chat_turn_text(turn: dict[str, object]) -> str:
    lines = [f"serendip: {turn['reply']}"]
    items = turn["items"]
    assert isinstance(items, list)
    for r, it in enumerate(items, start=1):
        badges = f"  [{', '.join(it['badges'])}]" if it["badges"] else ""
        lines.append(f"  {r:>2}. {it['title']}{badges}")
    return "\n".join(lines)


def cmd_chat(args: argparse.Namespace) -> int:
    """A conversation in the terminal over a fitted model: each line is a message, answered
    by the service's own conversation code (an engine over a throw-away store)."""
    import tempfile

    from serendip.pipeline import PRESETS, Recommender, load_preset
    from serendip.service.engine import Engine, EngineConfig
    from serendip.store import open_store
    from serendip.store.base import ItemRecord
    from serendip.text.templates import cell_text

    gen_cfg = _generator_config(args)
    if not (args.llm_deadline > 0 and math.isfinite(args.llm_deadline)):
        raise ConfigError(f"--llm-deadline must be > 0 seconds, got {args.llm_deadline}")
    rec = Recommender.load(args.model)
    presets: tuple = ()  # type: ignore[type-arg]
    preset_name = args.preset
    if args.preset.endswith(".toml"):
        p = load_preset(args.preset)
        presets, preset_name = (p,), p.name
    elif args.preset not in PRESETS and args.preset not in rec.presets:
        raise ConfigError(f"unknown preset {args.preset!r}; valid: "
                          f"{', '.join(dict.fromkeys([*PRESETS, *rec.presets]))} or a .toml file")
    cols = [c for c in rec.data.items.columns if c != "item_id"]
    records = []
    for row in rec.data.items[["item_id", *cols]].itertuples(index=False):
        fields = {str(c): cell_text(v) for c, v in zip(cols, row[1:], strict=True)}
        records.append(ItemRecord(str(row[0]), {c: v for c, v in fields.items() if v}))
    with tempfile.TemporaryDirectory(prefix="serendip-chat-") as tmp:
        store = open_store(f"sqlite:///{Path(tmp) / 'chat.db'}")
        engine = None
        try:
            store.upsert_items(records)
            cfg = EngineConfig(data_dir=Path(tmp) / "data", presets=presets,
                               default_preset=preset_name, refresh_interval=None,
                               catalog_poll=None, generator=gen_cfg,
                               generator_deadline=args.llm_deadline)
            engine = Engine(store, cfg, recommender=rec)
            engine.start()
            if preset_name not in engine.state.pipelines:
                reason = engine.state.unavailable.get(preset_name, "not in this model")
                raise ConfigError(f"preset {preset_name!r} is not available: {reason}")
            if not args.json and sys.stdin.isatty():
                print("Say what you would like; 'quit' or an empty input (Ctrl-D) ends.",
                      file=sys.stderr)
            cid = None
            n = 0
            try:
                for raw in _chat_lines():
                    message = raw.strip()
                    if not message:
                        continue
                    if message.casefold() in ("quit", "exit", "bye"):
                        break
                    try:
                        turn = engine.converse(message, cid, None, args.k)
                    except SerendipError as e:  # this message only; the conversation goes on
                        print(f"serendip: error: {e}", file=sys.stderr)
                        continue
                    n += 1
                    cid = turn["conversation_id"]
                    print(_chat_turn_json(n, message, turn) if args.json
                          else _chat_turn_text(turn), flush=True)
            except KeyboardInterrupt:  # Ctrl-C ends the conversation like 'quit'
                print(file=sys.stderr)
        finally:
            if engine is not None:
                engine.close()
            store.close()
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
    from serendip.eval.report import DatasetInfo, write_report
    from serendip.eval.runner import DEFAULT_SWEEP, DENSE_SWEEP, run_experiment
    from serendip.pipeline import Preset, load_fit_config

    _check_out_file(args.csv, "--csv")
    _check_out_file(args.report, "--report")
    _check_ray(args)
    if getattr(args, "ray", None) is not None:  # the lists sharded by test user on Ray
        from functools import partial

        from serendip.distributed import run_experiment_ray

        run_experiment = partial(run_experiment_ray, address=args.ray or None)  # noqa: F811
    cfg = load_fit_config(args.config)
    if not args.dataset and not args.interactions:
        args.dataset = "movielens"
    data, name = _input_data(args, cfg)
    data = _encoded(data, cfg, args.quiet)
    frames = []
    cuts = [_cut(c.strip()) for c in args.cut.split(",") if c.strip()] if args.cut else [None]
    jobs = [(p.strip(), c) for p in args.protocol.split(",") if p.strip()
            for c in (cuts if p.strip() == "time" else [None])]
    for protocol, cut in jobs:
        split = make_split(data, protocol, **({"cut": cut} if cut is not None else {}))
        if len(split.test) == 0:
            raise DataError(
                f"the {protocol} split of {name} ({data.describe()}) holds out no test events: "
                "too few events per user to hold one out; try --protocol time or loo, or more "
                "data"
            )
        models = [m for m in args.models.split(",") if m]
        presets: list[str | Preset] = [p for p in args.presets.split(",") if p]
        # the report's decision reads the time protocol first: a denser knob sweep there
        sweep = DENSE_SWEEP if protocol == "time" else DEFAULT_SWEEP
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
                                    progress=not args.quiet, sweep=sweep)]
            shipped = [p for p in presets if p in ("accurate", "balanced", "discovery")]
            if shipped:
                part = run_experiment(data, protocol, [], shipped, k=args.k, fit_config=cfg,
                                      split=split, progress=not args.quiet, sweep=sweep)
                parts.append(part.assign(name=part["name"] + " (shipped)"))
            frame = pd.concat(parts, ignore_index=True)
        else:
            frame = run_experiment(data, protocol, models, presets, k=args.k, fit_config=cfg,
                                   split=split, progress=not args.quiet, sweep=sweep)
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
        write_report(results, args.report, dataset=DatasetInfo.of(data, name), k=args.k)
        print(f"report: {Path(args.report).resolve()}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    ns = argparse.Namespace(
        interactions=None, items=None, dataset="movielens", config=None,
        protocol="time,temporal,loo,cold-items", cut=None, tune=False, budget=300.0,
        models="popularity,ease,als,knn,semantic,textcf", presets="accurate,balanced,discovery",
        k=10, csv=str(out / "results.csv"), report=str(out / "report.html"), quiet=args.quiet,
        unknown_items="error", sep=None, items_sep=None, encoding=None,
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
    db = Path(args.data_dir).resolve() / "serendip.db"
    if args.store is None and not db.exists():  # evaluating reads a store; it makes none
        raise ConfigError(f"no store in --data-dir {args.data_dir!r} (no serendip.db); give "
                          "the service's --data-dir or --store")
    rec = Recommender.load(Path(args.data_dir) / "model" if args.model is None else args.model)
    names = [n.strip() for n in args.presets.split(",") if n.strip()]
    targets = {}
    for name in names:
        preset = load_preset(name)
        targets[preset.name] = rec.pipeline(name if name in PRESETS else preset)
    store = open_store(args.store or f"sqlite:///{db}")
    try:
        result = as_json(evaluate_store(store, rec, targets, args.explore, args.window,
                                        args.limit), extended=True)
    finally:
        store.close()
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    logged = result["logged"]
    assert isinstance(logged, dict)
    shown, rounds = result["impressions"], result["rounds"]
    assert isinstance(shown, int) and isinstance(rounds, int)
    print(f"{_n(shown, 'impression')}, {_n(rounds, 'logged slot')}; "
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
    if args.seed_interactions is None and (args.sep or args.items_sep or args.encoding):
        raise ConfigError("--sep, --items-sep and --encoding are for the --seed-interactions/"
                          "--seed-items files; give those too")
    if not (args.refresh_interval >= 0 and math.isfinite(args.refresh_interval)):
        raise ConfigError(f"--refresh-interval must be >= 0 seconds, got {args.refresh_interval}")
    gen_cfg = _generator_config(args)
    if not (args.llm_deadline > 0 and math.isfinite(args.llm_deadline)):
        raise ConfigError(f"--llm-deadline must be > 0 seconds, got {args.llm_deadline}")
    if not (args.model_poll >= 0 and math.isfinite(args.model_poll)):
        raise ConfigError(f"--model-poll must be >= 0 seconds, got {args.model_poll}")
    if args.model_dir is None and args.role != "primary":
        raise ConfigError(f"--role {args.role} needs --model-dir (the model directory the "
                          "instances share)")
    for note in _seed_notes(args):
        log.warning("%s", note)
    return serve(
        store_url=args.store, data_dir=args.data_dir, host=args.host, port=args.port,
        api_key=args.api_key, cors_origin=args.cors_origin,
        seed_interactions=args.seed_interactions, seed_items=args.seed_items,
        fit_config=args.config, max_body=args.max_body, presets=args.preset or (),
        refresh_interval=args.refresh_interval or None, unknown_items=args.unknown_items,
        sep=args.sep, items_sep=args.items_sep, encoding=args.encoding,
        log_level="info" if args.verbose else "warning",
        max_header_bytes=args.max_header_bytes, header_timeout=args.header_timeout,
        body_timeout=args.body_timeout, keep_alive_timeout=args.keep_alive_timeout,
        max_connections=args.max_connections,
        graceful_shutdown_timeout=args.graceful_shutdown_timeout,
        auth_failure_limit=args.auth_failure_limit,
        auth_failure_window=args.auth_failure_window, key_rate=args.key_rate,
        key_burst=args.key_burst, retention_days=args.retention_days,
        user_id_key_file=args.user_id_key_file, catalog_poll=args.catalog_poll or None,
        generator=gen_cfg, generator_deadline=args.llm_deadline,
        shared_model_dir=args.model_dir, role=args.role, model_poll=args.model_poll or None,
    )


def _seed_notes(args: argparse.Namespace) -> list[str]:
    """Warnings about ``serve --seed-*`` before the service starts: seed files a store that
    already holds data ignores, and a seed without a catalog (items with no text)."""
    if args.seed_interactions is None:
        return []
    held = _store_contents(args)
    # the service seeds a store without items, or one without events when files are given
    if held is not None and held[0] > 0 and held[1] > 0:
        return [f"the store {held[2]} already holds data ({_n(held[0], 'item')}, "
                f"{_n(held[1], 'event')}), so --seed-interactions and --seed-items are ignored; "
                "to seed from them, start with a new --data-dir (or an empty --store)"]
    if args.seed_items is None:
        return [f"--seed-interactions {args.seed_interactions} without --seed-items: the items "
                "have no text, so the language-model parts (semantic similarity, search, "
                "explanations) see only their ids; give --seed-items FILE with item_id and "
                "text columns such as title"]
    return []


def _store_contents(args: argparse.Namespace) -> tuple[int, int, str] | None:
    """(items, events, the store's display URL) of the store ``serve`` would open; None when
    it does not exist yet (no SQLite file in the data directory)."""
    from serendip.store import open_store

    if args.store:
        store = open_store(args.store)
    else:
        db = Path(args.data_dir).expanduser().resolve() / "serendip.db"
        if not db.is_file():
            return None
        store = open_store(f"sqlite:///{db}")
    try:
        return store.count_items(), store.count_events(), store.display_url
    finally:
        store.close()


def _open_store(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The store named by --store, else the data directory's SQLite file (as ``serve``)."""
    from serendip.store import open_store

    if args.store:
        return open_store(args.store)
    ddir = Path(args.data_dir).expanduser()
    if not ddir.is_dir():
        raise ConfigError(f"data directory {args.data_dir!r} does not exist; give the "
                          "service's --data-dir, or --store URL")
    return open_store(f"sqlite:///{ddir.resolve() / 'serendip.db'}")


def _when(value: object) -> str:
    """Epoch seconds as a UTC time to the minute; '-' for none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int | float):
        return time.strftime("%Y-%m-%d %H:%M", time.gmtime(float(value)))
    return str(value)


def cmd_keys_create(args: argparse.Namespace) -> int:
    from serendip.service.app import MAX_ADMIN_KEYS

    store = _open_store(args)
    try:
        key = store.create_api_key(args.name, args.role,
                                   max_active=MAX_ADMIN_KEYS if args.role == "admin" else None)
    finally:
        store.close()
    print(key)
    print(f"created {args.role} key {args.name!r} in {store.display_url}; it is shown only this "
          "once",
          file=sys.stderr)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    store = _open_store(args)
    try:
        keys = list(store.list_api_keys())
    finally:
        store.close()
    if not keys:
        print(f"no API keys in {store.display_url}", file=sys.stderr)
        return 0
    rows = [[k.name, k.role, _when(k.created_at), _when(k.last_used_at),
             "active" if k.revoked_at is None else f"revoked {_when(k.revoked_at)}"]
            for k in keys]
    header = ["name", "role", "created (UTC)", "last used (UTC)", "state"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    store = _open_store(args)
    try:
        done = store.revoke_api_key(args.name)
    finally:
        store.close()
    if not done:
        raise ConfigError(f"no active API key named {args.name!r} in {store.display_url}")
    print(f"revoked key {args.name!r}", file=sys.stderr)
    return 0


def _stored_id(args: argparse.Namespace) -> str:
    """The user id as the store holds it: pseudonymised with --user-id-key-file."""
    if not getattr(args, "user_id_key_file", None):
        return str(args.user_id)
    from serendip.privacy import pseudonymize, read_key_file

    return pseudonymize(args.user_id, read_key_file(args.user_id_key_file))


def cmd_users_erase(args: argparse.Namespace) -> int:
    store = _open_store(args)
    try:
        counts = store.erase_user(_stored_id(args))
    finally:
        store.close()
    erased = {k: int(v) for k, v in counts.items() if v}
    if not erased:
        print(f"nothing stored for user {args.user_id!r}; nothing erased", file=sys.stderr)
        return 0
    words = {"events": "event", "impressions": "impression", "users": "user record",
             "conversations": "conversation"}
    what = ", ".join(_n(v, words.get(k, k)) for k, v in erased.items())
    print(f"erased user {args.user_id!r}: {what}", file=sys.stderr)
    print("a running service still serves what its model learned from them until its next "
          "retrain; erase through the service (DELETE /v1/users/{id}) to drop them from the "
          "served model at once", file=sys.stderr)
    return 0


def cmd_users_export(args: argparse.Namespace) -> int:
    _check_out_file(args.out, "--out")
    store = _open_store(args)
    try:
        data = store.export_user(_stored_id(args))
        data["user_id"] = args.user_id
    finally:
        store.close()
    text = json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"
    if args.out:
        _atomic_write(Path(args.out), text)
        print(f"wrote the data of user {args.user_id!r} to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


# ---------------------------------------------------------------------------- parser
class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Examples kept as written; '(default: X)' after every option that has a default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("%(default)" in text or "(default:" in text or not action.option_strings
                or action.default is None or action.default is False
                or action.default is argparse.SUPPRESS):  # (0 and 0.0 are defaults to show)
            return text  # (a help that states its default itself never prints the value)
        return f"{text} (default: %(default)s)"


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {ln}" for ln in lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="serendip", formatter_class=_HelpFormatter,
        description="serendip: recommendations with language-model semantics and a discovery "
        "knob. Fit a model on your events and catalog, recommend, evaluate, serve.",
        epilog=_examples(
            "serendip demo",
            "serendip fit --interactions events.csv --items items.csv --out model/",
            "serendip recommend --model model/ --user 42",
            "serendip COMMAND --help    (each command's options and examples)",
        ),
    )
    p.add_argument("--version", action="version", version=f"serendip {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    # -q and -v after the command too; SUPPRESS keeps the value given before it
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log at INFO level")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           help="what to do (serendip COMMAND --help: its options)")

    def command(parent, name: str, help: str, *examples: str,  # type: ignore[no-untyped-def]
                description: str | None = None) -> argparse.ArgumentParser:
        return parent.add_parser(  # type: ignore[no-any-return]
            name, help=help, description=description or help, parents=[common],
            formatter_class=_HelpFormatter, epilog=_examples(*examples) if examples else None,
        )

    presets = ", ".join(PRESET_NAMES)

    def data_args(a: argparse.ArgumentParser, default: str = "") -> None:
        a.add_argument("--interactions", metavar="FILE",
                       help="events: user_id,item_id[,timestamp][,rating] as CSV, TSV, JSONL "
                       "or Parquet (by suffix, .gz etc. allowed); timestamps are epoch seconds "
                       "or ISO-8601 dates")
        a.add_argument("--items", metavar="FILE", help="the catalog: item_id + text columns")
        a.add_argument("--dataset", choices=("movielens", "goodbooks", "lastfm"),
                       help=f"a bundled real data set instead of files{default}")
        sep_args(a, "--interactions", "--items")
        a.add_argument("--unknown-items", choices=UNKNOWN_ITEMS, default="error",
                       help="events on items missing from --items: stop with an error, or "
                       "drop them with a warning")
        a.add_argument("--config", metavar="FILE.toml",
                       help="TOML fit config (encoder, models, item_template)")

    def sep_args(a: argparse.ArgumentParser, events: str, items: str) -> None:
        a.add_argument("--sep", metavar="CHAR",
                       help=f"CSV delimiter of the {events} file, e.g. ';' or tab (default: "
                       "found from its header line; tab for .tsv)")
        a.add_argument("--items-sep", metavar="CHAR",
                       help=f"CSV delimiter of the {items} file (default: found from its own "
                       "header line; tab for .tsv)")
        a.add_argument("--encoding", help=f"text encoding of the {events} and {items} files, "
                       "e.g. latin-1 (default: utf-8)")

    def tune_args(a: argparse.ArgumentParser) -> None:
        a.add_argument("--budget", type=float, default=600.0, metavar="SECONDS",
                       help="time budget of the tuning search")
        a.add_argument("--tune-protocol", dest="protocol_tune",
                       choices=("time", "random", "temporal", "loo"),
                       help="validation protocol (default: time when timestamps can be "
                       "trusted, else random)")
        a.add_argument("--deep", action="store_true", help="also train the two-tower and "
                       "sequential models and let the blend weigh them (default: only when a "
                       "CUDA GPU is present; minutes on CPUs)")

    def store_args(a: argparse.ArgumentParser) -> None:
        a.add_argument("--store", metavar="URL", default=os.environ.get("SERENDIP_STORE"),
                       help="sqlite:///abs/path.db or postgresql://..." + STORE_DEFAULT)
        a.add_argument("--data-dir", default="serendip-data", metavar="DIR",
                       help="the service's data directory")

    def llm_args(a: argparse.ArgumentParser, deadline: bool = True) -> None:
        g = a.add_argument_group("text generator (docs/llm.md; each option falls back to its "
                                 "SERENDIP_LLM_* environment variable)")
        g.add_argument("--llm-url", metavar="URL",
                       help="an OpenAI-compatible server's API root, e.g. "
                       "http://127.0.0.1:8000/v1 (vLLM, llama.cpp, Ollama, a hosted API); "
                       "env SERENDIP_LLM_URL")
        g.add_argument("--llm-model", metavar="NAME",
                       help="the model name the server serves (with --llm-url); "
                       "env SERENDIP_LLM_MODEL")
        g.add_argument("--llm-api-key-env", metavar="VAR",
                       help="the environment variable holding the server's API key (never the "
                       "key itself); env SERENDIP_LLM_API_KEY_ENV")
        g.add_argument("--llm-model-dir", metavar="DIR",
                       help="a causal language model directory run in this process "
                       "(transformers; instead of --llm-url); env SERENDIP_LLM_MODEL_DIR")
        g.add_argument("--llm-timeout", metavar="SECONDS",
                       help="seconds before one generator request is abandoned (default: 60); "
                       "env SERENDIP_LLM_TIMEOUT")
        if deadline:
            g.add_argument("--llm-deadline", type=float, default=10.0, metavar="SECONDS",
                           help="the longest a turn or request waits for the generator before "
                           "answering from templates and rules")

    f = command(sub, "fit", "encode the catalog and train every model",
                "serendip fit --interactions events.csv --items items.csv --out model/",
                "serendip fit --interactions events.csv --items items.csv --out model/ --tune "
                "--budget 300",
                "serendip fit --interactions events.tsv --items items.csv --encoding latin-1 "
                "--unknown-items drop --out model/",
                "serendip fit --dataset lastfm --out lastfm-model/",
                "serendip fit --interactions events.csv --items items.csv --out model/ "
                "--ray ray://ray-head:10001")
    data_args(f)
    f.add_argument("--out", required=True, metavar="DIR",
                   help="model directory to write (a new directory, or a model to replace)")
    f.add_argument("--tune", action="store_true", help="first tune models, blend and presets "
                   "on a validation split carved from the data; the model keeps the tuned "
                   "presets")
    tune_args(f)
    f.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="encode the catalog texts the embedding cache lacks on Ray, in shards "
                   "of whole encoder batches with one encoder load per worker, and train ALS "
                   "with each half-step's rows sharded over Ray tasks (vectors and factors "
                   "equal one process's; the other models train here): on the cluster at ADDRESS "
                   "(ray://HOST:10001, or auto), or on a local one when no ADDRESS is given "
                   "(needs: pip install 'ray[data,client]')")
    f.set_defaults(func=cmd_fit)

    t = command(sub, "tune", "choose models, blend and presets for this catalog on a "
                "validation split; writes fit.toml, presets/*.toml and tuning.json",
                "serendip tune --dataset goodbooks --out tuned/ --budget 300",
                "serendip tune --interactions events.csv --items items.csv --out tuned/",
                "serendip fit --interactions events.csv --items items.csv "
                "--config tuned/fit.toml --out model/")
    data_args(t)
    t.add_argument("--out", required=True, metavar="DIR", help="directory to write")
    tune_args(t)
    t.set_defaults(func=cmd_tune)

    en = command(sub, "enrich", "write the catalog with a generated_description column for "
                 "items whose text is thin",
                 "serendip enrich --interactions events.csv --items items.csv "
                 "--out items-enriched.csv",
                 "serendip enrich --dataset goodbooks --budget 500 --out books.parquet",
                 "serendip fit --interactions events.csv --items items-enriched.csv --out model/",
                 "serendip enrich --dataset movielens --llm-url http://127.0.0.1:8000/v1 "
                 "--llm-model qwen2.5-7b-instruct --budget 200 --out movies.csv",
                 description="Write the item catalog again with a generated_description "
                 "column for its thin items (text under --min-chars characters, or an empty "
                 "column), the least chosen first; every other column is written as read. "
                 "Descriptions come from the catalog's own data (year, categories, other "
                 "columns, what the people who chose an item also chose), or, with --llm-url "
                 "or --llm-model-dir, by a text generator from the same facts, kept only when "
                 "it names nothing beyond them (else the data's description is used). Pass "
                 "the file to fit --items: the encoder then reads the new column too.")
    data_args(en)
    en.add_argument("--out", required=True, metavar="FILE",
                    help="items file to write: .csv, .tsv (UTF-8, optionally .gz etc.) or "
                    ".parquet, by suffix")
    en.add_argument("--budget", metavar="N", default=None,
                    help="describe at most N thin items, the least chosen first (default: all)")
    en.add_argument("--min-chars", metavar="N", default="80",
                    help="an item whose catalog text is shorter than this is thin")
    llm_args(en, deadline=False)
    en.add_argument("--store", metavar="URL", help="keep the generated texts in this store's "
                    "cache (sqlite:///... or postgresql://...), so a rerun generates nothing "
                    "twice (default: in memory, for this run)")
    en.set_defaults(func=cmd_enrich)

    r = command(sub, "recommend", "top-k lists from a fitted model",
                "serendip recommend --model model/ --user 42",
                "serendip recommend --model model/ --users users.txt -k 20 --format csv "
                "--output recs.csv",
                "serendip recommend --model model/ --user 42 --preset discovery --discovery 0.9",
                "serendip recommend --model model/ --user 42 --filter genres=comedy "
                "--candidates in_stock.txt",
                "serendip recommend --model model/ --user 42 --explore 0.1")
    r.add_argument("--model", required=True, metavar="DIR",
                   help="model directory written by fit")
    r.add_argument("--users", metavar="FILE", help="file of user ids (one per line, or a "
                   "table with a user_id column); ids are used exactly as written")
    r.add_argument("--user", metavar="ID", help="a single user id")
    r.add_argument("-k", type=_positive_int, default=10, help="items per list")
    r.add_argument("--preset", default="balanced", metavar="NAME|FILE.toml",
                   help=f"a shipped preset ({presets}) or a preset TOML file")
    r.add_argument("--discovery", type=_discovery, default=None,
                   help="0 = accuracy .. 1 = discovery (default: the preset's)")
    r.add_argument("--explore", type=_unit("explore"), default=None,
                   help="exploration rate: each slot shows, with this chance, an item from just "
                   "below the list; items then carry their propensity (default: the preset's)")
    r.add_argument("--candidates", metavar="FILE", help="recommend only these items: one item "
                   "id per line, exactly as written (ids the model lacks are left out with a "
                   "warning)")
    r.add_argument("--filter", action="append", metavar="COLUMN=VALUE",
                   help="recommend only items whose COLUMN is VALUE or has it among its "
                   "'|'-separated parts, ignoring case; COLUMN:VALUE, as the HTTP API writes "
                   "it, works too; repeatable: every filter must match")
    r.add_argument("--format", choices=("jsonl", "csv"), default="jsonl",
                   help="one JSON line per user, or CSV rows (user_id, rank, item_id, ...)")
    r.add_argument("--output", metavar="FILE", help="write here instead of stdout")
    r.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="make the lists on Ray, sharded by user with one model load per "
                   "worker: on the cluster at ADDRESS (ray://HOST:10001, or auto), or on a "
                   "local one when no ADDRESS is given (needs: pip install 'ray[data,client]')")
    r.add_argument("--processes", type=_positive_int, default=1, metavar="N",
                   help="make the lists in N forked processes on this machine that share the "
                   "loaded model (no second copy in memory), one BLAS thread each; the lists "
                   "equal one process's")
    r.set_defaults(func=cmd_recommend)

    ch = command(sub, "chat", "a conversation in the terminal over a fitted model",
                 "serendip chat --model model/",
                 "printf 'I loved Heat\\nsomething less dark\\n' | serendip chat --model model/ "
                 "--json",
                 "serendip chat --model model/ --llm-url http://127.0.0.1:11434/v1 "
                 "--llm-model llama3.1",
                 description="Each input line is a message (\"I loved Heat — something less "
                 "dark?\"); each turn prints a short reply and the numbered recommendations. "
                 "Later messages refine what earlier ones said. 'quit' or the end of the input "
                 "ends it. Reads from a terminal or a pipe. The same conversation code as the "
                 "service's /v1/conversations; with a generator it reads the messages and "
                 "writes the replies, checked, with the rules as fallback.")
    ch.add_argument("--model", required=True, metavar="DIR",
                    help="model directory written by fit")
    ch.add_argument("-k", "--k", dest="k", type=_positive_int, default=10,
                    help="items per turn")
    ch.add_argument("--preset", default="balanced", metavar="NAME|FILE.toml",
                    help=f"a shipped preset ({presets}) or a preset TOML file")
    ch.add_argument("--json", action="store_true",
                    help="print one JSON object per turn (reply, state, items)")
    llm_args(ch)
    ch.set_defaults(func=cmd_chat)

    e = command(sub, "evaluate", "compare models and presets on a split",
                "serendip evaluate --interactions events.csv --items items.csv --report r.html",
                "serendip evaluate --dataset lastfm --protocol random --tune",
                "serendip evaluate --protocol time --cut 0.6,0.7,0.8 --models ease,als "
                "--presets accurate,adaptive --csv results.csv")
    data_args(e, " (default: movielens when no files are given)")
    e.add_argument("--protocol", default="time", help="time (fit on the past, predict the "
                   "future) | random | temporal | loo | cold-items (comma list)")
    e.add_argument("--cut", default=None, help="time protocol: quantile of event time "
                   "(default: 0.8), or a time (number or ISO-8601 date); several, comma "
                   "separated, evaluate each cut (rolling origin) and their mean")
    e.add_argument("--tune", action="store_true", help="also tune presets on a validation "
                   "split carved from each training part, and evaluate them")
    tune_args(e)
    e.add_argument("--models", default="popularity,ease,als",
                   help="comma list of models to evaluate alone (popularity, ease, als, knn, "
                   "semantic, textcf, ...)")
    e.add_argument("--presets", default="accurate,balanced,discovery",
                   help=f"comma list of shipped presets ({presets}) or .toml files")
    e.add_argument("-k", type=_positive_int, default=10, help="list length the metrics use")
    e.add_argument("--csv", metavar="FILE", help="write all result rows as CSV")
    e.add_argument("--report", metavar="FILE", help="write an HTML report with plots")
    e.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="make the test users' lists on Ray, sharded by user (the model is "
                   "fitted here): on the cluster at ADDRESS (ray://HOST:10001, or auto), or on "
                   "a local one when no ADDRESS is given (needs: pip install 'ray[data,client]')")
    e.set_defaults(func=cmd_evaluate)

    d = command(sub, "demo", "the whole flow on MovieLens-100K, ending in an HTML report",
                "serendip demo", "serendip -q demo --out /tmp/demo")
    d.add_argument("--out", default="out/demo", metavar="DIR",
                   help="where results.csv and report.html go")
    d.set_defaults(func=cmd_demo)

    s = command(sub, "serve", "the HTTP API and web page over a store",
                "serendip serve",
                "serendip serve --seed-interactions events.csv --seed-items items.csv "
                "--unknown-items drop",
                "serendip serve --seed-interactions events.csv --seed-items items.csv "
                "--sep ';' --encoding latin-1",
                "serendip serve --store postgresql://user@db/serendip --host 0.0.0.0",
                "serendip serve --store postgresql://user@db/serendip --model-dir "
                "/shared/models --role follower",
                "serendip serve --preset weekend.toml --refresh-interval 0",
                "serendip serve --llm-url http://127.0.0.1:11434/v1 --llm-model llama3.1")
    s.add_argument("--store", metavar="URL", default=os.environ.get("SERENDIP_STORE"),
                   help="sqlite:///abs/path.db or postgresql://..." + STORE_DEFAULT)
    s.add_argument("--data-dir", default="serendip-data", metavar="DIR",
                   help="model and admin key directory")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on")
    s.add_argument("--port", type=int, default=8000, help="port to listen on")
    s.add_argument("--api-key", help="an admin key to accept (default: one created and kept "
                   "in DATA_DIR/admin.key)")
    s.add_argument("--cors-origin", help="allow this one browser origin (CORS is off otherwise)")
    s.add_argument("--seed-interactions", metavar="FILE", help="seed an empty store from this "
                   "events file instead of MovieLens-100K (read as fit reads --interactions)")
    s.add_argument("--seed-items", metavar="FILE",
                   help="the item catalog for --seed-interactions: item_id + text columns "
                   "(without it the items are bare ids)")
    sep_args(s, "--seed-interactions", "--seed-items")
    s.add_argument("--unknown-items", choices=UNKNOWN_ITEMS, default="error",
                   help="seed events on items missing from --seed-items: stop with an error, "
                   "or drop them with a warning")
    s.add_argument("--config", metavar="FILE.toml",
                   help="TOML fit config used when fitting from the store")
    s.add_argument("--preset", action="append", metavar="FILE.toml",
                   help="serve this preset file too (repeatable); its name (the file's stem or "
                   "its 'name') replaces a shipped preset of that name")
    s.add_argument("--refresh-interval", type=float, default=60.0, metavar="SECONDS",
                   help="check this often for new catalog items (or 10%% more events) and "
                   "retrain in the background when there are some; 0 turns it off")
    s.add_argument("--max-body", type=_positive_int, default=1 << 20, metavar="BYTES",
                   help="largest request body")
    from serendip.service.limits import ServerLimits

    lim = ServerLimits()
    g = s.add_argument_group("connection limits (docs/API.md, 'Security and deployment')")
    g.add_argument("--max-header-bytes", type=_positive_int, default=lim.max_header_bytes,
                   metavar="BYTES", help="largest request head (request line and headers)")
    g.add_argument("--header-timeout", type=_positive_float, default=lim.header_timeout,
                   metavar="SECONDS", help="time a client has to send a request's head")
    g.add_argument("--body-timeout", type=_positive_float, default=lim.body_timeout,
                   metavar="SECONDS", help="time a client has to send a request's body")
    g.add_argument("--keep-alive-timeout", type=_positive_int, default=lim.keep_alive_timeout,
                   metavar="SECONDS", help="idle time before a kept-alive connection is closed")
    g.add_argument("--max-connections", type=_positive_int, default=lim.max_connections,
                   help="open connections at most; more are refused with 503")
    g.add_argument("--graceful-shutdown-timeout", type=_positive_float,
                   default=lim.graceful_shutdown_timeout, metavar="SECONDS",
                   help="time running requests get to finish at shutdown")
    g.add_argument("--auth-failure-limit", type=_positive_int, default=lim.auth_failure_limit,
                   help="failed authentications per client address per window before 429")
    g.add_argument("--auth-failure-window", type=_positive_float,
                   default=lim.auth_failure_window, metavar="SECONDS",
                   help="the window of --auth-failure-limit")
    g.add_argument("--key-rate", type=float, default=lim.key_rate, metavar="PER_SECOND",
                   help="requests per second per API key (token bucket); 0 turns it off")
    g.add_argument("--key-burst", type=_positive_int, default=lim.key_burst,
                   help="token bucket size per API key")
    pv = s.add_argument_group("privacy (docs/privacy.md)")
    pv.add_argument("--retention-days", type=_positive_float, default=None, metavar="DAYS",
                    help="delete logged lists (impressions, with their search text) older "
                    "than this; kept when not given")
    pv.add_argument("--user-id-key-file", metavar="FILE",
                    help="store user ids as keyed hashes (HMAC-SHA256) with the key in this "
                    "file (at least 32 bytes, mode 600); the key never enters the store")
    s.add_argument("--catalog-poll", type=float, default=1.0, metavar="SECONDS",
                   help="how often to check the store for catalog changes made through other "
                   "instances (deletions stop being served within about this long); 0 turns "
                   "it off")
    rp = s.add_argument_group("several instances over one store (docs/deployment.md)")
    rp.add_argument("--model-dir", metavar="DIR",
                    help="a model directory shared by every instance (a volume or NFS): each "
                    "retrain saves a new version there and publishes it in the store; every "
                    "instance loads the newest (default: one model in DATA_DIR/model)")
    rp.add_argument("--role", choices=("primary", "follower"), default="primary",
                    help="primary: fits when no model is published and retrains by itself "
                    "(--refresh-interval); follower: never starts a retrain by itself, only "
                    "loads published versions")
    rp.add_argument("--model-poll", type=float, default=1.0, metavar="SECONDS",
                    help="how often to check the store for a newer published model (with "
                    "--model-dir); 0 turns it off")
    llm_args(s)
    s.set_defaults(func=cmd_serve)

    o = command(sub, "ope", "estimate presets off-policy from a store's logged lists and "
                "events",
                "serendip ope --data-dir serendip-data --presets accurate,discovery",
                "serendip ope --store postgresql://user@db/serendip --model model/ "
                "--json ope.json")
    o.add_argument("--store", metavar="URL", default=os.environ.get("SERENDIP_STORE"),
                   help="store URL" + STORE_DEFAULT)
    o.add_argument("--data-dir", default="serendip-data", metavar="DIR",
                   help="the service's data directory")
    o.add_argument("--model", metavar="DIR",
                   help="fitted model directory (default: DATA_DIR/model)")
    o.add_argument("--presets", default="accurate,balanced,discovery",
                   help=f"comma list of shipped presets ({presets}) or .toml files")
    o.add_argument("--explore", type=float, default=0.0, help="the targets' exploration rate (0: none)")
    o.add_argument("--window", type=float, default=86_400.0, metavar="SECONDS",
                   help="seconds after a list in which an event on a shown item is its reward")
    o.add_argument("--limit", type=_positive_int, default=5_000,
                   help="most recent impressions used")
    o.add_argument("--json", metavar="FILE", help="also write the estimates to this file")
    o.set_defaults(func=cmd_ope)
    osub = o.add_subparsers(dest="ope_source", metavar="SOURCE",
                            help="obd: the Open Bandit check instead of a store's logs")
    osub.required = False
    ob = command(osub, "obd", "the Open Bandit check: estimate Bernoulli TS from the uniform-"
                 "random log and set the errors beside obp's published ones; serendip's "
                 "policies on the random log against both logged policies",
                 "serendip ope obd", "serendip ope obd --campaigns all --n-boot 30 "
                 "--json obd.json")
    from serendip.explore.obd_check import add_obd_arguments, cmd_ope_obd

    add_obd_arguments(ob)
    ob.set_defaults(func=cmd_ope_obd)

    from serendip.explore.commands import add_simulate_parser

    add_simulate_parser(sub, command)

    k = command(sub, "keys", "create, list and revoke the service's API keys",
                "serendip keys create --name ingest --role write",
                "serendip keys list --data-dir serendip-data",
                "serendip keys revoke ingest --store postgresql://user@db/serendip")
    ksub = k.add_subparsers(dest="keys_command", required=True, metavar="ACTION",
                            help="create, list or revoke")
    kc = command(ksub, "create", "create a key and print it (shown only this once)",
                 "serendip keys create --name dashboard --role read",
                 "serendip keys create --name ops --role admin --store sqlite:///srv/s.db")
    kc.add_argument("--name", required=True, help="a name to list and revoke the key by")
    kc.add_argument("--role", choices=KEY_ROLES, default="read",
                    help="read: recommendations; write: also events and items; admin: also "
                    "keys and retraining")
    store_args(kc)
    kc.set_defaults(func=cmd_keys_create)
    kl = command(ksub, "list", "list keys: name, role, when created and last used, state",
                 "serendip keys list")
    store_args(kl)
    kl.set_defaults(func=cmd_keys_list)
    kr = command(ksub, "revoke", "revoke a key by name: it stops working at once",
                 "serendip keys revoke dashboard")
    kr.add_argument("name", help="the key's name")
    store_args(kr)
    kr.set_defaults(func=cmd_keys_revoke)

    u = command(sub, "users", "erase or export one user's stored data",
                "serendip users export 42 --out user-42.json",
                "serendip users erase 42")
    usub = u.add_subparsers(dest="users_command", required=True, metavar="ACTION",
                            help="erase or export")
    ue = command(usub, "erase", "delete every event, impression and record of a user from "
                 "the store", "serendip users erase 42 --data-dir serendip-data")
    ue.add_argument("user_id", help="the user id, exactly as the service was given it")
    store_args(ue)
    ue.add_argument("--user-id-key-file", metavar="FILE",
                    help="the key file the service pseudonymises user ids with, if any")
    ue.set_defaults(func=cmd_users_erase)
    ux = command(usub, "export", "write everything the store holds on a user as JSON",
                 "serendip users export 42", "serendip users export 42 --out user-42.json")
    ux.add_argument("user_id", help="the user id, exactly as the service was given it")
    ux.add_argument("--out", metavar="FILE", help="write here instead of stdout")
    store_args(ux)
    ux.add_argument("--user-id-key-file", metavar="FILE",
                    help="the key file the service pseudonymises user ids with, if any")
    ux.set_defaults(func=cmd_users_export)
    return p


class _LogFormatter(logging.Formatter):
    """'serendip: warning: ...', as errors read 'serendip: error: ...'."""

    def format(self, record: logging.LogRecord) -> str:
        record.levelname_lower = record.levelname.lower()
        return super().format(record)


def _library_progress(enabled: bool) -> Callable[[], None]:
    """Turn the language-model library's own progress bars (weight loading) on or off;
    returns what puts them back."""
    key = "HF_HUB_DISABLE_PROGRESS_BARS"
    before_env = os.environ.get(key)
    hf = sys.modules.get("transformers.utils.logging")
    before_bar = hf.is_progress_bar_enabled() if hf is not None else before_env is None
    if enabled:
        return lambda: None
    os.environ[key] = "1"
    if hf is not None:
        hf.disable_progress_bar()

    def restore() -> None:
        if before_env is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before_env
        now = sys.modules.get("transformers.utils.logging")
        if now is not None and before_bar:
            # the hub library reads the variable once, at import: imported while it was set,
            # its bars stay off for the process and asking for them only warns
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Cannot enable progress bars")
                now.enable_progress_bar()

    return restore


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("evaluate", "fit", "tune") and bool(args.interactions) != bool(args.items):
        print("serendip: error: --interactions and --items go together", file=sys.stderr)
        return 2
    root = logging.getLogger()
    if not root.handlers:  # as logging.basicConfig: only when nothing is configured yet
        handler = logging.StreamHandler()
        handler.setFormatter(_LogFormatter("serendip: %(levelname_lower)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO if args.verbose else logging.WARNING)
    restore = _library_progress(not args.quiet)
    try:
        return int(args.func(args))
    except SerendipError as e:
        print(f"serendip: error: {e}", file=sys.stderr)
        return 2
    finally:
        restore()


if __name__ == "__main__":
    raise SystemExit(main())
