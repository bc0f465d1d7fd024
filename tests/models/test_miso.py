"""MISO: every registry entry trains and predicts; the implicit decoder, location encodings,
losses, Satlas weight loading and checkpoint resume behave as specified."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from miso_bench.data.chips import ChipSource
from miso_bench.data.manifest import load_manifest
from miso_bench.data.normalization import Normalizer, compute_band_stats
from miso_bench.data.pedons import PedonDataset
from miso_bench.errors import MisoBenchError
from miso_bench.models import MODELS, FoldContext, build_model, load_fitted, save_fitted
from miso_bench.models.miso.backbones import SwinEncoder, load_satlas_state_dict
from miso_bench.models.miso.inr import LocalImplicitQuery, corner_weights
from miso_bench.models.miso.location import LocationEncoder, LocationNormalizer, Space2Vec
from miso_bench.models.miso.losses import MisoLoss, info_nce, merged_aux, supervised_loss
from miso_bench.training import TrainConfig, cosine_with_warmup, fit_module

CHIP_MODELS = [n for n in MODELS.list() if MODELS.get(n).kind == "chips"]


@pytest.fixture(scope="module")
def pedons(tiny):
    kept, _ = PedonDataset(tiny).labelled("tax_order")
    kept = kept.reset_index(drop=True)
    X = pd.DataFrame({"coord_x": kept["x"], "coord_y": kept["y"]})
    X.index = kept["id"]
    return X, kept["target"].to_numpy()


def make_context(manifest, **kwargs) -> FoldContext:
    source = ChipSource(manifest)
    return FoldContext(
        source=source,
        normalizer=Normalizer(compute_band_stats(manifest), source.band_names),
        **kwargs,
    )


@pytest.fixture(scope="module")
def context(tiny):
    return make_context(tiny)


SMALL = {"epochs": 1, "batch_size": 8, "chip_size_px": 32, "preset": "cpu", "device": "cpu"}


@pytest.mark.slow
@pytest.mark.parametrize("name", CHIP_MODELS)
def test_every_miso_entry_trains_one_step_and_predicts(name, tiny, pedons, context):
    X, y = pedons
    model = build_model(name, SMALL, n_classes=7, seed=0)
    ctx = FoldContext(
        source=context.source, normalizer=context.normalizer, exclude_xy=X.iloc[60:70].to_numpy()
    )
    model.fit(X.iloc[:24], y[:24], X.iloc[24:32], y[24:32], context=ctx)
    proba = model.predict_proba(X.iloc[40:50])
    assert proba.shape == (10, 7) and np.allclose(proba.sum(1), 1, atol=1e-5)
    many = model.predict_points(X.iloc[40:50])
    assert many.shape == (10, 7)
    assert len(model.history_) == 1
    assert model.run_tags()["miso_preset"] == "cpu"
    assert model.run_tags()["pretrained_weights"] == "none"


def test_binary_miso_predicts_two_columns(tiny, context):
    kept, _ = PedonDataset(tiny).labelled("pf1m")
    X = pd.DataFrame({"coord_x": kept["x"].to_numpy(), "coord_y": kept["y"].to_numpy()})
    y = kept["target"].to_numpy()
    model = build_model(
        "miso",
        {"epochs": 1, "batch_size": 8, "chip_size_px": 32, "preset": "cpu"},
        n_classes=2,
        seed=0,
    )
    model.fit(X.iloc[:16], y[:16], X.iloc[16:24], y[16:24], context=context)
    proba = model.predict_proba(X.iloc[:5])
    assert proba.shape == (5, 2) and np.allclose(proba.sum(1), 1)


def test_validation_scores_the_tasks_positive_class(tiny, context):
    """Early stopping keeps the epoch with the best F1 of the task's scored class: with a
    manifest listing ``[1, 0]`` that class is index 0 (the validation F1 once scored index 1,
    the class the reported f1_pos does not score)."""
    from dataclasses import replace

    from sklearn.metrics import f1_score

    kept, _ = PedonDataset(tiny).labelled("pf1m")
    X = pd.DataFrame({"coord_x": kept["x"].to_numpy(), "coord_y": kept["y"].to_numpy()})
    y = kept["target"].to_numpy()
    model = build_model("miso", SMALL, n_classes=2, seed=0)
    first = replace(context, positive_index=0)
    model.fit(X.iloc[:16], y[:16], X.iloc[16:40], y[16:40], context=first)
    pred = model.predict_proba(X.iloc[16:40]).argmax(1)
    scores = {c: f1_score(y[16:40], pred, pos_label=c, zero_division=0) for c in (0, 1)}
    assert scores[0] != pytest.approx(scores[1])  # the check tells the two classes apart
    assert model.history_[0]["val/score"] == pytest.approx(scores[0])


# --- the implicit decoder -----------------------------------------------------------------
def test_query_at_a_cell_centre_reproduces_that_cells_projection():
    torch.manual_seed(0)
    fmap = torch.randn(1, 6, 4, 5)
    query = LocalImplicitQuery(6, (16,), 8)
    row, col = 2, 3
    q = torch.tensor([[[(2 * col + 1) / 5 - 1, (2 * row + 1) / 4 - 1]]])
    out = query(fmap, q)
    expected = query.rest(query.first(torch.cat([fmap[0, :, row, col], torch.zeros(2)])))
    torch.testing.assert_close(out[0, 0], expected, atol=1e-5, rtol=1e-5)


def test_bilinear_blending_is_exact():
    torch.manual_seed(1)
    fmap = torch.randn(2, 3, 7, 9)
    q = torch.rand(2, 100, 2) * 2 - 1
    rows, cols, weights, _ = corner_weights(q, 7, 9)
    cells = fmap.permute(0, 2, 3, 1)
    gathered = torch.stack([cells[b][rows[b], cols[b]] for b in range(2)])
    blended = (gathered * weights[..., None]).sum(-2)
    reference = torch.nn.functional.grid_sample(
        fmap, q[:, :, None, :], align_corners=False, padding_mode="border"
    )[..., 0].permute(0, 2, 1)
    torch.testing.assert_close(blended, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 100))


def test_fast_decoder_equals_the_straightforward_formulation():
    torch.manual_seed(2)
    fmap = torch.randn(2, 32, 8, 8)
    q = torch.rand(2, 500, 2) * 2 - 1  # 2,000 (query, corner) pairs > 64 cells: precomputed
    query = LocalImplicitQuery(32, (64, 64), 16)
    torch.testing.assert_close(query(fmap, q), query(fmap, q, exact=True), atol=1e-5, rtol=1e-5)


def test_x_axis_is_columns_not_rows():
    """The reference paired x with row centres; here x moves along columns."""
    fmap = torch.zeros(1, 1, 4, 4)
    fmap[0, 0, :, 3] = 1.0  # the east column
    rows, cols, _, _ = corner_weights(torch.tensor([[[0.75, -0.75]]]), 4, 4)
    assert (cols[0, 0] == 3).any() and (rows[0, 0] == 0).any()


# --- location -------------------------------------------------------------------------------
def test_location_normalisation_and_encodings():
    # A 400 x 40 extent: a 400 x 400 square around it, one scale for both axes.
    norm = LocationNormalizer.from_extent((-100.0, 20.0, 300.0, 60.0), metres_per_unit=2.0)
    xy = torch.tensor([[-100.0, 240.0], [300.0, -160.0], [100.0, 40.0]], dtype=torch.float64)
    torch.testing.assert_close(norm(xy), torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]]))
    assert LocationNormalizer.from_dict(norm.to_dict()) == norm
    assert norm.half_span_m == 400.0 and norm.scale(100.0) == 0.25
    grid = Space2Vec("gridcell", n_freq=16)
    theory = Space2Vec("theory", n_freq=16)
    pts = torch.rand(5, 2) * 2 - 1
    assert grid(pts).shape == (5, 64) and theory(pts).shape == (5, 96)
    assert grid.freqs.max() == pytest.approx(1 / 5e-4, rel=1e-4)
    assert grid.freqs.min() == pytest.approx(0.5, rel=1e-4)
    assert LocationEncoder(32, "theory", 8)(pts).shape == (5, 32)
    with pytest.raises(ValueError, match="gridcell or theory"):
        Space2Vec("nerf")


# --- losses -------------------------------------------------------------------------------
def test_supervised_loss_ignores_pseudo_queries():
    logits = torch.randn(2, 3, 4)
    y = torch.tensor([[1, -1, -1], [2, -1, -1]])
    expected = torch.nn.functional.cross_entropy(logits[:, 0], torch.tensor([1, 2]))
    torch.testing.assert_close(supervised_loss(logits, y, binary=False), expected)
    assert supervised_loss(logits, torch.full((2, 3), -1), binary=False) == 0
    bl = torch.randn(2, 3, 1)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        bl[:, 0, 0], torch.tensor([1.0, 0.0])
    )
    torch.testing.assert_close(
        supervised_loss(bl, torch.tensor([[1, -1, -1], [0, -1, -1]]), binary=True), expected
    )


def test_info_nce_prefers_aligned_pairs():
    torch.manual_seed(3)
    a = torch.randn(8, 5, 16)
    aligned = info_nce(a, a + 0.01 * torch.randn_like(a), 0.1)
    shuffled = info_nce(a, a[torch.randperm(8)], 0.1)
    assert aligned < shuffled


def test_loss_collection_validates_names_and_uses_available_terms():
    with pytest.raises(MisoBenchError, match="vg_nce"):
        MisoLoss(False, {"vg_nce": 0.1})
    loss = MisoLoss(False, {"geo": 1.0, "sat_cov_nce": 0.1, "visual_geo_nce": 0.1})
    out = {
        "logits": torch.randn(4, 3, 7),
        "geo_logits": torch.randn(4, 3, 7),
        "s2_emb": torch.randn(4, 3, 8),
        "cov_emb": torch.randn(4, 3, 8),
    }
    total, parts = loss(out, torch.randint(0, 7, (4, 3)))
    assert set(parts) == {"loss/base", "loss/geo", "loss/sat_cov_nce"}  # no visual/geo embs
    assert torch.isfinite(total)


# --- Satlas weights ---------------------------------------------------------------------------
@pytest.mark.slow
def test_satlas_format_state_dict_loads_with_strict_checks(tmp_path):
    from torchgeo.models import swin_v2_b

    reference = swin_v2_b(weights=None)
    reference.features[0][0] = nn.Conv2d(9, 128, kernel_size=4, stride=4)
    state = {f"backbone.backbone.{k}": v for k, v in reference.state_dict().items()}
    path = tmp_path / "satlas.pth"
    torch.save(state, path)
    encoder = SwinEncoder(9)  # the paper preset's Swin-V2-B
    load_satlas_state_dict(encoder, path)
    torch.testing.assert_close(
        encoder.swin.features[0][0].weight, reference.features[0][0].weight
    )  # the 9-band stem is kept
    small = SwinEncoder(9, embed_dim=48, depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24), window=4)
    with pytest.raises(MisoBenchError, match="not a Satlas Swin-V2 state dict"):
        load_satlas_state_dict(small, path)
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(MisoBenchError, match="cannot read"):
        load_satlas_state_dict(encoder, tmp_path / "junk.pth")


# --- training loop --------------------------------------------------------------------------
def _toy(seed: int):
    torch.manual_seed(seed)
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
        xb, yb = batch
        loss = nn.functional.cross_entropy(module(xb), yb)
        return loss, {}

    def validate(module):
        return float((module(X).argmax(1) == y).float().mean())

    return net, batches, step, validate


def test_checkpoint_resume_gives_the_same_result(tmp_path):
    cfg = TrainConfig(epochs=5, lr=1e-2, patience=10, warmup_frac=0.2)
    net, batches, step, validate = _toy(0)
    fit_module(net, batches, 4, step, validate, cfg)
    straight = {k: v.clone() for k, v in net.state_dict().items()}

    net2, batches, step, validate = _toy(0)

    def stop_after_two(epoch, record):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_module(
            net2, batches, 4, step, validate, cfg, checkpoint_dir=tmp_path, on_epoch=stop_after_two
        )
    net3, batches, step, validate = _toy(123)  # fresh weights: everything comes from disk
    result = fit_module(net3, batches, 4, step, validate, cfg, checkpoint_dir=tmp_path)
    assert result.resumed_from == 2
    for k, v in net3.state_dict().items():
        torch.testing.assert_close(v, straight[k])


def test_a_damaged_checkpoint_is_set_aside_and_the_fit_starts_afresh(tmp_path):
    from miso_bench.errors import MisoBenchWarning

    cfg = TrainConfig(epochs=2, lr=1e-2, patience=10)
    (tmp_path / "last.pt").write_bytes(b"truncated by a killed process")
    net, batches, step, validate = _toy(0)
    with pytest.warns(MisoBenchWarning, match="unreadable checkpoint"):
        result = fit_module(net, batches, 4, step, validate, cfg, checkpoint_dir=tmp_path)
    assert result.resumed_from is None and len(result.history) == 2
    assert (tmp_path / "last.pt.damaged").is_file()
    torch.load(tmp_path / "last.pt", weights_only=True)  # a complete checkpoint now


def _scripted(scores):
    """A validation that returns ``scores`` in turn (one per epoch of one fit)."""
    calls = iter(scores)
    return lambda module: next(calls)


def _interrupted_after_two_epochs(scores, cfg, checkpoint_dir):
    """The toy fit, validated by ``scores``, stopped after its second epoch's checkpoint."""

    def stop_after_two(epoch, record):
        if epoch == 1:
            raise KeyboardInterrupt

    net, batches, step, _ = _toy(0)
    with pytest.raises(KeyboardInterrupt):
        fit_module(
            net,
            batches,
            4,
            step,
            _scripted(scores),
            cfg,
            checkpoint_dir=checkpoint_dir,
            on_epoch=stop_after_two,
        )


