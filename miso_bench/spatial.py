"""Small spatial helpers shared by cross-validation, evaluation and the data layer.

Every distance in miso-bench is in metres. A dataset may come in any CRS: coordinates stay in
the dataset's CRS for reading its rasters, and :func:`metric_coordinates` gives the same points
in a CRS whose units are metres (the dataset's own when it is projected in metres, otherwise a
projection chosen for the data) for block sizes, buffers, clustering and distances.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

__all__ = [
    "OUTSIDE_REGION",
    "MetricFrame",
    "block_ids",
    "is_metric_crs",
    "longitude_span",
    "metres_per_unit",
    "metric_coordinates",
    "metric_crs_for",
    "nearest_distance",
]


#: Region name of points that fall in no polygon of a region layer: reported as such, never
#: the "worst region" and never a test fold of leave-one-region-out CV.
OUTSIDE_REGION = "outside"


def block_ids(x: np.ndarray, y: np.ndarray, block_size_m: float) -> np.ndarray:
    """Integer id (0..n_blocks-1) of the square block of side ``block_size_m`` holding each point.

    Blocks are aligned on multiples of ``block_size_m``; ``x``/``y`` are metric coordinates
    (see :func:`metric_coordinates`).
    """
    if block_size_m <= 0:
        raise ValueError(f"block_size_m must be positive, got {block_size_m}")
    bx = np.floor(np.asarray(x, dtype=np.float64) / block_size_m).astype(np.int64)
    by = np.floor(np.asarray(y, dtype=np.float64) / block_size_m).astype(np.int64)
    _, ids = np.unique(np.stack([bx, by], axis=1), axis=0, return_inverse=True)
    return ids.ravel()


def nearest_distance(
    query: np.ndarray, reference: np.ndarray, exclude_self: bool = False
) -> np.ndarray:
    """Distance from each query point to its nearest reference point.

    Args:
        query: ``(n, 2)`` coordinates.
        reference: ``(m, 2)`` coordinates.
        exclude_self: query and reference are the same set; skip the zero self-distance.
    """
    if len(reference) == 0 or len(query) == 0:
        return np.full(len(query), np.inf)
    tree = cKDTree(reference)
    k = 2 if exclude_self else 1
    if exclude_self and len(reference) < 2:
        return np.full(len(query), np.inf)
    dist, _ = tree.query(query, k=k)
    return dist[:, 1] if exclude_self else dist


def is_metric_crs(crs: str) -> bool:
    """Projected, in metres, and not a Mercator projection (whose scale grows with latitude:
    a Web Mercator "kilometre" in Alaska is about 0.4 km on the ground)."""
    from pyproj import CRS

    c = CRS.from_user_input(crs)
    if not c.is_projected:
        return False
    units = {a.unit_name for a in c.axis_info[:2]}
    if units != {"metre"}:
        return False
    method = (c.coordinate_operation.method_name if c.coordinate_operation else "") or ""
    return not ("Mercator" in method and "Transverse" not in method)


def metric_crs_for(crs: str, x: np.ndarray, y: np.ndarray) -> str:
    """A CRS in metres for distances between points given in ``crs``.

    ``crs`` itself when :func:`is_metric_crs`; otherwise the WGS 84 UTM zone of the points'
    centre when they span at most 6 degrees of longitude, else a Lambert azimuthal equal-area
    projection centred on them (its distortion stays small over a state-sized area).
    """
    if is_metric_crs(crs):
        return crs
    from pyproj import Transformer

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
        raise ValueError("no finite coordinate to choose a metric CRS from")
    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(x[ok], y[ok])
    lon, lat = np.asarray(lon), np.asarray(lat)
    west, east = longitude_span(lon)
    south, north = float(lat.min()), float(lat.max())
    lon0 = float(_wrap((west + east) / 2))
    if east - west <= 6.0 and south >= -80.0 and north <= 84.0:
        from pyproj.aoi import AreaOfInterest
        from pyproj.database import query_utm_crs_info

        found = query_utm_crs_info(
            datum_name="WGS 84",
            area_of_interest=AreaOfInterest(lon0, (south + north) / 2, lon0, (south + north) / 2),
        )
        if found:
            return f"{found[0].auth_name}:{found[0].code}"
    lat0 = (south + north) / 2
    return f"+proj=laea +lat_0={lat0:.4f} +lon_0={lon0:.4f} +datum=WGS84 +units=m +no_defs"


def _wrap(lon: Any) -> Any:
    """Longitudes (a number or an array) in [-180, 180)."""
    return (lon + 180.0) % 360.0 - 180.0


def longitude_span(lon: np.ndarray) -> tuple[float, float]:
    """The shortest arc of longitude holding every point, as ``(west, east)`` with
    ``east - west`` its width in degrees (``east`` may pass 180: points on both sides of the
    antimeridian, such as the western Aleutians, span a few degrees, not 359)."""
    s = np.sort(_wrap(np.asarray(lon, dtype=np.float64)))
    gaps = np.diff(np.concatenate([s, [s[0] + 360.0]]))
    k = int(np.argmax(gaps))  # the widest arc without points follows s[k]
    west = float(s[(k + 1) % len(s)])
    east = float(s[k])
    return west, east + 360.0 if east < west else east


@dataclass(frozen=True)
class MetricFrame:
    """Where distances are measured: the source CRS and the metric CRS chosen for it.

    Attributes:
        crs: the dataset's CRS (coordinates given to :meth:`to_metric`).
        metric_crs: a CRS in metres (equal to ``crs`` when that is already metric).
    """

    crs: str
    metric_crs: str

    @property
    def reprojects(self) -> bool:
        """Whether distances are measured in another CRS than the data's."""
        return self.crs != self.metric_crs

    def to_metric(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """``(n, 2)`` metric coordinates of points given in :attr:`crs`."""
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if not self.reprojects:
            return np.column_stack([x, y])
        from pyproj import Transformer

        mx, my = Transformer.from_crs(self.crs, self.metric_crs, always_xy=True).transform(x, y)
        return np.column_stack([np.asarray(mx), np.asarray(my)])


def metric_coordinates(crs: str, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, MetricFrame]:
    """Points in a metric CRS chosen for them (see :func:`metric_crs_for`) and that frame."""
    frame = MetricFrame(crs, metric_crs_for(crs, x, y))
    return frame.to_metric(x, y), frame


def metres_per_unit(crs: str, extent: tuple[float, float, float, float]) -> float:
    """About how many metres one unit of ``crs`` spans inside ``extent`` (xmin, ymin, xmax,
    ymax): 1 for a CRS in metres, ~111,000 for degrees of latitude. Measured in the metric CRS
    chosen for the extent, along both axes through its centre, and averaged."""
    xmin, ymin, xmax, ymax = extent
    cx, cy = (xmin + xmax) / 2, (ymin + ymax) / 2
    half = max(xmax - xmin, ymax - ymin) / 4
    xs = np.array([cx - half, cx + half, cx, cx])
    ys = np.array([cy, cy, cy - half, cy + half])
    frame = MetricFrame(crs, metric_crs_for(crs, xs, ys))
    m = frame.to_metric(xs, ys)
    along_x = float(np.hypot(*(m[1] - m[0])))
    along_y = float(np.hypot(*(m[3] - m[2])))
    return (along_x + along_y) / 2 / (2 * half)
