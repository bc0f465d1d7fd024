"""Map throughput: pixels/s of ``miso-bench predict`` for rf, xgboost and MISO, and the
statewide plan derived from them.

Trains each model quickly on the synthetic default (2 spatial folds plus the final refit; MISO
one epoch: its speed does not depend on its weights), then maps with the final model in a
fresh process per model (peak RSS is that process's). Per model it prints pixels/s and km²/h
at 10 m (from the tile's own timing: reading, features or windows, prediction, uncertainty,
area of applicability, COG writing) and the process's peak RSS. For MISO it also times the
straightforward formulation in the same process: every lattice window decoded on its own at
batch 1 (``decode_window``) and blended in numpy, against ``decode_region`` (windows batched,
only the region's pixels decoded), after checking that both give the same values.

The statewide estimate takes the reference's figure of about 1.48e10 land pixels (about 590
land-equivalent 50-km AK050 tiles of 5000 x 5000 px) and divides by the measured rates: one
process on this machine, and N workers assuming tiles scale independently (one Dask task per
tile, no shared state; on one machine, up to its core count). Usage::

    python benchmarks/bench_predict.py [--preset default] [--miso-px 128]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LAND_PIXELS = 1.48e10
TILE_PX = 5000 * 5000


def _train(model: str, preset: str, uri: str, data: str | None = None) -> str:
    from miso_bench.config import resolve_config
    from miso_bench.runner import run_benchmark

    sets = [
        f"data.path={data}" if data else f"data.preset={preset}",
        f"model.name={model}",
        "task=label" if data else "task=pf1m",
        "cv.n_splits=2",
        "eval.n_boot=20",
        "eval.truth=false",
        f"tracking.uri={uri}",
    ]
    if model == "miso":
        sets += ["model.params.epochs=1", "model.params.preset=cpu"]
    return run_benchmark(resolve_config(None, None, sets), announce=lambda m: None).run_id


def _one(model: str, run_id: str, uri: str, out: str, miso_px: int) -> None:
    """Map in this process and print one JSON line (run as a child process)."""
    from miso_bench.inference.maps import dataset_tiles, predict_map

    result: dict = {"model": model}
    if model == "miso":
        from miso_bench import load_model
        from miso_bench.data.chips import ChipSource
        from miso_bench.models.miso.tiling import blend_weights, lattice_range

        predictor = load_model(run_id, tracking_uri=uri)
        from mlflow.tracking import MlflowClient

        data = MlflowClient(uri).get_run(run_id).data.params["data.path"]
        if data in ("None", ""):
            from miso_bench.config import default_dataset_dir

            data = str(default_dataset_dir(os.environ.get("BENCH_PRESET", "default")))
        from miso_bench.data.manifest import load_manifest

        source = ChipSource(load_manifest(data))
        model_ = predictor.model.attach(source)
        region = dataset_tiles(source)[0]
        r0, c0, h, w = region.r0, region.c0, miso_px, miso_px
        model_.decode_region(r0, c0, 16, 16)  # warm-up
        t = time.perf_counter()
        fast, _ = model_.decode_region(r0, c0, h, w)
        fast_s = time.perf_counter() - t
        size, stride = model_._size, model_.map_stride()
        wt = blend_weights(size)
        acc = np.zeros((fast.shape[0], h, w))
        total = np.zeros((h, w))
        t = time.perf_counter()
        for i in lattice_range(r0, h, size, stride):
            for j in lattice_range(c0, w, size, stride):
                wr, wc = i * stride, j * stride
                image, valid = source.window(wr, wc, size, size)
                probs = model_.decode_window(
                    image, valid, source.grid.bounds_of(wr, wc, size, size)
                )
                a0, a1 = max(wr, r0), min(wr + size, r0 + h)
                b0, b1 = max(wc, c0), min(wc + size, c0 + w)
                weight = np.outer(wt[a0 - wr : a1 - wr], wt[b0 - wc : b1 - wc])
                acc[:, a0 - r0 : a1 - r0, b0 - c0 : b1 - c0] += (
                    weight * probs[:, a0 - wr : a1 - wr, b0 - wc : b1 - wc]
                )
                total[a0 - r0 : a1 - r0, b0 - c0 : b1 - c0] += weight
        slow_s = time.perf_counter() - t
        result.update(
            region_px=h * w,
            decode_region_px_s=h * w / fast_s,
            straightforward_px_s=h * w / slow_s,
            max_abs_diff=float(np.abs(fast - acc / total).max()),
        )
        g = source.grid
        bbox = [*g.bounds_of(r0, c0, h, w)]
        t = time.perf_counter()
        res = predict_map(
            run_id,
            out,
            bbox=[bbox[0], bbox[2], bbox[1], bbox[3]],
            tracking_uri=uri,
            log=False,
            quicklooks=False,
            say=lambda m: None,
            show_progress=False,
        )
    else:
        t = time.perf_counter()
        res = predict_map(
            run_id,
            out,
            all_tiles=True,
            tracking_uri=uri,
            log=False,
            quicklooks=False,
            say=lambda m: None,
            show_progress=False,
        )
    wall = time.perf_counter() - t
    tiles_s = sum(r["seconds"] for r in res.records)
    px = sum(r["pixels"] for r in res.records)
    result.update(
        tiles=len(res.records),
        pixels=px,
        tile_seconds=tiles_s,
        predict_wall_s=wall,
        px_s=px / tiles_s,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default", choices=["tiny", "default", "paper"])
    parser.add_argument("--miso-px", type=int, default=128, help="side of MISO's timed region")
    parser.add_argument("--models", default="rf,xgboost,miso")
    parser.add_argument(
        "--fullsize",
        action="store_true",
        help="also map one full-size 5000 x 5000 px, 19-band tile with rf (written by "
        "bench_data.py's generator into --scratch; about 1 GB)",
    )
    parser.add_argument("--scratch", help="folder of the full-size tile [default: a temp dir]")
    parser.add_argument("--one", nargs=3, metavar=("MODEL", "RUN", "URI"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        _one(*args.one, args.out, args.miso_px)
        return

    tmp = Path(tempfile.mkdtemp(prefix="bench_predict_"))
    uri = f"sqlite:///{tmp}/mlflow.db"
    rows = []
    for model in args.models.split(","):
        t = time.perf_counter()
        run_id = _train(model, args.preset, uri)
        print(f"{model}: trained in {time.perf_counter() - t:.0f} s (run {run_id})", flush=True)
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--one",
                model,
                run_id,
                uri,
                "--out",
                str(tmp / model),
                "--miso-px",
                str(args.miso_px),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "BENCH_PRESET": args.preset},
            check=False,
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(proc.stdout[-2000:], proc.stderr[-4000:])
            raise SystemExit(f"{model}: the mapping process failed")
        rows.append(json.loads(lines[-1][len("RESULT ") :]))

    if args.fullsize:
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_data import write_fullsize

        scratch = Path(args.scratch or Path(tempfile.gettempdir()) / "miso-bench-fullsize-1")
        root = write_fullsize(scratch, tiles=1)
        run_id = _train("rf", args.preset, uri, data=str(root))
        proc = subprocess.run(
            [sys.executable, __file__, "--one", "rf", run_id, uri, "--out", str(tmp / "full")],
            capture_output=True,
            text=True,
            check=False,
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(proc.stdout[-2000:], proc.stderr[-4000:])
            raise SystemExit("fullsize: the mapping process failed")
        row = json.loads(lines[-1][len("RESULT ") :])
        row["model"] = "rf (5000²)"
        rows.append(row)

    print(f"\nMap throughput ({os.cpu_count()} cores, CPU only), preset {args.preset}:")
    print(f"{'model':<12}{'tiles':>6}{'pixels':>12}{'px/s':>10}{'km²/h':>9}{'peak RSS':>11}")
    for r in rows:
        km2_h = r["px_s"] * 3600 * 100 / 1e6
        print(
            f"{r['model']:<12}{r['tiles']:>6}{r['pixels']:>12,}{r['px_s']:>10,.0f}"
            f"{km2_h:>9,.0f}{r['peak_rss_mb']:>8,.0f} MB"
        )
    for r in rows:
        if r["model"] == "miso":
            print(
                f"\nMISO over a {args.miso_px}x{args.miso_px} region: decode_region "
                f"{r['decode_region_px_s']:,.0f} px/s, straightforward per-window batch-1 "
                f"{r['straightforward_px_s']:,.0f} px/s: "
                f"{r['decode_region_px_s'] / r['straightforward_px_s']:.2f}x "
                f"(max |difference| {r['max_abs_diff']:.1e})"
            )
    print(f"\nStatewide plan ({LAND_PIXELS:.2e} land pixels, ~{LAND_PIXELS / TILE_PX:.0f} tiles):")
    print(f"{'model':<12}{'1 process here':>16}{'8 workers':>12}{'64 workers':>12}")
    for r in rows:
        hours = LAND_PIXELS / r["px_s"] / 3600
        print(f"{r['model']:<12}{hours:>14,.0f} h{hours / 8:>10,.1f} h{hours / 64:>10,.1f} h")
    print(
        "(N workers: tiles are independent Dask tasks; assumes each worker runs as fast as one "
        "process here. GPU: not measured in this run.)"
    )


if __name__ == "__main__":
    main()
