"""Training arithmetic: bf16 autocast where it is faster (CUDA; a CPU with bf16 instructions whose
bf16 matrix products measure faster than fp32's), fp32 elsewhere; ``precision`` forces either;
the weights stay fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import miso_bench.training as training
from miso_bench.errors import MisoBenchError
from miso_bench.models.miso.estimator import MisoModel
from miso_bench.training import TrainConfig, bf16_pays, bf16_speedup, fit_module, native_bf16


@pytest.mark.parametrize(
    ("flags", "native"),
    [({"avx2", "avx512f"}, False), ({"avx512f", "avx512_bf16"}, True), ({"amx_bf16"}, True)],
)
def test_native_bf16_follows_the_cpu_flags(monkeypatch, flags, native):
    monkeypatch.setattr(training, "_cpu_flags", lambda: flags)
    assert native_bf16(torch.device("cpu")) is native
    assert native_bf16(torch.device("cuda")) is True
    assert native_bf16(torch.device("meta")) is False


@pytest.mark.parametrize("amp", [False, True])
def test_the_loop_autocasts_the_forward_pass_only(amp):
    torch.manual_seed(0)
    net = nn.Linear(4, 2)
    seen: list[torch.dtype] = []

    def step(module, batch):
        out = module(batch)
        seen.append(out.dtype)
        return out.float().pow(2).mean(), {}

    cfg = TrainConfig(epochs=1, patience=1, amp=amp)
    fit_module(net, lambda epoch: [torch.randn(8, 4)], 1, step, lambda m: None, cfg)
    assert seen == [torch.bfloat16 if amp else torch.float32]
    assert all(p.dtype == torch.float32 for p in net.parameters())


@pytest.mark.parametrize(
    ("flags", "speedup", "pays"),
    [
        ({"avx2"}, 4.0, False),  # no bf16 instructions: emulated, never measured
        ({"avx512_bf16"}, 4.0, True),  # e.g. an AMD EPYC: bf16 products 4x fp32's
        # An Intel Xeon whose AVX512-BF16 runs without AMX: bf16 products at half fp32's
        # speed, training steps 1.2x slower; the CPU flags alone chose bf16 here.
        ({"avx512_bf16"}, 0.5, False),
        ({"amx_bf16"}, 1.49, False),
    ],
)
def test_bf16_pays_needs_the_instructions_and_a_measured_gain(monkeypatch, flags, speedup, pays):
    measured: list[bool] = []

    def fake_speedup() -> float:
        measured.append(True)
        return speedup

    monkeypatch.setattr(training, "_cpu_flags", lambda: flags)
    monkeypatch.setattr(training, "bf16_speedup", fake_speedup)
    assert bf16_pays(torch.device("cpu")) is pays
    assert measured == ([True] if native_bf16(torch.device("cpu")) else [])
    assert bf16_pays(torch.device("cuda")) is True
    assert bf16_pays(torch.device("meta")) is False


def test_the_bf16_speedup_is_measured_on_this_cpu():
    ratio = bf16_speedup()
    assert np.isfinite(ratio) and ratio > 0
    assert bf16_speedup() == ratio  # once per process


def test_precision_is_checked_and_resolved(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(training, "_cpu_flags", lambda: {"avx2"})
    assert MisoModel(precision="auto")._precision(cpu) == "fp32"
    assert MisoModel(precision="bf16")._precision(cpu) == "bf16"
    monkeypatch.setattr(training, "_cpu_flags", lambda: {"avx512_bf16"})
    monkeypatch.setattr(training, "bf16_speedup", lambda: 4.0)
    assert MisoModel(precision="auto")._precision(cpu) == "bf16"
    monkeypatch.setattr(training, "bf16_speedup", lambda: 0.5)
    assert MisoModel(precision="auto")._precision(cpu) == "fp32"
    monkeypatch.setattr(training, "bf16_speedup", lambda: 4.0)
    assert MisoModel(precision="fp32")._precision(cpu) == "fp32"
    with pytest.raises(MisoBenchError, match="precision='fp16'"):
        MisoModel(precision="fp16")._precision(cpu)


def test_a_fit_records_the_precision_it_trained_in(monkeypatch, tiny):
    """The ``precision`` tag is what the fit used, not a second measurement at tagging time;
    a data-parallel fit hands its ranks that resolved value."""
    import pandas as pd

    from miso_bench.data.pedons import PedonDataset
    from miso_bench.models import build_model
    from tests.models.test_miso import SMALL, make_context

    seen: list[bool] = []
    real_fit_module = training.fit_module

    def spy(*args, **kwargs):
        seen.append(args[5].amp)
        return real_fit_module(*args, **kwargs)

    monkeypatch.setattr("miso_bench.models.miso.estimator.fit_module", spy)
    monkeypatch.setattr(training, "_cpu_flags", lambda: {"avx512_bf16"})
    monkeypatch.setattr(training, "bf16_speedup", lambda: 0.5)
    kept, _ = PedonDataset(tiny).labelled("tax_order")
    X = pd.DataFrame({"coord_x": kept["x"].to_numpy(), "coord_y": kept["y"].to_numpy()})
    y = kept["target"].to_numpy()
    model = build_model("miso", SMALL, n_classes=7, seed=0)
    model.fit(X.iloc[:16], y[:16], context=make_context(tiny))
    assert seen == [False] and model.run_tags()["precision"] == "fp32"
    monkeypatch.setattr(training, "bf16_speedup", lambda: 4.0)
    assert model.run_tags()["precision"] == "fp32"  # recorded, not measured again


def test_a_data_parallel_fit_hands_its_ranks_the_resolved_precision(monkeypatch, tiny):
    import pandas as pd

    from miso_bench.models import build_model
    from tests.models.test_miso import SMALL, make_context

    handed: list[str] = []

    class LaunchedError(Exception):
        pass

    def fake_launch(fn, args, n):
        handed.append(args[0]["precision"])
        raise LaunchedError

    monkeypatch.setattr("miso_bench.models.miso.estimator.launch", fake_launch)
    monkeypatch.setattr(training, "_cpu_flags", lambda: {"avx512_bf16"})
    monkeypatch.setattr(training, "bf16_speedup", lambda: 4.0)
    model = build_model("miso", {**SMALL, "devices": 2}, n_classes=7, seed=0)
    X = pd.DataFrame({"coord_x": [0.0], "coord_y": [0.0]})
    with pytest.raises(LaunchedError):
        model.fit(X, np.array([0]), context=make_context(tiny))
    assert handed == ["bf16"]  # the ranks do not measure (and perhaps disagree) themselves
