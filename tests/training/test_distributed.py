"""Data-parallel training: two Gloo processes on CPU train exactly like one process on the
same global batches, rank 0 alone writes checkpoints, and MISO fits through the launcher."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from miso_bench.data.pedons import PedonDataset
from miso_bench.errors import MisoBenchError
from miso_bench.models import build_model
from miso_bench.training import TrainConfig, fit_module
from miso_bench.training.distributed import launch, process_group, shard

GLOBAL_BATCH = 16


def _toy_fit(checkpoint_dir: str | None) -> dict[str, torch.Tensor]:
    """Train a small network; in a process group each rank takes its share of every batch."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 4, generator=g)
    y = (X[:, 0] > 0).long()
    rank, world = shard()

    def batches(epoch):
        order = torch.randperm(64, generator=torch.Generator().manual_seed(epoch))
        for i in range(0, 64, GLOBAL_BATCH):
            idx = order[i : i + GLOBAL_BATCH][rank::world]
            yield X[idx], y[idx]

    def step(module, batch):
        xb, yb = batch
        return nn.functional.cross_entropy(module(xb), yb), {}

    def validate(module):
        return float((module(X).argmax(1) == y).float().mean())

    cfg = TrainConfig(epochs=3, lr=1e-2, patience=10, warmup_frac=0.2)
    fit_module(net, batches, 64 // GLOBAL_BATCH, step, validate, cfg, checkpoint_dir=checkpoint_dir)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _toy_worker(checkpoint_dir: str) -> dict[str, torch.Tensor]:
    with process_group("cpu") as (rank, _):
        return _toy_fit(checkpoint_dir if rank == 0 else str(Path(checkpoint_dir) / f"r{rank}"))


@pytest.mark.slow
def test_two_processes_train_like_one_on_the_same_global_batches(tmp_path):
    single = _toy_fit(None)
    results = launch(_toy_worker, (str(tmp_path),), 2)
    assert sorted(results) == [0, 1]
    for k, v in single.items():
        torch.testing.assert_close(results[0][k], v, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(results[1][k], results[0][k])
    assert (tmp_path / "last.pt").is_file() and (tmp_path / "best.pt").is_file()
    assert not (tmp_path / "r1").exists()  # rank 1 never writes


@pytest.mark.slow
def test_miso_fits_data_parallel_on_two_cpu_processes(tiny, tmp_path):
    kept, _ = PedonDataset(tiny).labelled("tax_order")
    X = pd.DataFrame({"coord_x": kept["x"].to_numpy(), "coord_y": kept["y"].to_numpy()})
    y = kept["target"].to_numpy()
    params = {"epochs": 1, "batch_size": 8, "chip_size_px": 32, "preset": "cpu", "device": "cpu"}
    model = build_model("miso", {**params, "devices": 2}, n_classes=7, seed=0)
    model.bind(tiny, checkpoint_dir=tmp_path).fit(X.iloc[:32], y[:32], X.iloc[32:48], y[32:48])
    assert model.rank_checksums_[0] == model.rank_checksums_[1]  # DDP kept the ranks in step
    here = float(sum(p.detach().double().sum() for p in model.net_.parameters()))
    assert here == pytest.approx(model.rank_checksums_[0])  # rank 0's weights came back
    assert model.run_tags()["devices"] == "2" and len(model.history_) == 1
    assert (tmp_path / "last.pt").is_file()
    proba = model.predict_proba(X.iloc[50:55])
    assert proba.shape == (5, 7) and np.allclose(proba.sum(1), 1, atol=1e-5)


def test_too_small_a_batch_for_the_devices_is_a_clear_error(tiny):
    model = build_model(
        "miso", {"batch_size": 2, "devices": 3, "preset": "cpu", "device": "cpu"}, 7, 0
    )
    X = pd.DataFrame({"coord_x": [0.0], "coord_y": [0.0]})
    with pytest.raises(MisoBenchError, match="batch_size=2"):
        model.bind(tiny).fit(X, np.array([0]))


def _failing_worker(message: str) -> None:
    raise MisoBenchError(message)


@pytest.mark.slow
def test_a_user_error_in_a_worker_is_raised_with_its_message():
    with pytest.raises(MisoBenchError, match=r"^pedons\.gpkg: field `x`: fix it$"):
        launch(_failing_worker, ("pedons.gpkg: field `x`: fix it",), 2)
