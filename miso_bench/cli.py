"""The ``miso-bench`` command line. ``main(argv) -> int`` is callable from tests.

Heavy libraries (torch, torchgeo, geopandas) are imported inside the command functions so
that ``miso-bench --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import DEFAULT_PRESET, DEFAULT_SEED, default_dataset_dir
from .errors import MisoBenchError
from .version import __version__

__all__ = ["main"]

_PRESETS = ("tiny", "default", "paper")


def _err(message: str) -> None:
    print(f"miso-bench: error: {message}", file=sys.stderr)


def _resolve_dataset(path: str | None) -> Path:
    """A user-given dataset folder, or the embedded default (generated when absent)."""
    if path:
        return Path(path)
    target = default_dataset_dir()
    if not (target / "dataset.yaml").is_file():
        print(f"The default dataset is not there yet; generating it in {target}")
        _synth(DEFAULT_PRESET, DEFAULT_SEED, target, force=False)
    return target


def _synth(preset: str, seed: int, out: Path, force: bool) -> int:
    from tqdm import tqdm

    from .data.synthetic import PRESETS, generate_synthetic_alaska

    if (out / "dataset.yaml").is_file() and not force:
        print(f"{out} already holds a dataset; pass --force to regenerate it")
        return 0
    n_sites = len(PRESETS[preset].sites)
    with tqdm(total=n_sites, desc=f"synthetic Alaska ({preset})", unit="site") as bar:

        def advance(name: str) -> None:
            bar.set_postfix_str(name)
            bar.update(1)

        manifest = generate_synthetic_alaska(
            out,
            preset=preset,
            seed=seed,
            overwrite=force,
            progress=advance,
        )
    print(f"Wrote {manifest.name} to {out}")
    return 0


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _cmd_data_synth(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else default_dataset_dir(args.preset, args.seed)
    if out.exists() and not out.is_dir():
        raise MisoBenchError(f"--out {out} is a file; give a folder")
    manifest = out / "dataset.yaml"
    if manifest.is_file() and not args.force:
        import yaml

        source = (yaml.safe_load(manifest.read_text()) or {}).get("source") or {}
        if (source.get("preset"), source.get("seed")) != (args.preset, args.seed):
            raise MisoBenchError(
                f"{out} already holds preset {source.get('preset')!r} seed "
                f"{source.get('seed')!r}, not {args.preset!r} seed {args.seed}; choose another "
                "--out or pass --force to replace it"
            )
    if (
        out.exists()
        and not (out / "dataset.yaml").is_file()
        and any(out.iterdir())
        and not args.force
    ):
        raise MisoBenchError(
            f"{out} exists and is not a miso-bench dataset; choose another "
            "--out or pass --force to replace it"
        )
    return _synth(args.preset, args.seed, out, args.force)


def _cmd_data_info(args: argparse.Namespace) -> int:
    from .data.info import dataset_summary, format_summary
    from .data.manifest import load_manifest

    summary = dataset_summary(load_manifest(_resolve_dataset(args.path)))
    if args.json:
        print(json.dumps(summary, indent=1, default=str))
    else:
        print(format_summary(summary))
    return 0


def _cmd_data_check(args: argparse.Namespace) -> int:
    from .data.check import check_dataset

    path = _resolve_dataset(args.path)
    problems = check_dataset(path)
    for p in problems:
        print(p)
    errors = [p for p in problems if p.is_error]
    if errors:
        print(f"{len(errors)} problem(s) found in {path}", file=sys.stderr)
        return 2
    notes = len(problems)
    print(
        f"OK: {path} matches its manifest ("
        + (f"{notes} note(s) above" if notes else "no problem found")
        + ")"
    )
    return 0


def _cmd_data_import_reference(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .data.reference import import_reference

    with tqdm(desc="converting tiles", unit="tile") as bar:

        def advance(what: str) -> None:
            bar.set_postfix_str(what)
            bar.update(1)

        report = import_reference(
            args.points,
            args.out,
            s2_dir=args.s2_dir,
            cov_dir=args.cov_dir,
            splits=args.splits or [],
            label_rule=args.label_rule,
            name=args.name,
            progress=advance,
        )
    print(f"Imported into {args.out}:")
    print(report.summary())
    print(f"Report: {Path(args.out) / 'import_report.json'}")
    print(f"Next: miso-bench data check {args.out}")
    return 0


def _cmd_data_init(args: argparse.Namespace) -> int:
    from .data.init import draft_manifest

    draft = draft_manifest(
        args.folder, out=args.out, points=args.points, max_per_polygon=args.max_per_polygon
    )
    print(f"Wrote {draft.written[0]}" + "".join(f"\n  and {p}" for p in draft.written[1:]))
    print("What it guessed:")
    for line in draft.guesses:
        print(f"  - {line}")
    if draft.checks:
        print("What to check:")
        for line in draft.checks:
            print(f"  - {line}")
    print(
        f"Next: miso-bench data check {draft.written[0]}\n"
        f"      miso-bench run --model rf --data {draft.written[0]} --task "
        f"{next(iter(draft.manifest['pedons']['labels']))}"
    )
    return 0


def _run_progress(desc: str) -> Any:
    """A :class:`~miso_bench.runner.RunProgress` drawn with tqdm: setup steps, then one bar
    over the fits (folds and the final refit) with each deep model's epochs and scores."""
    from tqdm import tqdm

    from .runner import RunProgress

    class Bar(RunProgress):
        def __init__(self) -> None:
            self.bar = tqdm(desc=desc, total=None, bar_format="{desc}{postfix}", unit="fit")
            self.current = ""

        def step(self, message: str) -> None:
            self.bar.set_postfix_str(message)

        def folds(self, total: int, done: int) -> None:
            self.bar.bar_format = None  # the default bar from now on
            self.bar.total = total
            self.bar.n = done
            self.bar.refresh()

        def fold_started(self, name: str) -> None:
            self.current = name
            self.bar.set_postfix_str(f"{name}: fitting")

        def fold_finished(self, name: str, resumed: bool = False) -> None:
            self.bar.set_postfix_str(f"{name}: {'resumed' if resumed else 'done'}")
            self.bar.update(1)

        def epoch(self, name: str, epoch: int, record: dict[str, float]) -> None:
            total = int(record.get("epochs", 0))
            text = f"{name}: epoch {epoch + 1}" + (f"/{total}" if total else "")
            text += f", loss {record.get('loss/total', float('nan')):.3f}"
            if "val/score" in record:
                text += f", val {record['val/score']:.3f}"
            self.bar.set_postfix_str(text)

        def warn(self, message: str) -> None:
            tqdm.write(f"warning: {message}")

        def close(self) -> None:
            self.bar.close()

    return Bar()


