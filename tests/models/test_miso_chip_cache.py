"""MISO's padded-chip cache: the labelled chips read and normalised once per fit, each epoch's
jittered chip a slice. It must give exactly what reading and normalising each chip gives."""

import numpy as np
import pandas as pd
import pytest
import torch

from miso_bench.data.manifest import load_manifest
from miso_bench.data.pedons import PedonDataset
from miso_bench.errors import MisoBenchError
from miso_bench.models import build_model
from miso_bench.models.miso.estimator import _PaddedChips
from tests.models.test_miso import SMALL, make_context


def _points(manifest, n=20):
    """Pedons, and points in the corner pixels of the extent (chips half outside it)."""
    kept, _ = PedonDataset(manifest).labelled("tax_order")
    x, y = kept["x"].to_numpy()[:n], kept["y"].to_numpy()[:n]
    context = make_context(manifest)
    xmin, ymin, xmax, ymax = context.source.extent()
    cx = np.array([xmin + 1, xmax - 1, xmin + 1, xmax - 1])
    cy = np.array([ymin + 1, ymin + 1, ymax - 1, ymax - 1])
    return context, kept, np.concatenate([x, cx]), np.concatenate([y, cy])


def _trained(context, kept, **params):
    X = pd.DataFrame({"coord_x": kept["x"].to_numpy(), "coord_y": kept["y"].to_numpy()})
    y = kept["target"].to_numpy()
    model = build_model("miso", {**SMALL, **params}, n_classes=7, seed=0)
    model.fit(X.iloc[:24], y[:24], X.iloc[24:32], y[24:32], context=context)
    return model


@pytest.mark.parametrize("which", ["tiny", "tiny_nan"])
def test_a_slice_of_the_padded_chip_is_the_chip_read_and_normalised(which, tiny_dir, tiny_nan_dir):
    """Bit for bit: every pedon, every jitter of three epochs, chips half outside the rasters,
    integer and NaN no-data."""
    manifest = load_manifest(tiny_dir if which == "tiny" else tiny_nan_dir)
    context, kept, x, y = _points(manifest)
    model = _trained(context, kept)
    size = model._size
    jitter = size // 4
    ds = model._chip_dataset(x, y, jitter, seed=3)
    padded = _PaddedChips.build(model, ds, jitter, budget_mb=1024)
    assert padded is not None and padded.s2 is not None and padded.cov is not None
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            r0, c0, _, _ = ds.geometry(i)
            image, valid = context.source.window(r0, c0, size, size)
            s2, cov = model._inputs(torch.from_numpy(image)[None], torch.from_numpy(valid)[None])
            s2_cached, cov_cached = padded.chip(i, r0, c0)
            torch.testing.assert_close(s2_cached, s2[0], rtol=0, atol=0)
            torch.testing.assert_close(cov_cached, cov[0], rtol=0, atol=0)
    # The corner chips reach outside every raster: zeros there, as when read.
    r0, c0, _, _ = ds.geometry(len(ds) - 1)
    assert not context.source.window(r0, c0, size, size)[1].all()


def test_a_fit_with_the_cache_equals_one_without(tiny):
    """The same history and weights, to the bit, with the cache, without it (chip_cache_mb=0)
    and when the chips do not fit the budget."""
    context, kept, _, _ = _points(tiny)
    runs = [_trained(context, kept, epochs=2, chip_cache_mb=mb) for mb in (1024, 0, 0.01)]
    for other in runs[1:]:
        for a, b in zip(runs[0].history_, other.history_, strict=True):
            assert a == b
        for (name, p), q in zip(
            runs[0].net_.state_dict().items(), other.net_.state_dict().values(), strict=True
        ):
            assert torch.equal(p, q), name
    assert [r.fit_report()["chip_cache_mb"] > 0 for r in runs] == [True, False, False]


@pytest.mark.parametrize("bad", [-1, float("nan"), "lots", True])
def test_a_bad_cache_budget_is_a_clear_error(bad, tiny):
    context, kept, _, _ = _points(tiny)
    with pytest.raises(MisoBenchError, match="chip_cache_mb="):
        _trained(context, kept, chip_cache_mb=bad)