@pytest.mark.parametrize("lost", ["missing", "damaged"])
def test_a_resume_without_the_best_epochs_weights_starts_afresh(tmp_path, lost):
    """The best epoch (0) is not the last saved (1): resuming without best.pt once ended on
    the last epoch's weights while reporting epoch 0 as the one kept."""
    from miso_bench.errors import MisoBenchWarning

    cfg = TrainConfig(epochs=4, lr=1e-2, patience=10)
    scores = [0.9, 0.5, 0.4, 0.3]
    net, batches, step, _ = _toy(0)
    straight_result = fit_module(net, batches, 4, step, _scripted(scores), cfg)
    straight = {k: v.clone() for k, v in net.state_dict().items()}
    assert straight_result.best_epoch == 0
    _interrupted_after_two_epochs(scores, cfg, tmp_path)
    if lost == "missing":
        (tmp_path / "best.pt").unlink()
    else:
        (tmp_path / "best.pt").write_bytes(b"truncated")
    net3, batches, step, _ = _toy(0)
    with pytest.warns(MisoBenchWarning) as told:
        result = fit_module(net3, batches, 4, step, _scripted(scores), cfg, checkpoint_dir=tmp_path)
    said = [str(w.message) for w in told]
    assert any("best epoch so far (epoch 1 of the 2 done)" in m for m in said), said
    assert any("starts from the beginning" in m for m in said), said
    assert result.resumed_from is None and result.best_epoch == 0
    for k, v in net3.state_dict().items():
        torch.testing.assert_close(v, straight[k])


