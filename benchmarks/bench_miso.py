"""MISO throughput: training samples/s, encoder chips/s, decoder queries/s.

For the CPU preset and the paper preset (Swin-V2-B at 256 px), each figure is measured in
the same run as the straightforward formulation of the implicit decoder (the first query
layer applied to every gathered (query, corner) feature instead of once per cell). Prints
figures and ratios; no assertions. Usage::

    python benchmarks/bench_miso.py [--presets cpu paper] [--queries 62500]

Random weights and random inputs: speed does not depend on the values.
"""

from __future__ import annotations

import argparse
import time

import torch

from miso_bench.models.miso.estimator import PRESETS
from miso_bench.models.miso.losses import MisoLoss
from miso_bench.models.miso.network import MisoConfig, MisoNet


def build(preset: str) -> tuple[MisoNet, dict]:
    s = PRESETS[preset]
    cfg = MisoConfig.from_preset(s, n_outputs=7)
    return MisoNet(cfg), s


def timed(fn, repeat: int) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat


def bench_preset(preset: str, queries: int) -> None:
    """Print the figures of one preset."""
    torch.manual_seed(0)
    net, s = build(preset)
    size = s["chip_size_px"]
    batch = s["batch_size"] if preset == "cpu" else 2
    n_params = sum(p.numel() for p in net.parameters()) / 1e6
    print(f"\n[{preset}] {n_params:.1f} M parameters, chips {size} px, batch {batch}")
    s2 = torch.rand(batch, 9, size, size)
    cov = torch.rand(batch, 10, size, size)
    q = torch.rand(batch, 51, 2) * 2 - 1
    loc = torch.rand(batch, 51, 2) * 2 - 1
    y = torch.randint(0, 7, (batch, 51))
    loss_fn = MisoLoss(False, {"geo": 1.0, "sat_cov_nce": 0.1, "visual_geo_nce": 0.1})
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    repeat = 3 if preset == "cpu" else 1

    def train_step(exact: bool) -> None:
        net.train()
        opt.zero_grad()
        out = net(s2, cov, q, loc, exact=exact)
        loss, _ = loss_fn(out, y)
        loss.backward()
        opt.step()

    t_fast = timed(lambda: train_step(False), repeat)
    t_exact = timed(lambda: train_step(True), repeat)
    print(
        f"  training (51 queries/chip)   {batch / t_fast:9.1f} samples/s   "
        f"straightforward {batch / t_exact:9.1f}   ratio {t_exact / t_fast:.2f}x"
    )

    net.eval()
    with torch.no_grad():

        def encode() -> None:
            net.s2_encoder(s2[:1])
            net.cov_encoder(cov[:1])

        t_enc = timed(encode, repeat)
        print(f"  encoders (both, 1 chip)      {1 / t_enc:9.2f} chips/s")
        fmaps = net.s2_encoder(s2[:1])
        chunk = 62_500 if preset == "cpu" else 6_250
        qq = torch.rand(1, min(chunk, queries), 2) * 2 - 1

        def decode(exact: bool) -> None:
            net.s2_query(fmaps, qq, exact=exact)

        t_dec = timed(lambda: decode(False), 1)
        t_dec_exact = timed(lambda: decode(True), 1)
        qps, qps_exact = qq.shape[1] / t_dec, qq.shape[1] / t_dec_exact
        per_chip = queries / qps
        print(
            f"  decoder (Sentinel-2 branch)  {qps:9.0f} queries/s  straightforward "
            f"{qps_exact:9.0f}   ratio {qps / qps_exact:.2f}x  "
            f"({per_chip:.1f} s per {queries:,}-query chip; measured on "
            f"{qq.shape[1]:,} queries)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["cpu", "paper"])
    parser.add_argument("--queries", type=int, default=62_500)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    for preset in args.presets:
        bench_preset(preset, args.queries)


if __name__ == "__main__":
    main()
