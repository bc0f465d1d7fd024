"""The ``miso-bench`` command line. ``main(argv) -> int`` is callable from tests.

Heavy libraries (torch, torchgeo, geopandas) are imported inside the command functions so
that ``miso-bench --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .config import DEFAULT_PRESET, DEFAULT_SEED, default_dataset_dir
from .errors import MisoBenchError

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


def _cmd_data_synth(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else default_dataset_dir(args.preset, args.seed)
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
    if problems:
        print(f"{len(problems)} problem(s) found in {path}", file=sys.stderr)
        return 2
    print(f"OK: {path} matches its manifest (no problem found)")
    return 0


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
        "--seed", type=int, default=DEFAULT_SEED, help="dataset seed [default: %(default)s]"
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``miso-bench`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and on usage errors
        return int(exc.code or 0)
    try:
        return int(args.func(args))
    except MisoBenchError as exc:
        _err(str(exc))
        return 2
    except FileNotFoundError as exc:
        _err(f"{exc.filename or exc}: file not found")
        return 2
    except KeyboardInterrupt:
        _err("interrupted; nothing partial was kept (rerun the same command to continue)")
        return 130


if __name__ == "__main__":
    sys.exit(main())