def test_a_resume_whose_best_epoch_is_the_last_saved_needs_no_best_file(tmp_path):
    cfg = TrainConfig(epochs=4, lr=1e-2, patience=10)
    scores = [0.1, 0.2, 0.3, 0.4]
    net, batches, step, _ = _toy(0)
    fit_module(net, batches, 4, step, _scripted(scores), cfg)
    straight = {k: v.clone() for k, v in net.state_dict().items()}
    _interrupted_after_two_epochs(scores, cfg, tmp_path)
    (tmp_path / "best.pt").unlink()
    net3, batches, step, _ = _toy(123)
    result = fit_module(net3, batches, 4, step, _scripted(scores[2:]), cfg, checkpoint_dir=tmp_path)
    assert result.resumed_from == 2 and result.best_epoch == 3
    for k, v in net3.state_dict().items():
        torch.testing.assert_close(v, straight[k])


def test_schedule_is_continuous_and_warms_up():
    total, warmup = 100, 10
    factors = [cosine_with_warmup(s, total, warmup, 0.05) for s in range(total)]
    assert factors[0] == pytest.approx(0.1) and max(factors) == pytest.approx(1.0)
    assert max(abs(a - b) for a, b in zip(factors[:-1], factors[1:], strict=True)) < 0.11
    assert factors[-1] == pytest.approx(0.05, abs=0.01)


