"""Swin-V2 attention without the padded tokens equals torchvision's (values and gradients).

A feature map smaller than the attention window is padded by torchvision, and the padded
tokens take part as keys and values; :class:`WindowAttentionV2` computes their contribution
in closed form for the real tokens only. ``exact = True`` is torchvision's own path.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn
from torchvision.models.swin_transformer import (
    PatchMergingV2,
    SwinTransformer,
    SwinTransformerBlockV2,
)

from miso_bench.models.miso.attention import WindowAttentionV2, set_exact_attention
from miso_bench.models.miso.backbones import SwinEncoder


def cpu_preset_encoder() -> SwinEncoder:
    """The CPU preset's Swin-V2 (window 4: stages 3 and 4 of a 32 px chip are 2 x 2 and
    1 x 1 tokens, padded to 4 x 4)."""
    torch.manual_seed(0)
    enc = SwinEncoder(9, 48, (2, 2, 2, 2), (3, 6, 12, 24), 4, drop_path=0.0)
    # Weights away from their initial values (the key bias stays zero in Swin-V2 anyway,
    # the value bias and position-bias MLP matter for padded tokens).
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return enc


def both(enc: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    set_exact_attention(enc, False)
    fast = enc(x)
    set_exact_attention(enc, True)
    exact = enc(x)
    set_exact_attention(enc, False)
    return fast, exact


@pytest.mark.parametrize("size", [(32, 32), (32, 64), (64, 64)])
@pytest.mark.parametrize("training", [False, True])
def test_stage_outputs_equal_torchvisions(size, training):
    enc = cpu_preset_encoder().train(training)
    x = torch.rand(3, 9, *size, generator=torch.Generator().manual_seed(1))
    fast, exact = both(enc, x)
    for a, b in zip(fast, exact, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gradients_equal_torchvisions(dtype):
    """Equal in float64 to 1e-9 (the same function); in float32 to rounding relative to each
    gradient's magnitude (the stem's reach several hundred)."""
    enc = cpu_preset_encoder().to(dtype)
    x = torch.rand(3, 9, 32, 32, generator=torch.Generator().manual_seed(2), dtype=dtype)
    grads = []
    for exact in (False, True):
        enc.zero_grad()
        xg = x.clone().requires_grad_()
        set_exact_attention(enc, exact)
        outs = enc(xg)
        weights = [torch.linspace(0.5, 1.5, o.numel(), dtype=dtype).reshape(o.shape) for o in outs]
        sum((o * w).sum() for o, w in zip(outs, weights, strict=True)).backward()
        grads.append(
            {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}
            | {"input": xg.grad.clone()}
        )
    fast, exact = grads
    assert fast.keys() == exact.keys()
    for name, want in exact.items():
        tol = 1e-9 if dtype == torch.float64 else max(1e-5, 1e-6 * float(want.abs().max()))
        torch.testing.assert_close(fast[name], want, atol=tol, rtol=1e-4, msg=name)


def test_only_maps_smaller_than_one_window_take_the_closed_form(monkeypatch):
    enc = cpu_preset_encoder().eval()
    seen: list[tuple[int, int]] = []
    original = WindowAttentionV2._one_window

    def spy(self, x):
        seen.append((x.shape[1], x.shape[2]))
        return original(self, x)

    monkeypatch.setattr(WindowAttentionV2, "_one_window", spy)
    with torch.no_grad():
        enc(torch.rand(1, 9, 64, 64))  # stages: 16x16, 8x8, 4x4 (fills the window), 2x2
    assert seen == [(2, 2), (2, 2)]  # stage 4's two blocks only
    seen.clear()
    set_exact_attention(enc, True)
    with torch.no_grad():
        enc(torch.rand(1, 9, 32, 32))
    assert seen == []


def test_attention_dropout_keeps_torchvisions_path(monkeypatch):
    attn = WindowAttentionV2(24, [4, 4], [0, 0], 3, attention_dropout=0.1).train()
    monkeypatch.setattr(WindowAttentionV2, "_one_window", lambda self, x: pytest.fail("used"))
    assert attn(torch.rand(2, 1, 1, 24)).shape == (2, 1, 1, 24)


def test_state_dict_is_torchvisions():
    """Same parameters and names: Satlas checkpoints load unchanged."""
    ours = cpu_preset_encoder().swin
    theirs = SwinTransformer(
        patch_size=[4, 4],
        embed_dim=48,
        depths=[2, 2, 2, 2],
        num_heads=[3, 6, 12, 24],
        window_size=[4, 4],
        block=SwinTransformerBlockV2,
        downsample_layer=PatchMergingV2,
        norm_layer=partial(nn.LayerNorm, eps=1e-5),
    )
    theirs.features[0][0] = nn.Conv2d(9, 48, kernel_size=4, stride=4)
    theirs.head = nn.Identity()
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys()
    assert all(a[k].shape == b[k].shape for k in a)
