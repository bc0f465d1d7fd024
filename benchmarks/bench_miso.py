"""MISO throughput: training samples/s, encoder chips/s, full-query-path queries/s, peak memory.

For the CPU preset and the paper preset (Swin-V2-B at 256 px), each figure is measured in
the same run as the straightforward formulation: for the query path, the implicit decoder's
whole MLP on every gathered (query, corner) feature and then the blend (``exact=True``), against
the fast path (blend before the last layer, offsets shared per query, cells projected once,
chunks that stay in cache, the ``center`` ablation decoded once per chip); for training, that
decoder with the single-tensor AdamW against the fast path with the fused AdamW kernel. The
full query path is both modalities' decoders over all four stages, fusion, mappers, heads and
the location branch. Beside each training step: its matrix-product work (FLOPs counted by
torch's FlopCounterMode), the rate achieved and the device's own matrix-product rate (one
large square product, measured in the same run), hence the fastest any step doing that
work at that precision could be here. Where the device computes bf16 natively (a GPU,
``--device cuda``, or a CPU with AVX512-BF16 or AMX) every figure is measured in fp32 and in
bf16 autocast (what MISO's ``precision=auto`` trains in there); on a GPU with channels-last
encoders, and peak GPU memory is reported. Prints figures and ratios; no assertions. Usage::

    python benchmarks/bench_miso.py [--presets cpu paper] [--queries 62500] [--device cpu]

Random weights and random inputs: speed does not depend on the values.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from miso_bench.models.miso.attention import set_exact_attention
from miso_bench.models.miso.estimator import PRESETS
from miso_bench.models.miso.losses import MisoLoss
from miso_bench.models.miso.network import MisoConfig, MisoNet
from miso_bench.training import BF16_MIN_SPEEDUP, bf16_pays, bf16_speedup, native_bf16


def build(preset: str) -> tuple[MisoNet, dict]:
    s = PRESETS[preset]
    cfg = MisoConfig.from_preset(s, n_outputs=7)
    return MisoNet(cfg), s


def timed(fn: Callable[[], None], repeat: int, device: torch.device) -> float:
    """Mean seconds per call after one warm-up call (synchronised on CUDA)."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / repeat


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int = 2048) -> float:
    """FLOP/s of one large square matrix product (the best of five) on ``device``."""
    a = torch.rand(n, n, device=device, dtype=dtype)
    b = torch.rand(n, n, device=device, dtype=dtype)
    return 2 * n**3 / timed_best(lambda: a @ b, 5, device)