def test_unlabelled_chips_never_cover_the_test_fold(tiny, pedons, context):
    X, _ = pedons
    xy = X.to_numpy()
    test_xy = xy[::3]
    model = build_model("miso", {"chip_size_px": 32, "preset": "cpu"}, n_classes=7, seed=0)
    model.attach(context.source)
    model._size, model._exclude = 32, test_xy
    centres = model._unlabeled_centres(xy[1::3, 0], xy[1::3, 1], 200, np.random.default_rng(0))
    assert len(centres) > 0
    grid = context.source.grid
    for cx, cy in centres:  # no test pedon inside any unlabelled chip
        r, c = grid.pixel_of(np.array([cx]), np.array([cy]))
        r0, c0 = r[0] - 16, c[0] - 16
        xmin, xmax, ymin, ymax = grid.bounds_of(int(r0), int(c0), 32, 32)
        inside = (
            (test_xy[:, 0] >= xmin)
            & (test_xy[:, 0] < xmax)
            & (test_xy[:, 1] > ymin)
            & (test_xy[:, 1] <= ymax)
        )
        assert not inside.any()


@pytest.mark.slow
def test_miso_runs_under_the_benchmark_runner_and_loads_back(tiny_dir, home):
    from mlflow.tracking import MlflowClient

    from miso_bench.config import resolve_config
    from miso_bench.runner import run_benchmark

    cfg = resolve_config(
        None,
        None,
        [
            f"data.path={tiny_dir}",
            "model.name=miso",
            "task=pf1m",
            "cv.n_splits=2",
            "eval.n_boot=20",
            "model.params.epochs=1",
            "model.params.chip_size_px=32",
            "model.params.batch_size=16",
            f"tracking.uri=sqlite:///{home}/m.db",
        ],
    )
    result = run_benchmark(cfg, announce=lambda m: None)
    assert "test/overall/f1_pos" in result.metrics and "truth/overall/f1_pos" in result.metrics
    assert "cv_centred/f1_pos" in result.metrics  # the centred chip, kept as a second figure
    run = MlflowClient(result.tracking_uri).get_run(result.run_id)
    assert run.data.tags["miso_preset"] == "cpu"
    assert run.data.tags["pretrained_weights"] == "none"
    assert not (home / "checkpoints").exists() or not any((home / "checkpoints").rglob("*.pt"))
    # A fold's saved model, loaded back, reproduces its out-of-fold probabilities: CV scored
    # held-out pedons through the map path (blended lattice windows at their pixels).
    from miso_bench import load_model

    client = MlflowClient(result.tracking_uri)
    oof = pd.read_parquet(client.download_artifacts(result.run_id, "oof_predictions.parquet"))
    rows = oof[oof["fold"] == 1]
    predictor = load_model(result.run_id, fold=1, tracking_uri=result.tracking_uri)
    columns = [c for c in oof.columns if c.startswith("p/")]
    np.testing.assert_allclose(
        predictor.predict_points(tiny_dir, rows["x"], rows["y"]),
        rows[columns].to_numpy(),
        atol=1e-5,
    )
    final = load_model(result.run_id, tracking_uri=result.tracking_uri)
    probs = final.decode_window(
        np.zeros((19, 32, 32), np.float32), np.ones((19, 32, 32), bool), (0, 320, 0, 320)
    )
    assert probs.shape == (2, 32, 32)


