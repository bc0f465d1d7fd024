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
    import signal

    single = _toy_fit(None)

    def handler(signum, frame):
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, handler)
    try:
        results = launch(_toy_worker, (str(tmp_path),), 2)
        # The launcher's own signal handlers are gone again: `kill` still ends the caller's
        # run as an interruption after a data-parallel fit.
        assert signal.getsignal(signal.SIGTERM) is handler
    finally:
        signal.signal(signal.SIGTERM, before)
    assert sorted(results) == [0, 1]
    for k, v in single.items():
        torch.testing.assert_close(results[0][k], v, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(results[1][k], results[0][k])
    assert (tmp_path / "last.pt").is_file() and (tmp_path / "best.pt").is_file()
    assert not (tmp_path / "r1").exists()  # rank 1 never writes


def _miso_context(manifest, checkpoint_dir=None, on_epoch=None):
    from miso_bench.data.chips import ChipSource
    from miso_bench.data.normalization import Normalizer, compute_band_stats
    from miso_bench.models import FoldContext

    source = ChipSource(manifest)
    return FoldContext(
        source=source,
        normalizer=Normalizer(compute_band_stats(manifest), source.band_names),
        checkpoint_dir=checkpoint_dir,
        on_epoch=on_epoch,
    )


#: Dropout and stochastic depth draw different random numbers in one and two processes; the
#: tolerances below are fp32's (bf16 autocast rounds each rank's smaller batch differently).
DETERMINISTIC = {
    "precision": "fp32",
    "epochs": 2,
    "batch_size": 9,  # odd: the ranks hold 5 and 4 chips of every global batch
    "chip_size_px": 32,
    "preset": "cpu",
    "device": "cpu",
    "drop_path": 0.0,
    "dropout": 0.0,
}


@pytest.mark.slow
def test_miso_two_processes_train_like_one_on_the_same_global_batches(tiny, tmp_path):
    """InfoNCE negatives gathered across ranks and the supervised loss normalised by the
    global labelled count: a 2-process fit (Gloo, CPU) matches a 1-process fit."""
    kept, _ = PedonDataset(tiny).labelled("tax_order")
    X = pd.DataFrame({"coord_x": kept["x"].to_numpy(), "coord_y": kept["y"].to_numpy()})
    y = kept["target"].to_numpy()
    epochs_seen = []
    one = build_model("miso", DETERMINISTIC, n_classes=7, seed=0)
    one.fit(X.iloc[:40], y[:40], X.iloc[40:56], y[40:56], context=_miso_context(tiny))
    two = build_model("miso", {**DETERMINISTIC, "devices": 2}, n_classes=7, seed=0)
    ctx = _miso_context(tiny, tmp_path, on_epoch=lambda e, r: epochs_seen.append((e, r)))
    two.fit(X.iloc[:40], y[:40], X.iloc[40:56], y[40:56], context=ctx)
    assert two.rank_checksums_[0] == two.rank_checksums_[1]  # DDP kept the ranks in step
    assert two.run_tags()["devices"] == "2" and len(two.history_) == 2
    assert [e for e, _ in epochs_seen] == [0, 1]  # rank 0's epochs reached the caller
    for a, b in zip(one.history_, two.history_, strict=True):
        assert a["loss/total"] == pytest.approx(b["loss/total"], rel=1e-4)
        assert a["val/score"] == pytest.approx(b["val/score"], abs=1e-9)
    # Stated tolerance: weights within 1e-4, probabilities within 1e-4 after two epochs.
    for (name, w1), w2 in zip(
        one.net_.state_dict().items(), two.net_.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(w2, w1, atol=1e-4, rtol=1e-3, msg=name)
    np.testing.assert_allclose(
        two.predict_proba(X.iloc[60:80]), one.predict_proba(X.iloc[60:80]), atol=1e-4
    )
    assert (tmp_path / "last.pt").is_file()


@pytest.mark.slow
def test_a_callback_that_raises_stops_a_data_parallel_fit(tiny):
    kept, _ = PedonDataset(tiny).labelled("tax_order")
    X = pd.DataFrame({"coord_x": kept["x"].to_numpy(), "coord_y": kept["y"].to_numpy()})
    y = kept["target"].to_numpy()

    class PrunedError(Exception):
        pass

    def prune(epoch, record):
        raise PrunedError(f"epoch {epoch}")

    model = build_model("miso", {**DETERMINISTIC, "devices": 2}, n_classes=7, seed=0)
    with pytest.raises(PrunedError, match="epoch 0"):
        model.fit(X.iloc[:24], y[:24], context=_miso_context(tiny, on_epoch=prune))


def test_too_small_a_batch_for_the_devices_is_a_clear_error(tiny):
    model = build_model(
        "miso", {"batch_size": 2, "devices": 3, "preset": "cpu", "device": "cpu"}, 7, 0
    )
    X = pd.DataFrame({"coord_x": [0.0], "coord_y": [0.0]})
    with pytest.raises(MisoBenchError, match="batch_size=2"):
        model.fit(X, np.array([0]), context=_miso_context(tiny))


def _failing_worker(message: str) -> None:
    raise MisoBenchError(message)


@pytest.mark.slow
def test_a_user_error_in_a_worker_is_raised_with_its_message():
    with pytest.raises(MisoBenchError, match=r"^pedons\.gpkg: field `x`: fix it$"):
        launch(_failing_worker, ("pedons.gpkg: field `x`: fix it",), 2)


def test_every_device_means_every_gpu_and_one_process_on_cpu():
    model = build_model("miso", {"devices": -1, "device": "cpu"}, 2, 0)
    assert model._n_devices() == 1