def timed_best(fn: Callable[[], object], repeat: int, device: torch.device) -> float:
    """Seconds of the fastest of ``repeat`` calls after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        best = min(best, _once(fn, device))
    return best


def paired(
    fast: Callable[[], None], slow: Callable[[], None], rounds: int, device: torch.device
) -> tuple[float, float]:
    """Seconds per call of two formulations, interleaved round by round after a warm-up of
    each, so both see the same machine; the fastest round of each (the least disturbed)."""
    fast()
    slow()
    best = [float("inf"), float("inf")]
    for _ in range(rounds):
        for i, fn in enumerate((fast, slow)):
            best[i] = min(best[i], _once(fn, device))
    return best[0], best[1]


def _once(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def bench_preset(preset: str, queries: int, device: torch.device, dtype: str) -> None:
    """Print the figures of one preset at one precision."""
    torch.manual_seed(0)
    net, s = build(preset)
    net.to(device)
    cuda = device.type == "cuda"
    if cuda:
        net.to(memory_format=torch.channels_last)
        torch.cuda.reset_peak_memory_stats()
    size = s["chip_size_px"]
    batch = s["batch_size"] if (preset == "cpu" or cuda) else 2
    n_params = sum(p.numel() for p in net.parameters()) / 1e6
    amp = dtype == "bf16"
    print(
        f"\n[{preset}, {dtype}, {device.type}] {n_params:.1f} M parameters, chips {size} px, "
        f"batch {batch}"
    )

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)

    s2 = torch.rand(batch, 9, size, size, device=device)
    cov = torch.rand(batch, 10, size, size, device=device)
    q = torch.rand(batch, 51, 2, device=device) * 2 - 1
    loc = torch.rand(batch, 51, 2, device=device) * 2 - 1
    y = torch.randint(0, 7, (batch, 51), device=device)
    loss_fn = MisoLoss(False, {"geo": 1.0, "sat_cov_nce": 0.1, "visual_geo_nce": 0.1})
    optimizers = {
        False: torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True),  # the training loop's
        True: torch.optim.AdamW(net.parameters(), lr=1e-4, foreach=False),  # single-tensor
    }
    repeat = 10 if cuda else (5 if preset == "cpu" else 2)

    def train_step(exact: bool) -> None:
        net.train()
        opt = optimizers[exact]
        set_exact_attention(net, exact)
        opt.zero_grad()
        with autocast():
            out = net(s2, cov, q, loc, exact=exact)
            loss, _ = loss_fn(out, y)
        loss.backward()
        opt.step()

    t_fast, t_exact = paired(lambda: train_step(False), lambda: train_step(True), repeat, device)
    print(
        f"  training (51 queries/chip)   {batch / t_fast:9.2f} samples/s ({t_fast:.3f} s/step)"
        f"   straightforward {batch / t_exact:9.2f} ({t_exact:.3f} s/step)   ratio "
        f"{t_exact / t_fast:.2f}x"
    )
    # The step's floor: its matrix-product work at this device's own matrix-product rate.
    with FlopCounterMode(display=False) as counter:
        train_step(False)
    flops = counter.get_total_flops()
    peak = matmul_rate(device, torch.bfloat16 if amp else torch.float32)
    print(
        f"  training step work           {flops / 1e9:9.1f} GFLOP (matrix products), "
        f"{flops / t_fast / 1e9:.0f} GFLOP/s achieved = {flops / t_fast / peak:.0%} of this "
        f"device's {dtype} matrix-product rate ({peak / 1e9:.0f} GFLOP/s): no step at these "
        f"numerics is faster than {flops / peak:.3f} s here"
    )

    net.eval()
    with torch.no_grad(), autocast():
        # The map path's batches: 64 chips of 32 px (CPU preset); one 256 px chip on a CPU.
        chips = batch if cuda else (64 if preset == "cpu" else 1)
        s2_enc = torch.rand(chips, 9, size, size, device=device)
        cov_enc = torch.rand(chips, 10, size, size, device=device)

        def encode(exact: bool) -> None:
            set_exact_attention(net, exact)
            net.encode(s2_enc, cov_enc)

        t_enc, t_enc_exact = paired(lambda: encode(False), lambda: encode(True), repeat, device)
        set_exact_attention(net, False)
        print(
            f"  encoders (both, {chips} chips)   {chips / t_enc:9.2f} chips/s   torchvision's "
            f"attention {chips / t_enc_exact:9.2f}   ratio {t_enc_exact / t_enc:.2f}x"
        )
        feats = net.encode(s2[:1], cov[:1])
        chunk = queries if (cuda or preset == "cpu") else 6_250
        qq = torch.rand(1, min(chunk, queries), 2, device=device) * 2 - 1
        ll = torch.rand(1, qq.shape[1], 2, device=device) * 2 - 1

        def decode(exact: bool) -> None:
            net.decode(feats, qq, ll, exact=exact)

        t_dec, t_dec_exact = paired(lambda: decode(False), lambda: decode(True), 3, device)
        qps, qps_exact = qq.shape[1] / t_dec, qq.shape[1] / t_dec_exact
        print(
            f"  full query path (both decoders, fusion, heads, location) {qps:11.0f} queries/s"
            f" ({1e3 / qps:.4f} ms/query)  straightforward {qps_exact:11.0f}   ratio "
            f"{qps / qps_exact:.2f}x  ({queries / qps:.2f} s per {queries:,}-query chip; "
            f"measured on {qq.shape[1]:,} queries)"
        )
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"  peak GPU memory {peak:.1f} GiB")
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"  peak RSS so far {peak_mb:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["cpu", "paper"])
    parser.add_argument("--queries", type=int, default=62_500)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtypes",
        nargs="+",
        default=None,
        help="fp32 and/or bf16 [default: both where bf16 is native, else fp32]",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    # bf16 too where the device computes it natively (what MISO's precision=auto trains in).
    dtypes = args.dtypes or (["fp32", "bf16"] if native_bf16(device) else ["fp32"])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {name}")
    if device.type == "cpu" and native_bf16(device):
        print(
            f"bf16 matrix products {bf16_speedup():.2f}x as fast as fp32 here: MISO's "
            f"precision=auto trains in {'bf16' if bf16_pays(device) else 'fp32'} "
            f"(bf16 needs {BF16_MIN_SPEEDUP}x)"
        )
    for preset in args.presets:
        for dtype in dtypes:
            bench_preset(preset, args.queries, device, dtype)


if __name__ == "__main__":
    main()