# --- regressions: each of these gave a wrong result without an error ---------------------
def _fit_small(context, pedons, epochs=1, val=True, **params):
    X, y = pedons
    model = build_model("miso", {**SMALL, "epochs": epochs, **params}, n_classes=7, seed=0)
    if val:
        model.fit(X.iloc[:24], y[:24], X.iloc[24:32], y[24:32], context=context)
    else:
        model.fit(X.iloc[:24], y[:24], context=context)
    return model


def test_a_nested_override_merges_with_the_default_auxiliary_losses(context, pedons):
    """`--set model.params.aux.visual_geo_nce=0.2` keeps the other auxiliary losses on."""
    from miso_bench.config import resolve_config

    cfg = resolve_config(None, None, ["model.name=miso", "model.params.aux.visual_geo_nce=0.2"])
    model = build_model("miso", {**cfg["model"]["params"], **SMALL}, n_classes=7, seed=0)
    assert merged_aux(model.aux) == {"geo": 1.0, "sat_cov_nce": 0.1, "visual_geo_nce": 0.2}
    X, y = pedons
    model.fit(X.iloc[:16], y[:16], context=context)
    assert {"loss/geo", "loss/sat_cov_nce", "loss/visual_geo_nce"} <= set(model.history_[0])
    # A variant's own switches survive an override of another key.
    ablation = build_model("miso_no_contrastive", {"aux": {"visual_geo_nce": 0.2}}, 7, 0)
    assert merged_aux(ablation.aux) == {"geo": 1.0, "sat_cov_nce": 0.0, "visual_geo_nce": 0.2}


