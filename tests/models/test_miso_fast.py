"""MISO's fast query path equals the straightforward formulation (values and gradients).

The fast path blends the corners' activations before the implicit decoder's last (affine)
layer, shares the first layer's offset term per query, projects every cell once for many
queries, decodes in chunks without autograd and decodes the ``center`` ablation once per chip;
``exact=True`` runs the straightforward formulation (the whole MLP on every (query, corner)
pair, then the blend).
"""

from __future__ import annotations

import pytest
import torch

from miso_bench.models.miso.inr import ImplicitQueryDecoder, LocalImplicitQuery
from miso_bench.models.miso.network import DECODERS, MisoConfig, MisoNet

OUTPUTS = ("logits", "head_emb", "geo_logits", "s2_emb", "cov_emb", "visual_emb", "geo_emb")


def small_net(decoder: str, fusion: str, query: str, cov_encoder: str = "cnn") -> MisoNet:
    torch.manual_seed(0)
    cfg = MisoConfig(
        n_outputs=5,
        embed_dim=16,
        depths=(1, 1, 1, 1),
        num_heads=(1, 2, 2, 4),
        window=2,
        cov_encoder=cov_encoder,
        cov_width=8,
        dim=32,
        fusion=fusion,
        decoder=decoder,
        query=query,
        n_freq=8,
        drop_path=0.0,
        dropout=0.0,
    )
    return MisoNet(cfg).eval()


def inputs(n_queries: int, batch: int = 2) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    s2 = torch.rand(batch, 9, 32, 32, generator=g)
    cov = torch.rand(batch, 10, 32, 32, generator=g)
    q = torch.rand(batch, n_queries, 2, generator=g) * 2 - 1
    loc = torch.rand(batch, n_queries, 2, generator=g) * 2 - 1
    return s2, cov, q, loc


# 5 queries: gather first on the 8 x 8 stage (4 x 5 corners < 64 cells; the coarser stages
# project their cells); 1,300 queries: every cell projected once, decoded in chunks of 512
# (the last one partial).
@pytest.mark.parametrize("n_queries", [5, 1300])
@pytest.mark.parametrize("query", ["implicit", "center"])
@pytest.mark.parametrize("fusion", ["sum", "concat"])
@pytest.mark.parametrize("decoder", DECODERS)
def test_fast_path_equals_the_straightforward_one(decoder, fusion, query, n_queries):
    net = small_net(decoder, fusion, query)
    s2, cov, q, loc = inputs(n_queries)
    with torch.no_grad():
        fast = net(s2, cov, q, loc)
        slow = net(s2, cov, q, loc, exact=True)
    assert set(fast) == set(slow)
    for key in OUTPUTS:
        if key in slow:
            assert fast[key].shape == slow[key].shape, key
            torch.testing.assert_close(fast[key], slow[key], atol=1e-5, rtol=1e-5, msg=key)


