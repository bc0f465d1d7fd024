"""Writes small files in exactly the reference study's formats (for import tests).

- ``points.json``: a JSON list of AKSDB-style records (``id``, ``lon``/``lat``,
  ``x_3338``/``y_3338``, ``grid_id``, ``x_pixel``/``y_pixel``, ``tax_order`` as a string, a
  list or NaN, ``aksdb_pf1m_bin`` as 0/1 or a list, ``aksdb_othick_cum_best``, ``peat_level``).
- ``s2/{grid_id}.h5`` and ``cov/{grid_id}.h5``: dataset ``data``, H x W x C (channels last),
  int16 Sentinel-2 with -32767 no-data and float32 covariates with -3e38 no-data, on the AK050
  grid (only ``size`` pixels of each 5000-pixel tile are written: the importer reads the shape).
- ``kfold5_split_train_test_indices.json`` and ``uniform_split_train_test_indices.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
from pyproj import Transformer

from miso_bench.data.tiles import tile_bounds

TILES = ("AK050H36V09", "AK050H37V09")
ORDERS = ["Andisols", "Entisols", "Gelisols", "Histosols", "Inceptisols", "Mollisols", "Spodosols"]


def write_reference_layout(root: Path, size: int = 64, n_points: int = 80, seed: int = 0) -> dict:
    """Write the layout; returns the paths and the records written."""
    rng = np.random.default_rng(seed)
    (root / "s2").mkdir(parents=True, exist_ok=True)
    (root / "cov").mkdir(parents=True, exist_ok=True)
    arrays = {}
    for gid in TILES:
        s2 = rng.integers(100, 4000, size=(size, size, 9)).astype(np.int16)
        s2[:4, :4, :] = -32767  # a corner of no-data
        cov = rng.normal(0, 50, size=(size, size, 10)).astype(np.float32)
        cov[-3:, -3:, :] = -3e38
        with h5py.File(root / "s2" / f"{gid}.h5", "w") as f:
            f.create_dataset("data", data=s2, chunks=(16, 16, 9))
        with h5py.File(root / "cov" / f"{gid}.h5", "w") as f:
            f.create_dataset("data", data=cov, chunks=(16, 16, 10))
        arrays[gid] = (s2, cov)
    to_ll = Transformer.from_crs("EPSG:3338", "EPSG:4326", always_xy=True)
    records = []
    for i in range(n_points):
        gid = TILES[i % 2]
        xp, yp = int(rng.integers(5, size - 5)), int(rng.integers(5, size - 5))
        xmin, _, _, ymax = tile_bounds(gid)
        x, y = xmin + 10 * xp + 5, ymax - 10 * yp - 5
        lon, lat = to_ll.transform(x, y)
        tax: object = ORDERS[i % 7]
        pf: object = i % 2
        if i % 10 == 3:
            tax = [ORDERS[0], ORDERS[0]]  # agreeing observations
        if i % 10 == 4:
            tax = [ORDERS[1], ORDERS[2]]  # disagreeing
            pf = [1, 1]
        if i % 10 == 5:
            tax = float("nan")
            pf = [0, 1]
        if i % 10 == 6:
            tax = "Alfisols"  # outside the seven orders
        rec = {
            "id": i * 3,  # ids with gaps, as in the reference
            "aksdb_dts": "2003-07-16",
            "lon": lon,
            "lat": lat,
            "x_3338": x,
            "y_3338": y,
            "grid_id": gid,
            "x_pixel": float(xp),
            "y_pixel": float(yp),
            "tax_order": tax,
            "aksdb_pf1m_bin": pf,
            "aksdb_othick_cum_best": float(rng.uniform(0, 40)),
            "peat_level": ["no", "shallow", "deep"][i % 3],
        }
        if i % 10 == 7:  # only the tile frame: coordinates from grid_id and pixels
            rec.pop("x_3338")
            rec.pop("y_3338")
        records.append(rec)
    records.append({"id": 9999, "tax_order": "Gelisols"})  # no coordinates at all
    (root / "points.json").write_text(json.dumps(records))  # NaN as in the reference files
    ids = [r["id"] for r in records[:-1]]
    folds = {
        f"fold_{k}": {
            "train": sorted(i for j, i in enumerate(ids) if j % 5 != k),
            "test": sorted(i for j, i in enumerate(ids) if j % 5 == k),
        }
        for k in range(5)
    }
    (root / "kfold5_split_train_test_indices.json").write_text(json.dumps(folds))
    uniform = {"train": ids[: len(ids) * 4 // 5], "test": ids[len(ids) * 4 // 5 :]}
    (root / "uniform_split_train_test_indices.json").write_text(json.dumps(uniform))
    return {"root": root, "records": records, "arrays": arrays}