def test_without_validation_the_last_epoch_is_kept(context, pedons, tmp_path):
    ctx = FoldContext(source=context.source, normalizer=context.normalizer, checkpoint_dir=tmp_path)
    model = _fit_small(ctx, pedons, epochs=3, val=False)
    assert model.best_epoch_ == 2 and len(model.history_) == 3
    assert all("val/score" not in r for r in model.history_)
    last = torch.load(tmp_path / "last.pt", weights_only=True)["model"]
    for k, v in model.net_.state_dict().items():
        torch.testing.assert_close(v, last[k])


def test_nan_nodata_never_reaches_training_batches(tiny_nan_dir, tiny):
    """Sentinel-2 with `nodata: .nan`: training sees the same inputs as with integer no-data."""
    nan = load_manifest(tiny_nan_dir)
    kept, _ = PedonDataset(nan).labelled("tax_order")
    X = pd.DataFrame({"coord_x": kept["x"].to_numpy(), "coord_y": kept["y"].to_numpy()})
    y = kept["target"].to_numpy()
    model = build_model("miso", SMALL, n_classes=7, seed=0)
    model.fit(X.iloc[:24], y[:24], X.iloc[24:32], y[24:32], context=make_context(nan))
    for record in model.history_:
        assert all(np.isfinite(v) for v in record.values()), record
    assert all(torch.isfinite(p).all() for p in model.net_.parameters())
    reference = build_model("miso", SMALL, n_classes=7, seed=0)
    reference.fit(X.iloc[:24], y[:24], X.iloc[24:32], y[24:32], context=make_context(tiny))
    assert model.history_[0]["loss/total"] == pytest.approx(reference.history_[0]["loss/total"])


def test_location_normaliser_comes_from_the_dataset_extent(context, pedons):
    model = _fit_small(context, pedons)
    assert model.location_norm_ == LocationNormalizer.from_extent(context.source.extent(), 1.0)
    # The finest location wavelength is 925 m whatever the extent (as the reference's on
    # Alaska), not a fixed share of the extent.
    assert model.config_["min_scale"] == pytest.approx(925.0 / model.location_norm_.half_span_m)


def test_metres_per_unit_of_a_geographic_crs():
    from miso_bench.spatial import metres_per_unit

    assert metres_per_unit("EPSG:3338", (0.0, 0.0, 1e5, 1e5)) == pytest.approx(1.0, rel=1e-3)
    # A degree near 65 N: ~111 km of latitude, ~47 km of longitude; about their mean.
    per_degree = metres_per_unit("EPSG:4326", (-150.0, 64.5, -149.0, 65.5))
    assert 70_000 < per_degree < 90_000


