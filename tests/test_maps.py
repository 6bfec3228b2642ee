"""Maps draw from the Natural Earth shapes vendored in the package: no download is ever attempted."""
from __future__ import annotations
import urllib.request, warnings
from pathlib import Path

import numpy as np
import pytest
import matplotlib.pyplot as plt
import cartopy
import cartopy.io
from cartopy.io import DownloadWarning, shapereader

import wm_nb
from wm_nb import maps
from wm_nb.walks import neighbour_graph, random_walks


class DownloadAttempted(RuntimeError): pass


def _refuse(*args, **kwargs):
    raise DownloadAttempted(f"network access attempted: {args[:1]}")


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """cartopy with an empty `data_dir`, downloads turned into errors (warning -> error, urlopen -> raise) and the
    cached land feature dropped so that the shapefile is looked up again under these conditions."""
    data_dir = tmp_path/'cartopy_data'
    data_dir.mkdir()
    monkeypatch.setitem(cartopy.config, 'data_dir', data_dir)
    monkeypatch.setattr(urllib.request, 'urlopen', _refuse)
    monkeypatch.setattr(cartopy.io, 'urlopen', _refuse)   # cartopy.io does `from urllib.request import urlopen`
    monkeypatch.setattr(maps, '_LAND', None)
    with warnings.catch_warnings():
        warnings.simplefilter('error', DownloadWarning)
        yield data_dir
    plt.close('all')


def test_vendored_shapefile_inside_package(offline):
    pkg = Path(wm_nb.__file__).resolve().parent
    assert maps.shapes_dir().resolve() == pkg/'data'
    assert Path(cartopy.config['pre_existing_data_dir']).resolve() == pkg/'data'
    shp = Path(shapereader.natural_earth(resolution='110m', category='cultural', name='admin_0_countries')).resolve()
    assert shp.is_relative_to(pkg), f"{shp} is not inside the installed package {pkg}"
    assert shp.name == 'ne_110m_admin_0_countries.shp'
    for ext in ('.shp', '.shx', '.dbf', '.prj'): assert shp.with_suffix(ext).is_file()
    geoms = list(shapereader.Reader(str(shp)).geometries())
    assert len(geoms) > 150     # ~177 countries in the 110m admin-0 file
    assert list(offline.iterdir()) == []


def test_plots_draw_without_download(offline, default_cities):
    c = default_cities
    fig, ax = maps.plot_cities(c, title='cities')
    fig.canvas.draw()
    # the land polygons are drawn, and every city is scattered
    assert len(ax.collections) >= 2
    assert sum(len(col.get_offsets()) for col in ax.collections) >= len(c)
    w, l = random_walks(neighbour_graph(c, 200), 100, 32, seed=0)
    fig2, ax2 = maps.plot_walks(c, w, max_walks=10)
    fig2.canvas.draw()
    assert len(ax2.lines) == 2*10    # a line and a start marker per walk
    fig3, _ = maps.plot_walks_zoom(c, w[int(np.argmax(l))])
    fig3.canvas.draw()
    assert maps._LAND is not None            # the land feature really was (re)built under the offline conditions
    assert list(offline.iterdir()) == [], "cartopy wrote into its data_dir"


def test_trap_catches_a_download(tmp_path, offline, monkeypatch, default_cities):
    "Without the vendored shapes the same drawing tries to download, and the test's trap stops it."
    empty = tmp_path/'no_shapes'
    empty.mkdir()
    monkeypatch.setitem(cartopy.config, 'pre_existing_data_dir', empty)
    with pytest.raises((DownloadWarning, DownloadAttempted)):
        fig, _ = maps.plot_cities(default_cities)
        fig.canvas.draw()
