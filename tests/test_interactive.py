"""The interactive error map (`wm_nb.interactive`) read as HTML, without a browser: every city of the table is in the
page's data, the hover strings of a city equal what this test computes from the table itself, no script, stylesheet or
image comes from another host, nothing is fetched while the map is made, and `save_interactive_map` never overwrites a
file wm_nb did not write. tests/test_docs.py hovers the same map in Chromium on the docs site."""
from __future__ import annotations
import base64, gzip, html, json, re, socket, warnings
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from wm_nb.core import WMError
from wm_nb.interactive import interactive_error_map, save_interactive_map

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT/'nbs'/'10a_interactive.ipynb'


def samples_csv() -> Path:
    "The table the notebook shows: the path its `SAMPLES_CSV = Path('...')` cell names, relative to nbs/."
    src = '\n'.join(''.join(c['source']) for c in json.loads(NOTEBOOK.read_text())['cells'])
    m = re.search(r"^SAMPLES_CSV\s*=\s*Path\(['\"]([^'\"]+)['\"]\)", src, flags=re.M)
    assert m, f"{NOTEBOOK.name} has no `SAMPLES_CSV = Path('...')` line"
    return ROOT/'nbs'/m[1]


def page_documents(page: str) -> list[dict]:
    "The Bokeh documents embedded in `page` (its `application/json` script blocks)."
    blocks = re.findall(r'<script type="application/json"[^>]*>(.*?)</script>', page, flags=re.S)
    return [d for b in blocks for d in json.loads(html.unescape(b)).values()]


def decode(v):
    "A value of Bokeh's serialised form as a Python list or numpy array (arrays are base64 bytes, gzipped when large)."
    if isinstance(v, dict) and v.get('type') == 'ndarray':
        a = v['array']
        if isinstance(a, dict) and a.get('type') == 'bytes':
            raw = base64.b64decode(a['data'])
            if raw[:2] == b'\x1f\x8b': raw = gzip.decompress(raw)
            return np.frombuffer(raw, dtype=np.dtype(v['dtype']).newbyteorder('<' if v.get('order', 'little') == 'little' else '>'))
        return np.asarray(a, dtype=v['dtype'])
    return v


def objects(node, name: str):
    "Every serialised Bokeh object of type `name` inside `node`."
    if isinstance(node, dict):
        if node.get('type') == 'object' and node.get('name') == name: yield node
        for v in node.values(): yield from objects(v, name)
    elif isinstance(node, list):
        for v in node: yield from objects(v, name)


def entries(m: dict) -> dict:
    "A serialised Bokeh map as a dict."
    return {k: v for k, v in m['entries']} if isinstance(m, dict) and m.get('type') == 'map' else m


def city_data(page: str) -> dict:
    "The columns of the data source the map's city markers are drawn from (the one with a `name` column)."
    found = [entries(o['attributes']['data']) for d in page_documents(page) for o in objects(d, 'ColumnDataSource')]
    found = [{k: decode(v) for k, v in f.items()} for f in found if 'name' in f]
    assert len(found) == 1, f"expected one data source with city names, found {len(found)}"
    return found[0]


class Resources(HTMLParser):
    "Every URL an HTML page would load: script and image sources, stylesheets and other links, frames, objects."
    def __init__(self):
        super().__init__(); self.urls, self.scripts = [], 0
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == 'script': self.scripts += 1
        for k in ('src', 'href', 'data'):
            if a.get(k) and tag in ('script', 'img', 'link', 'iframe', 'embed', 'object', 'source', 'audio', 'video'): self.urls.append((tag, a[k]))


@pytest.fixture(scope='module')
def table() -> pd.DataFrame:
    return pd.read_csv(samples_csv())


@pytest.fixture(scope='module')
def pages(table):
    "The notebook's map as a fragment and as a standalone page, made with every network connection refused."
    def refuse(*a, **k): raise OSError(f"network access while making the map: {a[:2]}")
    mp = pytest.MonkeyPatch()
    for mod, fn in [(socket.socket, 'connect'), (socket.socket, 'connect_ex'), (socket, 'create_connection'), (socket, 'getaddrinfo')]:
        mp.setattr(mod, fn, refuse)
    try:
        with warnings.catch_warnings():
            from cartopy.io import DownloadWarning
            warnings.simplefilter('error', DownloadWarning)
            with pytest.raises(OSError, match='network access'): socket.create_connection(('127.0.0.1', 9))   # the block is on
            m = interactive_error_map(table)
            return m.to_html(full=False), m.to_html(full=True)
    finally: mp.undo()


def test_table_is_a_loc_table(table):
    assert {'city', 'name', 'lat', 'lon', 'completion', 'pred_lat', 'pred_lon', 'error_km', 'centroid_error_km'} <= set(table)
    assert len(table) >= 1000, f"{samples_csv()} has only {len(table)} rows"


@pytest.mark.parametrize('which', [0, 1])
def test_every_city_is_in_the_page(table, pages, which):
    d = city_data(pages[which])
    assert len(d['name']) == len(table)
    order = np.argsort(d['city'])
    assert np.array_equal(np.asarray(d['city'])[order], np.sort(table.city.to_numpy()))
    t = table.set_index('city').loc[np.asarray(d['city'])]
    assert list(d['name']) == t.name.tolist()
    np.testing.assert_allclose(d['lat'], t.lat, atol=1e-4)
    np.testing.assert_allclose(d['lon'], t.lon, atol=1e-4)


