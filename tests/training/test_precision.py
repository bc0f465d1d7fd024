"""Training arithmetic: bf16 autocast where the device computes bf16 natively, fp32 elsewhere;
``precision`` forces either; the weights stay fp32."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import miso_bench.training as training
from miso_bench.errors import MisoBenchError
from miso_bench.models.miso.estimator import MisoModel
from miso_bench.training import TrainConfig, fit_module, native_bf16


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


def test_precision_is_checked_and_resolved(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(training, "_cpu_flags", lambda: {"avx2"})
    assert MisoModel(precision="auto")._precision(cpu) == "fp32"
    assert MisoModel(precision="bf16")._precision(cpu) == "bf16"
    monkeypatch.setattr(training, "_cpu_flags", lambda: {"avx512_bf16"})
    assert MisoModel(precision="auto")._precision(cpu) == "bf16"
    assert MisoModel(precision="fp32")._precision(cpu) == "fp32"
    with pytest.raises(MisoBenchError, match="precision='fp16'"):
        MisoModel(precision="fp16")._precision(cpu)