def test_saved_model_predicts_the_same_and_decodes_windows(context, pedons, tmp_path):
    X, _ = pedons
    model = _fit_small(context, pedons)
    save_fitted(model, tmp_path / "m", {"task": "tax_order"})
    weights = torch.load(tmp_path / "m" / "weights.pt", weights_only=True)  # plain tensors
    assert set(weights) == set(model.net_.state_dict())
    loaded, record = load_fitted(tmp_path / "m")
    assert record["task"] == "tax_order" and record["kind"] == "chips"
    loaded.attach(context.source)
    np.testing.assert_allclose(
        loaded.predict_proba(X.iloc[40:50]), model.predict_proba(X.iloc[40:50]), atol=1e-5
    )
    # decode_window decodes one window; the map path blends the lattice's windows.
    grid = context.source.grid
    r, c = grid.pixel_of(X["coord_x"].to_numpy()[:1], X["coord_y"].to_numpy()[:1])
    r0, c0 = int(r[0] // 32 * 32), int(c[0] // 32 * 32)
    image, valid = context.source.window(r0, c0, 32, 32)
    probs = loaded.decode_window(image, valid, grid.bounds_of(r0, c0, 32, 32))
    assert probs.shape == (7, 32, 32)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    rows, cols = np.array([3, 17, 30]), np.array([5, 0, 31])
    xmin, _, _, ymax = grid.bounds_of(r0, c0, 32, 32)
    pts = pd.DataFrame(
        {"coord_x": xmin + (cols + 0.5) * grid.res, "coord_y": ymax - (rows + 0.5) * grid.res}
    )
    region, _ = loaded.decode_region(r0, c0, 32, 32)
    np.testing.assert_allclose(region.sum(0), 1.0, atol=1e-5)
    np.testing.assert_allclose(loaded.predict_points(pts), region[:, rows, cols].T, atol=1e-5)
    with pytest.raises(MisoBenchError, match="bands"):
        loaded.decode_window(image[:5], valid[:5], grid.bounds_of(r0, c0, 32, 32))
    # Another pixel size would show another area in a chip: refused.
    from miso_bench.data.grid import GridSpec

    loaded.grid_ = GridSpec(grid.x0, grid.y0, 2 * grid.res)
    with pytest.raises(MisoBenchError, match="grid"):
        loaded.attach(context.source)


def test_fit_without_a_context_is_a_clear_error(pedons):
    X, y = pedons
    with pytest.raises(MisoBenchError, match="context"):
        build_model("miso", SMALL, 7, 0).fit(X.iloc[:8], y[:8])


def test_categorical_covariates_enter_one_hot_and_round_trip(tiny_dir, tmp_path):
    """A class-code band (land cover) becomes one-hot channels, not a scaled number; its codes
    are saved with the model."""
    import shutil

    import rasterio

    from tests.helpers import edit_manifest

    copy = tmp_path / "tiny"
    shutil.copytree(tiny_dir, copy)
    (copy / "landcover").mkdir()
    for path in sorted((copy / "sentinel2").glob("*.tif")):
        with rasterio.open(path) as src:
            profile = {**src.profile, "count": 1, "dtype": "uint8", "nodata": 0}
            red = src.read(1).astype(np.float64)
        codes = np.choose((red > np.percentile(red, 33)).astype(int) + (red > 1500), [3, 7, 11])
        with rasterio.open(copy / "landcover" / path.name, "w", **profile) as dst:
            dst.write(codes[None].astype(np.uint8))

    def add(d):
        d["modalities"]["landcover"] = {
            "folder": "landcover",
            "bands": ["lc"],
            "nodata": 0,
            "dtype": "uint8",
            "categorical": ["lc"],
        }

    edit_manifest(copy, add)
    manifest = load_manifest(copy)
    ctx = make_context(manifest)
    kept, _ = PedonDataset(manifest).labelled("pf1m")
    X = pd.DataFrame(
        {"coord_x": kept["x"].to_numpy(), "coord_y": kept["y"].to_numpy()}, index=kept["id"]
    )
    model = build_model("miso", SMALL, n_classes=2, seed=0)
    model.fit(X.iloc[:24], kept["target"].to_numpy()[:24], context=ctx)
    assert model.cat_codes_ == {"lc": [3.0, 7.0, 11.0]}
    n_cont = len(model._cov_idx)
    assert model.net_.cfg.cov_bands == n_cont + 3
    image, valid = ctx.source.window_at(X["coord_x"].iloc[0], X["coord_y"].iloc[0], 32)[:2]
    hot = model._one_hot(torch.from_numpy(image)[None], torch.from_numpy(valid)[None])
    assert hot is not None and hot.shape == (1, 3, 32, 32)
    assert torch.all(hot.sum(1) <= 1)  # one code per pixel (none on no-data)
    save_fitted(model, tmp_path / "m", {"task": "pf1m"})
    loaded, _ = load_fitted(tmp_path / "m")
    loaded.attach(ctx.source)
    np.testing.assert_allclose(
        loaded.predict_proba(X.iloc[30:35]), model.predict_proba(X.iloc[30:35]), atol=1e-5
    )