def _flags(args: argparse.Namespace) -> dict:
    """The run config's command-line layer (``--model``, ``--cv``, ``--task``...)."""
    flags: dict = {}
    if args.model:
        flags.setdefault("model", {})["name"] = args.model
    if args.cv:
        if args.cv.startswith("file:"):  # --cv file:PATH, a split file of the reference
            flags.setdefault("cv", {}).update(
                name="file", path=str(Path(args.cv.removeprefix("file:")).expanduser())
            )
        else:
            flags.setdefault("cv", {})["name"] = args.cv
    if args.task:
        flags["task"] = args.task
    if args.seed is not None:
        flags["seed"] = args.seed
    if args.refit is not None:
        flags["refit"] = args.refit
    if args.data:
        flags.setdefault("data", {})["path"] = args.data
    if args.tracking_uri:
        flags.setdefault("tracking", {})["uri"] = args.tracking_uri
    return flags


def _tuned_params(spec: str, storage: str | None) -> dict:
    """``--params best:STUDY`` (a finished sweep's best parameters) or ``--params FILE``
    (YAML: dotted paths or nested keys), as a nested config layer."""
    import yaml

    from .search.space import nested

    if spec.startswith("best:"):
        from .search import best_params, tuned_on

        study = spec.removeprefix("best:")
        layer = nested(best_params(study, storage))
        # Where the parameters come from: the run warns if it cross-validates on the pedons
        # they were tuned on (runner._check_tuned_on).
        source = {"params_source": spec}
        source.update({f"params_tuned_on.{k}": v for k, v in tuned_on(study, storage).items()})
        layer.setdefault("tracking", {}).setdefault("tags", {}).update(source)
        return layer
    path = Path(spec)
    if not path.is_file():
        raise MisoBenchError(
            f"--params {spec}: no such file (fix: best:STUDY for a sweep's best parameters, "
            "or a YAML file of parameters)"
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise MisoBenchError(f"{path}: invalid YAML: {exc}".replace("\n", " ")) from exc
    if not isinstance(data, dict):
        raise MisoBenchError(f"{path}: expected `key: value` lines of parameters")
    flat = {k: v for k, v in data.items() if "." in str(k)}
    rest = {k: v for k, v in data.items() if "." not in str(k)}
    from .models import deep_merge

    return deep_merge(rest, nested(flat))


def _cmd_run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .config import resolve_config
    from .runner import format_result, run_benchmark

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise MisoBenchError(
            "miso-bench run starts its own worker processes: run it without torchrun and "
            "set the device count instead, e.g. --set model.params.devices=4"
        )
    flags = _flags(args)
    if args.params:
        from .models import deep_merge

        # Tuned parameters sit under the command line's own flags and --set.
        flags = deep_merge(_tuned_params(args.params, args.storage), flags)
    config = resolve_config(args.config, flags, args.set or [])
    _validate_names(config)
    if args.jobs is not None:
        from .parallel import parse_jobs

        parse_jobs(args.jobs)  # a bad --jobs fails before any data work
    bar = _run_progress(f"{config['model']['name']} / {config['cv']['name']} / {config['task']}")
    try:
        result = run_benchmark(config, progress=bar, announce=tqdm.write, jobs=args.jobs)
    finally:
        bar.close()
    print(format_result(result))
    return 0


def _validate_names(config: dict) -> None:
    """Fail fast, before any data work, on unknown model or cv names."""
    from .cv import CV
    from .models import MODELS

    MODELS.get(config["model"]["name"])
    CV.get(config["cv"]["name"])


def _bbox(text: str) -> list[float]:
    parts = text.split(",")
    try:
        values = [float(v) for v in parts]
    except ValueError:
        values = []
    if len(values) != 4:
        raise argparse.ArgumentTypeError(
            f"expected xmin,ymin,xmax,ymax (four numbers in the dataset's CRS), got {text!r}"
        )
    return values


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _cmd_predict(args: argparse.Namespace) -> int:
    from .inference.maps import predict_map

    result = predict_map(
        args.run,
        args.out,
        fold=args.fold,
        data=args.data,
        tiles=args.tile or [],
        bbox=args.bbox,
        all_tiles=args.all,
        stride_px=args.stride_px,
        batch_size=args.batch_size,
        probabilities=args.probabilities,
        workers=args.workers,
        scheduler=args.scheduler,
        tracking_uri=args.tracking_uri,
        log=args.log,
    )
    mapped = sum(r["mapped_pixels"] for r in result.records)
    inside = sum(r["aoa_inside_pixels"] for r in result.records)
    print(
        f"Mapped {len(result.tiles)} tile(s) ({len(result.skipped)} resumed) in "
        f"{result.seconds:.1f} s: {mapped:,} pixels, {100 * inside / max(mapped, 1):.1f} % inside "
        "the area of applicability"
    )
    print(f"  maps:      {result.out_dir}/<tile>.class.tif, <tile>.stats.tif (COG)")
    print(f"  mosaic:    {result.out_dir / 'class.vrt'}, {result.out_dir / 'stats.vrt'}")
    if result.overlap_pixels:
        print(
            f"  ({result.overlap_pixels:,} pixels lie in two or more overlapping tiles and "
            "are counted once per tile above; the mosaic shows each once)"
        )
    if (result.out_dir / "quicklook.png").is_file():
        print(f"  quicklook: {result.out_dir / 'quicklook.png'}")
    if result.truth is not None:
        t = result.truth
        primary = "f1_pos" if "f1_pos" in set(t["metric"]) else "macro_f1"
        overall = t[(t["layer"] == "overall") & t["metric"].isin([primary, "accuracy"])]
        regions = t[(t["layer"] != "overall") & (t["metric"] == primary)]
        print("  the written map against the truth sample:")
        for row in [*overall.itertuples(), *regions.itertuples()]:
            label = "overall" if row.layer == "overall" else f"{row.layer}: {row.region}"
            print(f"    {label:<44}{row.metric:<10}{row.value:8.3f}  (n={row.n:,})")
        unmapped = t[t["metric"] == "n_unmapped"]["value"]
        if len(unmapped) and unmapped.iloc[0] > 0:
            print(f"    ({int(unmapped.iloc[0]):,} truth points fall outside the mapped pixels)")
    if result.logged_to:
        print(f"  logged to MLflow run {result.logged_to}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    if args.what == "models":
        from .models import MODELS

        for name in MODELS.list():
            entry = MODELS.get(name)
            print(f"{name:<22} {entry.description}")
    elif args.what == "cv":
        from .cv import CV, CV_DESCRIPTIONS

        for name in CV.list():
            print(f"{name:<22} {CV_DESCRIPTIONS.get(name, '')}")
    elif args.what == "tasks":
        from .evaluation.tasks import TASKS

        for name in TASKS.list():
            t = TASKS.get(name)
            print(
                f"{name:<22} label `{t.label}`, {t.kind}, loss {t.loss}, primary metric "
                f"{t.primary_metric}"
            )
        print("(any label of a dataset's manifest also works as a task)")
    else:
        from .evaluation.metrics import METRIC_DESCRIPTIONS

        for name, text in METRIC_DESCRIPTIONS.items():
            print(f"{name:<22} {text}")
    return 0


def _cmd_ui(args: argparse.Namespace) -> int:
    from .tracking import serve_ui

    return serve_ui(port=args.port, host=args.host, uri=args.tracking_uri)


def _common_run_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model name (miso-bench list models) [default: rf]")
    parser.add_argument("--cv", help="cross-validation scheme [default: spatial]")
    parser.add_argument("--task", help="task (miso-bench list tasks) [default: tax_order]")
    parser.add_argument("--data", help="dataset folder [default: the embedded synthetic Alaska]")
    parser.add_argument("--config", help="experiment YAML file (see configs/)")
    parser.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a config value"
    )
    parser.add_argument("--seed", type=_non_negative, help="run seed [default: 0]")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI [default: local SQLite]")
    parser.set_defaults(refit=None)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .config import resolve_config
    from .models import MODELS
    from .search import (
        SweepSettings,
        join_sweep,
        load_search_space,
        run_sweep,
        space_file,
    )

    config = resolve_config(args.config, _flags(args), args.set or [])
    _validate_names(config)
    entry = MODELS.get(config["model"]["name"])
    path = Path(args.space) if args.space else space_file(entry.family)
    if args.space and not path.is_file():
        raise MisoBenchError(f"--space {path}: no such file (fix: give a search-space YAML)")
    if not path.is_file():
        raise MisoBenchError(
            f"no search space for model {entry.name!r} (family {entry.family!r}) at {path} "
            "(fix: write one, see configs/search/, or pass --space FILE)"
        )
    valid = set(entry.cls().get_params()) - {"n_classes", "random_state"}
    space = load_search_space(path, valid)
    settings = SweepSettings(
        space=space,
        n_trials=args.trials,
        timeout_s=args.timeout,
        storage=args.storage,
        study=args.study,
        workers=max(1, args.workers),
        pruner=args.pruner,
        inner_splits=args.inner_splits,
    )
    if args.join:
        n = join_sweep(config, settings)
        print(f"joined: worked on {n} studies until each held {args.trials} finished trials")
        return 0
    bar = tqdm(desc=f"sweep {config['model']['name']}", unit="trial", total=None)
    finished: dict[str, int] = {}

    def on_plan(studies: list[str]) -> None:
        bar.total = len(studies) * args.trials  # finished (completed or pruned) trials
        bar.refresh()

    def on_trial(study: str, counts: dict[str, int]) -> None:
        finished[study] = min(counts["complete"] + counts["pruned"], args.trials)
        bar.n = sum(finished.values())
        bar.set_postfix_str(
            f"{study.rsplit('/', 1)[1]}: {counts['complete']} done, {counts['pruned']} pruned"
            + (f", {counts['failed']} failed" if counts.get("failed") else "")
        )

    try:
        result = run_sweep(
            config, settings, progress=bar.set_postfix_str, on_trial=on_trial, on_plan=on_plan
        )
    finally:
        bar.close()
    extra = [
        *(["--data", args.data] if args.data else []),
        *(["--config", args.config] if args.config else []),
        *(["--seed", str(args.seed)] if args.seed is not None else []),
        *[f"--set={item}" for item in args.set or []],
        *(["--storage", args.storage] if args.storage else []),
        *(["--tracking-uri", args.tracking_uri] if args.tracking_uri else []),
    ]
    print(_format_sweep(result, config, " ".join(shlex.quote(a) for a in extra)))
    return 0


def _cmd_ablate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .ablation import format_regions, format_suite, load_suite, run_suite

    suite = load_suite(args.suite)
    bar = tqdm(desc=f"ablation {suite.name}", unit="run", total=None)

    def progress(message: str, done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.set_postfix_str(message)
        bar.refresh()

    try:
        result = run_suite(
            suite,
            tasks=tuple(args.tasks) if args.tasks else None,
            data=args.data,
            tracking_uri=args.tracking_uri,
            extra_sets=tuple(args.set or ()),
            progress=progress,
            run_progress=_run_progress("  run") if args.verbose else None,
        )
    finally:
        bar.close()
    print(f"ablation suite {suite.name}: {len(result.runs)} runs ({result.skipped} already there)")
    print(format_suite(result))
    print()
    print(format_regions(result))
    print(f"\ntables and figures: MLflow run {result.summary_run} (experiment .../ablations)")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .analysis.compare import compare_runs, format_comparison

    comparison = compare_runs(
        args.runs,
        tracking_uri=args.tracking_uri,
        metric=args.metric,
        n_boot=args.n_boot,
        block_size_m=args.block_size_m,
    )
    if args.json:
        print(comparison.table.to_json(orient="records", indent=1))
    else:
        print(format_comparison(comparison))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .analysis import build_report

    result = build_report(
        args.out, args.experiment or None, tracking_uri=args.tracking_uri, log=not args.no_log
    )
    print(f"report: {result.html}  (Markdown: {result.markdown}, {len(result.figures)} figures)")
    if result.run_id:
        print(f"logged to MLflow: experiment 'reports', run {result.run_id}")
    return 0


def _format_sweep(result: Any, config: dict, extra: str = "") -> str:
    primary = "f1_pos" if "test/overall/f1_pos" in result.metrics else "macro_f1"
    m = result.metrics
    lines = [
        f"sweep {result.study}: {config['model']['name']} | cv={config['cv']['name']} | "
        f"task={config['task']} | {result.seconds:.0f} s",
        "",
        f"tuned pipeline, nested {config['cv']['name']} CV (outer test folds):",
        f"  {primary:<28}{m[f'test/overall/{primary}']:8.3f}  "
        f"[{m.get(f'test/overall/{primary}_ci_low', float('nan')):.3f}, "
        f"{m.get(f'test/overall/{primary}_ci_high', float('nan')):.3f}]"
        + (
            f"   truth {m[f'truth/overall/{primary}']:.3f}"
            if f"truth/overall/{primary}" in m
            else ""
        ),
        "",
        "trials per study (complete / pruned / failed):",
    ]
    width = max((len(study) for study in result.counts), default=0)
    for study, c in result.counts.items():
        lines.append(
            f"  {study:<{width}}  {c['complete']:>4} / {c['pruned']:>4} / {c['failed']:>4}"
        )
    lines += ["", f"best parameters (final study, inner {primary} {result.best_value:.3f}):"]
    lines += [f"  {k}: {v}" for k, v in sorted(result.best_params.items())]
    lines += [
        "",
        f"MLflow: experiment '{result.experiment}', run {result.run_id} ({result.tracking_uri})",
        f"run it: miso-bench run --model {config['model']['name']} --cv {config['cv']['name']} "
        f"--task {config['task']} --params best:{result.study}" + (f" {extra}" if extra else ""),
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``miso-bench`` (kept import-light)."""
    parser = argparse.ArgumentParser(
        prog="miso-bench",
        description="Benchmark suite for fine-scale permafrost and soil-taxonomy mapping in "
        "Alaska: datasets, spatial cross-validation, models and experiment tracking.",
        epilog="Generated data and runs live under $MISO_BENCH_HOME (default ./.miso-bench).",
    )
    parser.add_argument("--version", action="version", version=f"miso-bench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    data = sub.add_parser(
        "data",
        help="generate, inspect and validate datasets",
        description="Generate, inspect and validate datasets.",
    )
    dsub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    dsub.required = True

    synth = dsub.add_parser(
        "synth",
        help="generate the synthetic Alaska dataset",
        description="Generate a deterministic synthetic Alaska dataset in the real layout "
        "(Sentinel-2, terrain, climate rasters on AK050 tiles; pedons; regions; "
        "dense truth). The same --seed gives identical arrays.",
    )
    synth.add_argument(
        "--preset",
        choices=_PRESETS,
        default=DEFAULT_PRESET,
        help="size: tiny (tests), default (the demo, 16 sites), paper "
        "(37,252 pedons) [default: %(default)s]",
    )
    synth.add_argument(
        "--seed",
        type=_non_negative,
        default=DEFAULT_SEED,
        help="dataset seed [default: %(default)s]",
    )
    synth.add_argument(
        "--out",
        help="output folder [default: $MISO_BENCH_HOME/data/synthetic-alaska-PRESET-seedSEED]",
    )
    synth.add_argument("--force", action="store_true", help="replace an existing dataset")
    synth.set_defaults(func=_cmd_data_synth)

    info = dsub.add_parser(
        "info",
        help="summarise a dataset",
        description="Summarise a dataset: rasters, bands, CRS, extent; "
        "pedons per class, region and task; spatial "
        "autocorrelation of the labels.",
    )
    info.add_argument(
        "path",
        nargs="?",
        help="dataset folder or dataset.yaml [default: the embedded synthetic dataset]",
    )
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(func=_cmd_data_info)

    check = dsub.add_parser(
        "check",
        help="validate a dataset against its manifest",
        description="Validate a dataset and report every problem, one per "
        "line (file, field, fix). Exit code 2 when any.",
    )
    check.add_argument(
        "path",
        nargs="?",
        help="dataset folder or dataset.yaml [default: the embedded synthetic dataset]",
    )
    check.set_defaults(func=_cmd_data_check)

    imp = dsub.add_parser(
        "import-reference",
        help="convert the reference study's point JSON and h5 tiles into a dataset",
        description="Import the reference layout: the AKSDB-style point JSON, per-tile h5 "
        "rasters ({grid_id}.h5, dataset `data`, H x W x C) of Sentinel-2 and of the merged "
        "covariates, and optionally the split files. Writes COG tiles per modality, "
        "pedons.gpkg, dataset.yaml and import_report.json (what happened to every record). "
        "Tiles are streamed strip by strip; an interrupted import resumes.",
    )
    imp.add_argument("--points", required=True, help="the point JSON (a list of records)")
    imp.add_argument("--s2-dir", help="folder of the Sentinel-2 {grid_id}.h5 tiles")
    imp.add_argument("--cov-dir", help="folder of the covariate {grid_id}.h5 tiles")
    imp.add_argument(
        "--splits", nargs="+", metavar="FILE", help="split files to copy (for --cv file:PATH)"
    )
    imp.add_argument(
        "--label-rule",
        default="unanimous",
        choices=("unanimous", "majority", "first"),
        help="a site with several observations: keep it when all agree (unanimous), take "
        "the most common value (majority; ties dropped) or the first [default: unanimous]",
    )
    imp.add_argument("--name", default="aksdb", help="dataset name [default: aksdb]")
    imp.add_argument("--out", required=True, help="the new dataset folder")
    imp.set_defaults(func=_cmd_data_import_reference)

    init = dsub.add_parser(
        "init",
        help="draft a manifest from a folder of rasters and a point file",
        description="Draft dataset.yaml from a folder of GeoTIFFs and a point (or polygon) "
        "file without asking anything: CRS, resolution, band names, no-data, dtype, likely "
        "categorical bands, label columns and their classes. Prints what it guessed and "
        "what to check; then run `data check` and `run`.",
    )
    init.add_argument("folder", help="folder of the rasters (searched recursively)")
    init.add_argument("--out", help="manifest to write [default: FOLDER/dataset.yaml]")
    init.add_argument("--points", help="the point or polygon file [default: the only one]")
    init.add_argument(
        "--max-per-polygon",
        type=_positive,
        default=200,
        help="polygon labels: most pixel-centre points drawn per polygon [default: 200]",
    )
    init.set_defaults(func=_cmd_data_init)

    run = sub.add_parser(
        "run",
        help="run a benchmark (cross-validated, tracked in MLflow)",
        description="Run one benchmark: build folds, fit and predict per fold, evaluate "
        "overall and by region with confidence intervals (and against the truth "
        "sample on synthetic data), log everything to MLflow. Rerunning an "
        "interrupted run resumes it.",
        epilog="examples:\n  miso-bench run --model rf --cv spatial --task tax_order\n"
        "  miso-bench run --model xgboost --cv knndm --task pf1m --set cv.n_splits=10\n"
        "  miso-bench run --model rf --data datasets/eberg --task soiltype",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--model", help="model name (miso-bench list models) [default: rf]")
    run.add_argument(
        "--cv",
        help="cross-validation scheme (miso-bench list cv), or file:PATH for a split file in "
        "the reference format [default: spatial]",
    )
    run.add_argument("--task", help="task (miso-bench list tasks) [default: tax_order]")
    run.add_argument("--data", help="dataset folder [default: the embedded synthetic Alaska]")
    run.add_argument("--config", help="experiment YAML file (see configs/)")
    run.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set cv.n_splits=3 (repeatable)",
    )
    run.add_argument("--seed", type=_non_negative, help="run seed [default: 0]")
    run.add_argument(
        "--refit",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="after cross-validation, refit the model on every labelled pedon and log it "
        "(load it with miso_bench.load_model(RUN_ID)) [default: --refit]",
    )
    run.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI [default: $MLFLOW_TRACKING_URI or sqlite under $MISO_BENCH_HOME]",
    )
    run.add_argument(
        "--params",
        metavar="best:STUDY|FILE",
        help="tuned parameters: a finished sweep's best (best:STUDY) or a YAML file",
    )
    run.add_argument("--storage", help="Optuna storage of --params best:STUDY [default: local]")
    run.add_argument(
        "--jobs",
        metavar="N|auto",
        help="fits (folds, final refit) run side by side in worker processes, each with its "
        "share of the CPU threads; auto = MISO on a CPU fits one per thread (as memory "
        "allows), other models and GPUs one at a time [default: $MISO_BENCH_JOBS or auto]",
    )
    run.set_defaults(func=_cmd_run)

    sweep = sub.add_parser(
        "sweep",
        help="tune a model with Optuna, scored by nested spatial cross-validation",
        description="Tune a model's hyperparameters. Each outer fold (the folds of `run`) gets "
        "its own Optuna study on inner folds built inside its training fold; the tuned model "
        "is refit there and predicts the outer test fold, giving an honest estimate of the "
        "tuned pipeline. A last study on every pedon gives the parameters to use "
        "(`run --params best:STUDY`). Rerunning the same command continues the same studies.",
        epilog="examples:\n"
        "  miso-bench sweep --model xgboost --cv spatial --task tax_order --trials 30\n"
        "  miso-bench sweep --model miso --task pf1m --trials 20 --timeout 3600 "
        "--pruner hyperband\n"
        "  miso-bench sweep --model rf --task tax_order --trials 30 --workers 2\n"
        "  miso-bench sweep ... --storage postgresql://user@db/optuna --join   "
        "(another machine)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common_run_args(sweep)
    sweep.add_argument(
        "--trials",
        type=int,
        default=30,
        help="finished (completed or pruned) trials per study [30]",
    )
    sweep.add_argument("--timeout", type=float, help="wall-clock budget of the sweep, seconds")
    sweep.add_argument("--storage", help="Optuna storage URL [default: sqlite under home]")
    sweep.add_argument("--study", help="study name [default: DATASET-MODEL-CV-TASK-seedN]")
    sweep.add_argument("--workers", type=int, default=1, help="processes on this machine [1]")
    sweep.add_argument("--join", action="store_true", help="add trials to a running sweep")
    sweep.add_argument(
        "--pruner", default="median", choices=("median", "hyperband", "none"), help="[median]"
    )
    sweep.add_argument("--inner-splits", type=int, default=3, help="inner folds [3]")
    sweep.add_argument("--space", help="search space YAML [default: configs/search/FAMILY.yaml]")
    sweep.set_defaults(func=_cmd_sweep)

    ablate = sub.add_parser(
        "ablate",
        help="run an ablation suite and aggregate it (paired differences, by region)",
        description="Run every variant x task x cv x seed of a suite file (runs already "
        "finished are skipped), then aggregate: per variant the primary metric with a "
        "blocked-bootstrap CI (mean over seeds, interquartile mean from five seeds), overall "
        "and by region, and its paired difference from the suite's reference variant.",
        epilog="examples:\n  miso-bench ablate benchmarks/ablations/miso.yaml --tasks pf1m\n"
        "  miso-bench ablate benchmarks/ablations/smoke.yaml --data DIR",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ablate.add_argument("suite", help="suite YAML (see benchmarks/ablations/)")
    ablate.add_argument("--tasks", nargs="+", help="only these tasks of the suite")
    ablate.add_argument("--data", help="dataset folder [default: the suite's, or the default]")
    ablate.add_argument("--set", action="append", metavar="KEY=VALUE", help="for every run")
    ablate.add_argument("--tracking-uri", help="MLflow tracking URI [default: local SQLite]")
    ablate.add_argument("--verbose", action="store_true", help="show each run's progress")
    ablate.set_defaults(func=_cmd_ablate)

    compare = sub.add_parser(
        "compare",
        help="paired comparison of runs on the same pedons and folds",
        description="Compare runs with the first (the reference) pedon by pedon: the "
        "difference of a metric with a spatially blocked bootstrap CI, overall and by region. "
        "Runs must share the dataset, task, pedons and folds (same cv and seed).",
    )
    compare.add_argument("runs", nargs="+", help="MLflow run ids; the first is the reference")
    compare.add_argument("--metric", help="a confusion-matrix metric [default: the primary]")
    compare.add_argument("--n-boot", type=int, default=1000, help="replicates [1000]")
    compare.add_argument("--block-size-m", type=float, help="bootstrap blocks [the run's]")
    compare.add_argument("--json", action="store_true", help="print JSON rows")
    compare.add_argument("--tracking-uri", help="MLflow tracking URI [default: local SQLite]")
    compare.set_defaults(func=_cmd_compare)

    report = sub.add_parser(
        "report",
        help="write an HTML and Markdown report of the MLflow store",
        description="Leaderboards with CIs, results by region (heat map), per-class recall, "
        "CV estimate vs true map accuracy, fold diagnostics, sweeps and ablation suites: "
        "report.html (self-contained) and report.md with its figures, also logged to MLflow.",
    )
    report.add_argument("--experiment", action="append", help="only these experiments")
    report.add_argument("--out", default="miso-bench-report", help="output folder")
    report.add_argument("--no-log", action="store_true", help="do not log it to MLflow")
    report.add_argument("--tracking-uri", help="MLflow tracking URI [default: local SQLite]")
    report.set_defaults(func=_cmd_report)

    predict = sub.add_parser(
        "predict",
        help="map a trained run: tiled Cloud-Optimised GeoTIFFs with uncertainty and AOA",
        description="Turn a run's model into maps of a tile, a box or the whole dataset. "
        "Per tile: <tile>.class.tif (uint8 class with colour table) and <tile>.stats.tif "
        "(probability, uncertainty, dissimilarity index, area of applicability), both "
        "Cloud-Optimised GeoTIFFs on the input grid, a PNG quicklook, and a VRT mosaic of "
        "all tiles. Windows overlap and blend across window and tile borders. --all resumes: "
        "finished tiles are skipped. With a truth sample the written map is scored by region.",
        epilog="examples:\n  miso-bench predict --run RUN_ID --all --out maps/rf\n"
        "  miso-bench predict --run RUN_ID --tile AK050H49V24 --out maps/miso\n"
        "  miso-bench predict --run RUN_ID --fold all --bbox -170000,1690000,-160000,1700000 "
        "--out maps/ens\n  miso-bench predict --run RUN_ID --all --workers 4 --out maps/rf",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    predict.add_argument("--run", required=True, help="run id (from `miso-bench run` or the UI)")
    predict.add_argument(
        "--fold",
        help="final (refit on all pedons), a fold number, or all (fold models averaged; "
        "uncertainty = their spread) [default: final, or the fold of a fold's run id]",
    )
    predict.add_argument("--data", help="dataset to map [default: the run's own]")
    where = predict.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--tile", action="append", metavar="ID", help="a tile (file name stem), repeatable"
    )
    where.add_argument(
        "--bbox", type=_bbox, metavar="XMIN,YMIN,XMAX,YMAX", help="a box in the dataset's CRS"
    )
    where.add_argument("--all", action="store_true", help="every tile (resumable)")
    predict.add_argument("--out", required=True, help="output folder (reused to resume)")
    predict.add_argument(
        "--stride-px",
        type=_positive,
        help="MISO: window stride in pixels [default: half a chip]",
    )
    predict.add_argument(
        "--batch-size", type=_positive, default=16, help="MISO: windows per batch [default: 16]"
    )
    predict.add_argument(
        "--probabilities", action="store_true", help="also write one probability band per class"
    )
    predict.add_argument(
        "--workers",
        type=_positive,
        default=1,
        help="Dask worker processes on this machine, one tile per task [default: 1, no Dask]",
    )
    predict.add_argument("--scheduler", metavar="ADDRESS", help="a running Dask scheduler")
    predict.add_argument(
        "--log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="log quicklooks and map-truth metrics to the model's MLflow run [default: --log]",
    )
    predict.add_argument("--tracking-uri", help="MLflow store [default: the local one]")
    predict.set_defaults(func=_cmd_predict)

    lister = sub.add_parser(
        "list",
        help="list models, cv schemes, tasks or metrics",
        description="List registry entries.",
    )
    lister.add_argument("what", choices=("models", "cv", "tasks", "metrics"))
    lister.set_defaults(func=_cmd_list)

    ui = sub.add_parser(
        "ui",
        help="start the MLflow dashboard on the default store",
        description="Start `mlflow server` (1 worker, bound to 127.0.0.1) on "
        "the default tracking store and print its address.",
    )
    ui.add_argument("--port", type=int, default=5000, help="[default: %(default)s]")
    ui.add_argument("--host", default="127.0.0.1", help="[default: %(default)s]")
    ui.add_argument("--tracking-uri", help="store to show [default: the local SQLite store]")
    ui.set_defaults(func=_cmd_ui)
    return parser


def _join_negative_values(argv: list[str]) -> list[str]:
    """``--bbox -170000,...`` as ``--bbox=-170000,...`` (argparse reads a value starting with
    a minus sign as an option; western longitudes and many projected x are negative)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] == "--bbox" and i + 1 < len(argv) and re.match(r"-\.?\d", argv[i + 1]):
            out.append(f"--bbox={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM (``kill``, batch schedulers) ends a command like Ctrl-C does."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``miso-bench`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    parser = build_parser()
    argv = _join_negative_values(list(sys.argv[1:] if argv is None else argv))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and on usage errors
        return int(exc.code or 0)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args.func(args))
    except MisoBenchError as exc:
        _err(str(exc))
        return 2
    except FileNotFoundError as exc:
        _err(f"{exc.filename or exc}: file not found")
        return 2
    except KeyboardInterrupt:
        _err(
            "interrupted; no partial result was published (rerun the same command: a "
            "dataset is regenerated, a run resumes from its finished folds)"
        )
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