def test_fast_path_with_a_swin_covariate_encoder():
    net = small_net("dual", "sum", "implicit", cov_encoder="swin")
    s2, cov, q, loc = inputs(700)
    with torch.no_grad():
        fast, slow = net(s2, cov, q, loc), net(s2, cov, q, loc, exact=True)
    torch.testing.assert_close(fast["logits"], slow["logits"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_queries", [5, 300])
@pytest.mark.parametrize("query", ["implicit", "center"])
@pytest.mark.parametrize("decoder", ["dual", "attn"])
def test_gradients_of_the_fast_path_equal_the_straightforward_ones(decoder, query, n_queries):
    """Training runs the fast path: its gradients (every parameter and the input chips) are
    the straightforward formulation's."""
    net = small_net(decoder, "sum", query)
    s2, cov, q, loc = inputs(n_queries)
    weights = torch.randn(2, n_queries, 5, generator=torch.Generator().manual_seed(3))
    grads = []
    for exact in (False, True):
        net.zero_grad()
        a, b = s2.clone().requires_grad_(), cov.clone().requires_grad_()
        out = net(a, b, q, loc, exact=exact)
        loss = (out["logits"] * weights).sum() + out["visual_emb"].square().mean()
        loss.backward()
        grads.append(
            {
                **{n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None},
                "s2": a.grad,
                "cov": b.grad,
            }
        )
    fast, slow = grads
    assert set(fast) == set(slow) and len(fast) > 20
    for name in slow:
        torch.testing.assert_close(fast[name], slow[name], atol=1e-5, rtol=1e-4, msg=name)


def test_the_decoder_with_a_deeper_mlp_and_none():
    """Blending before the last layer holds for any depth, and without hidden layers."""
    torch.manual_seed(4)
    fmap = torch.randn(1, 12, 6, 6)
    q = torch.rand(1, 900, 2) * 2 - 1
    for hidden in [(16, 24), ()]:
        query = LocalImplicitQuery(12, hidden, 8)
        with torch.no_grad():
            torch.testing.assert_close(
                query(fmap, q), query(fmap, q, exact=True), atol=1e-5, rtol=1e-5
            )


def test_the_offset_split_stays_exact_on_a_wide_map():
    """Cell indices enter the per-cell projection and the per-query term. On a 300-cell-wide
    bf16 map (under autocast, as on a GPU) indices past 256 are not bf16 numbers, so they are
    kept in the weights' fp32: the fast path stays within bf16 noise of the straightforward
    one (an index rounded to bf16 moved outputs by 0.2)."""
    torch.manual_seed(6)
    fmap = torch.randn(1, 4, 3, 300)
    q = torch.rand(1, 2000, 2) * 2 - 1
    query = LocalImplicitQuery(4, (16,), 8)
    with torch.no_grad():
        torch.testing.assert_close(query(fmap, q), query(fmap, q, exact=True), atol=2e-5, rtol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = query(fmap.bfloat16(), q).float()
            slow = query(fmap.bfloat16(), q, exact=True).float()
    assert (fast - slow).abs().max() < 0.05


def test_sum_fusion_leaves_the_stage_outputs_untouched():
    """Attention fusion reads the stage outputs after fusing them (in place on a copy)."""
    torch.manual_seed(5)
    decoder = ImplicitQueryDecoder((4, 8), 16)
    fmaps = [torch.randn(1, 4, 8, 8), torch.randn(1, 8, 4, 4)]
    q = torch.rand(1, 600, 2) * 2 - 1
    with torch.no_grad():
        stages = decoder.stage_outputs(fmaps, q)
        copies = [s.clone() for s in stages]
        decoder.fuse(stages)
    for s, c in zip(stages, copies, strict=True):
        torch.testing.assert_close(s, c)


# [1, 9, 700]: every cell projected (and chunked); [1, 0, 3]: 16 (query, corner) pairs < 3 x 64
# cells, so the finest stage gathers first; a chip without queries.
@pytest.mark.parametrize("counts", [[1, 9, 700], [1, 0, 3]])
@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("query", ["implicit", "center"])
@pytest.mark.parametrize("decoder", DECODERS)
def test_queries_of_many_chips_in_one_row_equal_each_chip_decoded_alone(
    decoder, query, exact, counts
):
    """Sparse points (pedons, the truth sample) are decoded together, each naming its chip."""
    net = small_net(decoder, "sum", query)
    s2, cov, _, _ = inputs(1, batch=3)
    g = torch.Generator().manual_seed(7)
    qs = [torch.rand(1, n, 2, generator=g) * 2 - 1 for n in counts]
    locs = [torch.rand(1, n, 2, generator=g) * 2 - 1 for n in counts]
    with torch.no_grad():
        feats = net.encode(s2, cov)
        chip = torch.repeat_interleave(torch.arange(3), torch.tensor(counts))[None]
        together = net.decode(feats, torch.cat(qs, 1), torch.cat(locs, 1), exact, chip=chip)
        for k in range(3):
            if counts[k] == 0:
                continue
            one = {name: [t[k : k + 1] for t in maps] for name, maps in feats.items()}
            alone = net.decode(one, qs[k], locs[k], exact)
            rows = chip[0] == k
            for key in OUTPUTS:
                if key in alone:
                    torch.testing.assert_close(
                        together[key][:, rows], alone[key], atol=1e-5, rtol=1e-5, msg=key
                    )
