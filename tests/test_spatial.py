"""Where distances are measured: the metric CRS chosen for points in a geographic CRS."""

import numpy as np
import pytest
from pyproj import Geod

from miso_bench.spatial import metric_coordinates


def test_longitude_span_crosses_the_antimeridian():
    from miso_bench.spatial import longitude_span

    assert longitude_span(np.array([172.0, 179.5, -179.0, -175.0])) == (172.0, 185.0)
    assert longitude_span(np.array([-170.0, -141.0, -130.0])) == (-170.0, -130.0)
    assert longitude_span(np.array([10.0])) == (10.0, 10.0)


@pytest.mark.parametrize(
    "lons",
    [
        [172.5, 175.0, 178.0, 179.9, -179.9, -177.0, -174.0],  # the Aleutians, across 180
        [-165.0, -160.0, -155.0, -150.0, -145.0, -141.0],  # mainland Alaska
    ],
)
def test_distances_in_lon_lat_are_ground_distances(lons):
    """Points on both sides of 180 once put the equal-area projection's centre at 0 degrees,
    the far side of the globe, and read 1 km as 0.8 to 1.3 km depending on direction."""
    lon = np.array(lons)
    lat = np.linspace(51.5, 53.0, len(lon))
    xy, frame = metric_coordinates("EPSG:4326", lon, lat)
    geod = Geod(ellps="WGS84")
    for i in range(len(lon) - 1):
        ground = geod.inv(lon[i], lat[i], lon[i + 1], lat[i + 1])[2]
        measured = float(np.hypot(*(xy[i + 1] - xy[i])))
        assert measured == pytest.approx(ground, rel=0.01), frame.metric_crs