def expected_hover(row) -> dict:
    "What a hover over `row`'s city must show, computed here from the table."
    ok = np.isfinite(row.pred_lat) and np.isfinite(row.pred_lon)
    wrote = '' if pd.isna(row.completion) else str(row.completion)
    return dict(name=str(row['name']), truth='%.2f, %.2f' % (row.lat, row.lon),
                prediction='%.2f, %.2f' % (row.pred_lat, row.pred_lon) if ok else "none (wrote '%s')" % wrote,
                error='{:,.1f} km'.format(row.error_km) if np.isfinite(row.error_km) else 'n/a',
                centroid='{:,.0f} km'.format(row.centroid_error_km))


def test_hover_shows_a_citys_values(table, pages):
    d = city_data(pages[0])
    err = table.error_km.to_numpy()
    unparsed = np.flatnonzero(~np.isfinite(err))[:1]      # a city whose answer did not parse, where the run has one (the notebook checks that case too)
    picks = {int(np.nanargmax(err)), int(np.nanargmin(err)), *map(int, unparsed),
             int(np.argmin(np.abs(table.lon.to_numpy() - 179))), 0, len(table) - 1}
    where = {int(c): k for k, c in enumerate(d['city'])}
    for i in sorted(picks):
        row = table.iloc[i]
        k = where[int(row.city)]
        shown = {f: d[f][k] for f in ('name', 'truth', 'prediction', 'error', 'centroid')}
        assert shown == expected_hover(row), (row.to_dict(), shown)
    hover = [o for doc in page_documents(pages[0]) for o in objects(doc, 'HoverTool')]
    assert len(hover) == 1
    tips = hover[0]['attributes']['tooltips']
    assert [t[0] for t in tips] == ['city', 'truth', 'prediction', 'error', 'centroid floor']
    assert [re.findall(r'@(\w+)', t[1]) for t in tips] == [['name', 'city'], ['truth'], ['prediction'], ['error'], ['centroid']]


def test_an_answer_across_the_antimeridian_is_drawn_the_short_way():
    t = pd.DataFrame(dict(city=[0, 1], name=['East', 'West'], lat=[-17.0, 10.0], lon=[179.0, -179.5], pred_lat=[-17.0, 10.0],
                          pred_lon=[-179.0, 178.5], error_km=[200.0, 200.0]))
    d = city_data(interactive_error_map(t).to_html(full=False))
    k = {int(c): j for j, c in enumerate(d['city'])}
    np.testing.assert_allclose([d['plon'][k[0]], d['plon'][k[1]]], [181.0, -181.5])


def test_no_resource_comes_from_another_host(pages):
    for page in pages:
        r = Resources(); r.feed(page)
        assert r.scripts >= 3, "the page should carry BokehJS, the figure's data and the script that draws it"
        assert r.urls == [], f"the page loads {r.urls}: everything must be inline"
        assert 'BEGIN bokeh.min.js' in page
    assert not re.search(r'<script[^>]+src\s*=\s*["\']?(https?:)?//', pages[1], flags=re.I)


def test_refuses_a_table_without_the_columns(table):
    with pytest.raises(WMError, match='lacks the column'): interactive_error_map(table.drop(columns=['pred_lon']))


def test_save_keeps_to_the_safe_write_rule(table, tmp_path):
    small = table.iloc[:50]
    p = save_interactive_map(small, tmp_path/'maps'/'errors.html', 'fifty cities')
    page = p.read_text(encoding='utf-8')
    assert page.startswith('<!DOCTYPE html>') and '<title>fifty cities</title>' in page
    assert len(city_data(page)['name']) == 50
    save_interactive_map(small.iloc[:10], p)                            # wm_nb's own file: replaced
    assert len(city_data(p.read_text(encoding='utf-8'))['name']) == 10
    mine = tmp_path/'maps'/'mine.html'
    mine.write_text('my notes')
    with pytest.raises(WMError, match='was not written by wm_nb'): save_interactive_map(small, mine)
    assert mine.read_text() == 'my notes'
    p.write_text(p.read_text(encoding='utf-8') + '<!-- edited -->', encoding='utf-8')
    with pytest.raises(WMError, match='was changed since wm_nb wrote it'): save_interactive_map(small, p)
    assert p.read_text(encoding='utf-8').endswith('<!-- edited -->')


def test_every_parameter_has_a_docment():
    import inspect
    from fastcore.docments import docments
    from wm_nb import interactive
    fns = [getattr(interactive, n) for n in interactive.__all__ if inspect.isfunction(getattr(interactive, n))]
    fns += [interactive.InteractiveMap.__init__, interactive.InteractiveMap.to_html]
    missing = [f"{f.__qualname__}({p})" for f in fns for p, d in docments(f).items() if p not in ('self', 'return') and not d]
    assert not missing, f"parameters without a docment: {missing}"


def test_a_table_where_nothing_parsed_is_drawn_grey_with_what_was_written(table):
    t = table.iloc[:5].assign(pred_lat=np.nan, pred_lon=np.nan, error_km=np.nan, completion=['x', '', '12,', '9999,9999', 'loc'])
    m = interactive_error_map(t)
    assert m.title == 'location errors (0 of 5 cities answered)'
    d = city_data(m.to_html(full=False))
    assert list(d['error']) == ['n/a']*5
    assert sorted(d['prediction']) == sorted(["none (wrote 'x')", "none (wrote '')", "none (wrote '12,')", "none (wrote '9999,9999')", "none (wrote 'loc')"])
