"""CUDA paths: the paper preset trains in bf16 with channels-last and resumes from its
checkpoints; NCCL data-parallel training through the launcher matches one process; the
collectives behind the data-parallel losses run on GPU tensors. Skipped without a GPU (CI
has none); run them on a GPU machine with::

    python -m pytest tests/training/test_cuda.py

They import only the network, losses and training loop (no raster stack), so they also run
on a GPU machine with nothing but PyTorch and scikit-learn installed
(``pytest -c /dev/null --noconftest tests/training/test_cuda.py``).
"""

from pathlib import Path

import pytest
import torch
from torch import nn

from miso_bench.models.miso.estimator import PRESETS
from miso_bench.models.miso.losses import MisoLoss
from miso_bench.models.miso.network import MisoConfig, MisoNet
from miso_bench.training import TrainConfig, fit_module
from miso_bench.training.distributed import (
    _GatherRows,
    gather_rows,
    global_sum,
    launch,
    process_group,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _paper_batches(batch: int, steps: int, size: int = 256):
    g = torch.Generator().manual_seed(0)
    data = [
        (
            torch.rand(batch, 9, size, size, generator=g),
            torch.rand(batch, 10, size, size, generator=g),
            torch.rand(batch, 12, 2, generator=g) * 2 - 1,
            torch.rand(batch, 12, 2, generator=g) * 2 - 1,
            torch.randint(-1, 7, (batch, 12), generator=g),
        )
        for _ in range(steps)
    ]
    return lambda epoch: iter(data)


def _paper_fit(net, epochs, checkpoint_dir, amp=True):
    loss_fn = MisoLoss(False, {"geo": 1.0, "sat_cov_nce": 0.1, "visual_geo_nce": 0.1}).cuda()

    def step(module, batch):
        s2, cov, q, loc, y = (t.cuda(non_blocking=True) for t in batch)
        return loss_fn(module(s2, cov, q, loc), y)

    cfg = TrainConfig(epochs=epochs, lr=5e-5, device="cuda", amp=amp, patience=10)
    return fit_module(
        net,
        _paper_batches(8, 3),
        3,
        step,
        lambda module: None,
        cfg,
        backbone=net.backbone_parameters(),
        checkpoint_dir=checkpoint_dir,
    )


def test_paper_preset_trains_in_bf16_and_resumes(tmp_path):
    torch.manual_seed(0)
    cfg = MisoConfig.from_preset(PRESETS["paper"], n_outputs=7)
    net = MisoNet(cfg)
    result = _paper_fit(net, 2, tmp_path)
    assert len(result.history) == 2 and result.best_epoch == 1  # no validation: the last
    assert all(torch.isfinite(torch.tensor(r["loss/total"])) for r in result.history)
    assert next(net.parameters()).is_cuda
    assert (tmp_path / "last.pt").is_file()
    stage = net.s2_encoder.swin.features[0][0].weight
    assert stage.is_contiguous(memory_format=torch.channels_last)
    torch.manual_seed(1)
    fresh = MisoNet(cfg)
    resumed = _paper_fit(fresh, 3, tmp_path)  # one more epoch, from the checkpoint
    assert resumed.resumed_from == 2 and len(resumed.history) == 3


def _toy_fit() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 4, generator=g)
    y = (X[:, 0] > 0).long()

    def batches(epoch):
        order = torch.randperm(64, generator=torch.Generator().manual_seed(epoch))
        for i in range(0, 64, 16):
            idx = order[i : i + 16]
            yield X[idx], y[idx]

    def step(module, batch):
        xb, yb = (t.cuda() for t in batch)
        return nn.functional.cross_entropy(module(xb), yb), {}

    cfg = TrainConfig(epochs=3, lr=1e-2, device="cuda", amp=False, patience=10)
    fit_module(net, batches, 4, step, lambda m: None, cfg)
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}


def _nccl_worker() -> dict:
    with process_group("cuda") as (rank, world):
        assert torch.distributed.get_backend() == "nccl"
        weights = _toy_fit()  # DDP-wrapped inside the group
        x = torch.arange(6.0, device="cuda").reshape(3, 2).requires_grad_()
        gathered, first = gather_rows(x)
        assert first == 3 * rank
        gathered.sum().backward()
        # The autograd collective itself (gather_rows skips it in a group of one).
        y = torch.arange(6.0, device="cuda").reshape(3, 2).requires_grad_()
        stacked = _GatherRows.apply(y)
        (stacked * 2).sum().backward()
        total = global_sum(torch.tensor(5.0, device="cuda"))
        return {
            "rank": rank,
            "world": world,
            "weights": weights,
            "gathered": gathered.detach().cpu(),
            "grad": x.grad.detach().cpu(),
            "stacked": stacked.detach().cpu(),
            "collective_grad": y.grad.detach().cpu(),
            "total": float(total),
        }


def test_nccl_data_parallel_through_the_launcher_matches_one_process():
    single = _toy_fit()
    results = launch(_nccl_worker, (), torch.cuda.device_count())
    out = results[0]
    assert out["world"] == torch.cuda.device_count()
    for k, v in single.items():
        torch.testing.assert_close(out["weights"][k], v, rtol=1e-5, atol=1e-6)
    assert out["total"] == 5.0 * out["world"]
    assert out["gathered"].shape[0] == 3 * out["world"]
    torch.testing.assert_close(out["grad"], torch.full((3, 2), float(out["world"])))
    assert out["stacked"].shape == (out["world"], 3, 2)
    torch.testing.assert_close(out["collective_grad"], torch.full((3, 2), 2.0 * out["world"]))


def test_info_nce_and_supervised_losses_are_finite_in_bf16():
    loss_fn = MisoLoss(False, {"geo": 1.0, "sat_cov_nce": 0.1, "visual_geo_nce": 0.1}).cuda()
    outputs = {
        name: torch.randn(8, 5, 7 if "logits" in name else 32, device="cuda")
        for name in ("logits", "geo_logits", "s2_emb", "cov_emb", "visual_emb", "geo_emb")
    }
    with torch.autocast("cuda", dtype=torch.bfloat16):
        total, parts = loss_fn(outputs, torch.randint(-1, 7, (8, 5), device="cuda"))
    assert torch.isfinite(total) and set(parts) > {"loss/base"}


def test_the_checkpoint_folder_is_plain_tensors(tmp_path):
    net = MisoNet(MisoConfig.from_preset(PRESETS["cpu"], n_outputs=2))
    _paper_fit(net, 1, tmp_path)
    state = torch.load(Path(tmp_path) / "best.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
