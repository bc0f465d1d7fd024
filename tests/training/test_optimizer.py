"""The training loop's optimizer: the fused AdamW kernel gives the for-loop AdamW's numbers."""

from __future__ import annotations

import copy

import torch
from torch import nn

from miso_bench.training import param_groups, restore_optimizer


def test_fused_adamw_equals_the_single_tensor_update():
    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 3)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    opts = [
        torch.optim.AdamW(
            param_groups(net, list(net[0].parameters()), 1e-2, 0.1, 0.05), lr=1e-2, **kind
        )
        for net, kind in zip(nets, [{"foreach": False}, {"fused": True}], strict=True)
    ]
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    for _ in range(20):
        for net, opt in zip(nets, opts, strict=True):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_a_checkpoint_of_the_single_tensor_update_resumes_on_the_fused_kernel():
    """``load_state_dict`` copies the saved groups' settings; resuming a checkpoint written
    before the fused kernel must not switch it off, and must continue with the same numbers."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 3))
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))

    def steps(opt: torch.optim.Optimizer, n: int) -> None:
        for _ in range(n):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()

    old = torch.optim.AdamW(param_groups(net, [], 1e-2, 1.0, 0.05), lr=1e-2, foreach=False)
    steps(old, 5)
    weights, state = copy.deepcopy(net.state_dict()), copy.deepcopy(old.state_dict())
    steps(old, 5)
    expected = [p.detach().clone() for p in net.parameters()]

    net.load_state_dict(weights)
    new = torch.optim.AdamW(param_groups(net, [], 1e-2, 1.0, 0.05), lr=1e-2, fused=True)
    restore_optimizer(new, state)
    assert all(g["fused"] for g in new.param_groups)
    steps(new, 5)
    for got, want in zip(net.parameters(), expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
