"""The answers of every relational task (and `loc`), checked over whole generated datasets by a second computation.

Each dataset is built by the package (`build_mixture`), and its rows are read back from the *text*: the city ids are
parsed out of the `prompt` with a regular expression and the answer out of the `completion`, so the text format is
checked as well. Every answer is then recomputed here with numpy by a method that does not call `wm_nb.geo`'s function
for that quantity (and, where the package uses one formula, preferably with a different one):

| task    | package (wm_nb.geo)                         | independent check here                                      |
|---------|---------------------------------------------|-------------------------------------------------------------|
| dist    | haversine                                   | own haversine, and conftest's atan2(|u x v|, u.v)           |
| angle   | angle between tangent vectors at b          | difference of two initial bearings (spherical-trig formula) |
| compass | spherical-trig bearing, floor sector rule   | bearing from east/north tangent components, interval lookup |
| triarea | Van Oosterom-Strackee (atan2 of triple prod)| L'Huilier's theorem and Girard's excess (they agree too)    |
| perim   | sum of atan2 arc lengths                    | sum of own haversine distances                              |
| cross   | intersection of the two great-circle planes | adaptive dense slerp sampling of both arcs (branch & bound  |
|         | + orientation tests                         | on the minimum chord distance between the two point sets)   |
| inside  | gnomonic projection + ray casting           | winding number of the densely sampled edges in an azimuthal |
|         |                                             | equidistant projection centred on the vertex mean           |
| loc     | floor codes                                 | decoded bin centre is within half a bin of the city         |

Rounded answers must equal the rounded independent value exactly; the only tolerance is at a rounding boundary (the
independent value within 1e-6 of k + 1/2, or a compass bearing within 1e-6 degrees of a sector edge), where either
neighbour is accepted. Each check is shown not to be vacuous twice: by feeding it deliberately wrong answers, and by
monkeypatching the package's geometry function with a plausible bug and watching the check catch the built dataset.
"""
from __future__ import annotations
import re
import numpy as np
import pandas as pd
import pytest

import wm_nb.tasks as wt
from wm_nb.mixtures import build_mixture, make_manifest, save_dataset

R = 6371.0088                    # km, as in the design
TOL = 1e-6                       # rounding-boundary band (in the answer's unit) where either neighbour is accepted
N = 50_000                       # rows per task on the default city table
N_SLOW = 30_000                  # rows for cross and inside (their independent checks are the costly ones)
N_EDGE = 10_000                  # rows per task on the poles/antimeridian cities
N_EDGE_CROSS = 5_000             # (cross there has many long, nearly parallel pole-to-pole arcs: slower to decide)
N_BROKEN = 4_000                 # rows of the datasets built with a broken package function


# ---------------------------------------------------------------- datasets, read back from their text

_CACHE: dict = {}

def dataset(cities, task: str, n, seed: int = 42, split: str = 'train'):
    "One split of a one-task dataset built by the package (cached per city table, task, n and seed)."
    key = (id(cities), task, str(n), seed)
    if key not in _CACHE: _CACHE[key] = build_mixture(cities, {'seed': seed, 'tasks': {task: n}})
    return _CACHE[key][0][split]

_ID = re.compile(r'c_(0|[1-9]\d*)')
_NUM = re.compile(r'(0|[1-9]\d*)')

def read_rows(ds, task: str, k_min: int, k_max: int) -> tuple[np.ndarray, list[str]]:
    """The `-1`-padded city ids parsed from each row's prompt text, and the completions. Checks the text format on the
    way: `text = prompt + completion`, the prompt is `task(c_<i>,...)=` with k_min..k_max distinct cities, and the ids
    equal the row's `cities` column."""
    prompt_re = re.compile(rf'{task}\((c_(?:0|[1-9]\d*)(?:,c_(?:0|[1-9]\d*))*)\)=')
    col = lambda name: ds.data.table.column(name).to_pylist()
    texts, prompts, comps = col('text'), col('prompt'), col('completion')
    assert set(col('task')) == {task}
    rows = np.full((len(ds), k_max), -1, np.int64)
    for r, (t, p, c) in enumerate(zip(texts, prompts, comps)):
        assert t == p + c, f"row {r}: text {t!r} is not prompt + completion"
        m = prompt_re.fullmatch(p)
        assert m, f"row {r}: prompt {p!r} is not {task}(c_<i>,...)="
        ids = [int(x) for x in _ID.findall(m[1])]
        assert k_min <= len(ids) <= k_max and len(set(ids)) == len(ids), f"row {r}: {p!r} needs {k_min}-{k_max} distinct cities"
        rows[r, :len(ids)] = ids
    listed = np.full_like(rows, -1)
    for r, c in enumerate(col('cities')): listed[r, :len(c)] = c
    assert (listed == rows).all(), \
        "the cities column differs from the ids in the prompt text"
    return rows, comps

def numbers(comps) -> np.ndarray:
    "Integer answers of numeric completions (format: a non-negative integer without leading zeros)."
    bad = [c for c in comps if not _NUM.fullmatch(c)]
    assert not bad, f"{len(bad)} completions are not integers, e.g. {bad[:3]}"
    return np.array([int(c) for c in comps], np.int64)

def categories(comps, labels) -> np.ndarray:
    "Label indices of categorical completions."
    idx = {l: i for i, l in enumerate(labels)}
    bad = [c for c in comps if c not in idx]
    assert not bad, f"{len(bad)} completions are not one of {labels}, e.g. {bad[:3]}"
    return np.array([idx[c] for c in comps], np.int64)


# ---------------------------------------------------------------- independent spherical geometry (numpy only)

def xyz(lat, lon) -> np.ndarray:
    la, lo = np.radians(lat), np.radians(lon)
    return np.stack([np.cos(la)*np.cos(lo), np.cos(la)*np.sin(lo), np.sin(la)], -1)

def central_angle(lat1, lon1, lat2, lon2) -> np.ndarray:
    "Central angle in radians (haversine)."
    p1, p2 = np.radians(lat1), np.radians(lat2)
    h = np.sin((p2 - p1)/2)**2 + np.cos(p1)*np.cos(p2)*np.sin(np.radians(lon2 - lon1)/2)**2
    return 2*np.arcsin(np.sqrt(np.clip(h, 0, 1)))

def bearing_trig(lat1, lon1, lat2, lon2) -> np.ndarray:
    "Initial bearing (degrees clockwise from north, [0, 360)) by the spherical-trigonometry formula."
    p1, p2, dl = np.radians(lat1), np.radians(lat2), np.radians(lon2 - lon1)
    return np.degrees(np.arctan2(np.sin(dl)*np.cos(p2), np.cos(p1)*np.sin(p2) - np.sin(p1)*np.cos(p2)*np.cos(dl))) % 360

def bearing_tangent(lat1, lon1, lat2, lon2) -> np.ndarray:
    "Initial bearing from the east and north components of the direction to point 2 in the tangent plane at point 1."
    p, l = np.radians(lat1), np.radians(lon1)
    east = np.stack([-np.sin(l), np.cos(l), np.zeros_like(l)], -1)
    north = np.stack([-np.sin(p)*np.cos(l), -np.sin(p)*np.sin(l), np.cos(p)], -1)
    q = xyz(lat2, lon2)
    return np.degrees(np.arctan2((q*east).sum(-1), (q*north).sum(-1))) % 360

def vertex_angle(lat, lon, a, b, c) -> np.ndarray:
    "Angle in degrees (0..180) at city b between the great circles towards a and c: the difference of two bearings."
    d = np.abs(bearing_trig(lat[b], lon[b], lat[a], lon[a]) - bearing_trig(lat[b], lon[b], lat[c], lon[c])) % 360
    return np.minimum(d, 360 - d)

def excess_lhuilier(lat, lon, a, b, c) -> tuple[np.ndarray, np.ndarray]:
    """Spherical excess (steradians on the unit sphere) of triangle abc by L'Huilier's theorem, and an estimate of its
    rounding error. L'Huilier is ill-conditioned for thin triangles (s - side -> 0: dE/d(s - side) = E/(2(s - side)))
    and near-hemisphere ones (tan(s/2) -> inf); the estimate propagates a side error of 4e-16 (1 + pi) through both."""
    x, y, z = central_angle(lat[b], lon[b], lat[c], lon[c]), central_angle(lat[c], lon[c], lat[a], lon[a]), central_angle(lat[a], lon[a], lat[b], lon[b])
    s = (x + y + z)/2
    t = np.tan(s/2)*np.tan((s - x)/2)*np.tan((s - y)/2)*np.tan((s - z)/2)
    e = 4*np.arctan(np.sqrt(np.clip(t, 0, None)))
    err = e/2*sum(4e-16*(1 + np.pi)/np.maximum(s - q, 1e-300) for q in (x, y, z)) + 1e-15/np.cos(s/2)**2
    return e, err

def excess_girard(lat, lon, a, b, c) -> np.ndarray:
    "Spherical excess by Girard's theorem: the sum of the three angles minus pi."
    return np.radians(vertex_angle(lat, lon, c, a, b) + vertex_angle(lat, lon, a, b, c) + vertex_angle(lat, lon, b, c, a)) - np.pi

def rounding_mismatches(value, answer, tol: float = TOL) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose integer `answer` is not `value` rounded to the nearest integer (either neighbour is accepted where
    `value` lies within `tol` (a number or one per row) of a half-integer), and the mask of those boundary rows."""
    value, answer = np.asarray(value, float), np.asarray(answer)
    near = np.abs(value - np.floor(value) - 0.5) < tol
    ok = (answer == np.floor(value + 0.5)) | (np.abs(answer - value) <= 0.5 + tol)
    return np.flatnonzero(~ok), near

SECTOR_EDGES = 22.5 + 45*np.arange(8)        # n|ne, ne|e, e|se, se|s, s|sw, sw|w, w|nw, nw|n

def sector_of(bearing) -> np.ndarray:
    "Index into (n ne e se s sw w nw) by interval lookup: n = [337.5, 22.5), ne = [22.5, 67.5), ..."
    return np.searchsorted(SECTOR_EDGES, np.asarray(bearing), side='right') % 8

def compass_mismatches(bearing, answer, tol: float = TOL) -> tuple[np.ndarray, np.ndarray]:
    "Rows whose sector index differs from the bearing's (either side accepted within `tol` degrees of a sector edge)."
    bearing = np.asarray(bearing, float)
    edge = np.abs((bearing - 22.5 + 22.5) % 45 - 22.5)        # degrees to the nearest sector edge (edges at 22.5 + 45k)
    near = edge < tol
    ok = (answer == sector_of(bearing)) | (near & ((answer == sector_of(bearing - 2*tol)) | (answer == sector_of(bearing + 2*tol))))
    return np.flatnonzero(~ok), near


# ---------------------------------------------------------------- cross: adaptive dense sampling of both arcs

def _arc_frame(a, b):
    "`a`, the unit tangent `t` towards `b` and the arc's angle `w`: the arc is `a cos s + t sin s`, `s` in [0, w]."
    d = (a*b).sum(-1)
    perp = b - d[:, None]*a
    n = np.linalg.norm(perp, axis=-1)
    return a, perp/np.where(n > 0, n, 1)[:, None], np.arctan2(n, d)

def _point(o, t, s): return o*np.cos(s)[..., None] + t*np.sin(s)[..., None]

def arcs_min_distance(a, b, c, d, start: int = 48, split: int = 4, tol: float = 1e-7, max_cells: int = 100_000, levels: int = 40):
    """Bounds `(lo, hi)` of the minimum chord distance between the minor arcs a-b and c-d (unit vectors, `(rows, 3)`).

    Both arcs are sampled by slerp at `start` points each (cell centres); every pair of cells gives an upper bound (the
    distance of its two sample points) and a lower bound (that distance minus both cells' half-widths, since a point of
    a cell is within its half-width, in angle and so in chord, of the cell's sample). Cells whose lower bound exceeds the
    row's best upper bound are dropped, the others are split `split` x `split` and sampled again, until the row is
    decided: `hi <= tol` (two sample points, one on each arc, within `tol`: 0.6 m at 1e-7 rad; the arcs meet) or
    `lo > 0` (they are apart). A row with more than `max_cells` live cells is left undecided (`hi > tol`, `lo <= 0`)."""
    rows = len(a)
    (oa, ta, wa), (oc, tc, wc) = _arc_frame(a, b), _arc_frame(c, d)
    lo, hi = np.full(rows, -np.inf), np.full(rows, np.inf)
    # level 0: start x start sample pairs per row; chord from the dot product (batched matmul), whose rounding error
    # (|c^2 - c_true^2| < 1e-15) is covered by a 1e-7 slack on both bounds
    k = (np.arange(start) + 0.5)/start
    sa, sc = wa[:, None]*k[None], wc[:, None]*k[None]                          # (rows, start)
    dot = np.matmul(_point(oa[:, None], ta[:, None], sa), _point(oc[:, None], tc[:, None], sc).transpose(0, 2, 1))
    dist = np.sqrt(np.clip(2 - 2*dot, 0, None))                                # (rows, start, start)
    hi = dist.min((1, 2)) + 1e-7
    lb = dist - (wa/(2*start))[:, None, None] - (wc/(2*start))[:, None, None] - 1e-7
    lo = lb.min((1, 2))
    r, i, j = np.nonzero((lb <= hi[:, None, None]) & (lo <= 0)[:, None, None])
    sa, sc, ha, hc = sa[r, i], sc[r, j], wa[r]/(2*start), wc[r]/(2*start)
    done = lo > 0
    off = (2*np.arange(split) + 1 - split)/split                               # sub-cell centres in units of the half-width
    for _ in range(levels):
        if not len(r): break
        r = np.repeat(r, split*split)
        sa = (sa[:, None, None] + ha[:, None, None]*off[None, :, None]*np.ones((1, 1, split))).ravel()
        sc = (sc[:, None, None] + hc[:, None, None]*off[None, None, :]*np.ones((1, split, 1))).ravel()
        ha, hc = np.repeat(ha/split, split*split), np.repeat(hc/split, split*split)
        dist = np.linalg.norm(_point(oa[r], ta[r], sa) - _point(oc[r], tc[r], sc), axis=-1)
        np.minimum.at(hi, r, dist)
        lb = dist - ha - hc
        low = np.full(rows, np.inf); np.minimum.at(low, r, lb)
        live = np.isfinite(low)
        lo[live] = low[live]
        done |= live & ((hi <= tol) | (low > 0))
        done |= np.bincount(r, minlength=rows) > max_cells                    # give up on this row: it stays undecided
        keep = ~done[r] & (lb <= hi[r])
        r, sa, sc, ha, hc = r[keep], sa[keep], sc[keep], ha[keep], hc[keep]
    return lo, hi

def cross_independent(x: np.ndarray, chunk: int = 500, **kw) -> tuple[np.ndarray, np.ndarray]:
    "`(crosses, undecided)` of rows of 4 unit vectors a, b, c, d: whether arcs a-b and c-d meet, by `arcs_min_distance`."
    tol = kw.get('tol', 1e-7)
    lo, hi = np.empty(len(x)), np.empty(len(x))
    for i in range(0, len(x), chunk):
        s = slice(i, i + chunk)
        lo[s], hi[s] = arcs_min_distance(x[s, 0], x[s, 1], x[s, 2], x[s, 3], **kw)
    return hi <= tol, ~((hi <= tol) | (lo > 0))


# ---------------------------------------------------------------- inside: winding number in an azimuthal projection

def _azimuthal_equidistant(v, m, east, north):
    "Azimuthal equidistant coordinates (radians) of unit vectors `v (rows, ..., 3)` about centres `m (rows, 3)`."
    shape = (len(m),) + (1,)*(v.ndim - 2) + (3,)
    m, east, north = m.reshape(shape), east.reshape(shape), north.reshape(shape)
    cosc = (v*m).sum(-1)
    tang = v - cosc[..., None]*m
    sinc = np.linalg.norm(tang, axis=-1)
    rho = np.arctan2(sinc, cosc)/np.where(sinc > 0, sinc, 1)        # angular distance per unit of tangent length
    return np.stack([(tang*east).sum(-1)*rho, (tang*north).sum(-1)*rho], -1)

def inside_independent(lat, lon, rows: np.ndarray, samples: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(inside, undecided, winding)` of rows `p, v1, ..., vn` (`-1`-padded).

    Each edge v_i -> v_{i+1} (and v_n -> v_1) is sampled at `samples` slerp points; the closed ring is projected with an
    azimuthal equidistant projection centred on the normalised mean of the vertices, and the signed angle increments of
    the ring seen from p are summed: the winding number. p is inside iff it is +-1. All vertices lie in the open
    hemisphere around the centre (asserted), so the region bounded there is the polygon's smaller side; a p outside that
    hemisphere is outside. A row is undecided where p is closer to the projected polyline than twice its largest sag
    (the distance of a projected half-step sample from the polyline's straight piece), so a finer sampling could differ."""
    n = (rows >= 0).sum(1) - 1
    k = rows.shape[1] - 1
    p = xyz(lat[rows[:, 0]], lon[rows[:, 0]])
    vid = rows[:, 1:]
    v = xyz(lat[np.maximum(vid, 0)], lon[np.maximum(vid, 0)])
    real = vid >= 0
    m = (v*real[..., None]).sum(1); m /= np.linalg.norm(m, axis=-1, keepdims=True)
    assert ((v*m[:, None]).sum(-1)[real] > 0).all(), "a polygon does not lie in the open hemisphere around its vertex mean"
    mlat, mlon = np.arctan2(m[:, 2], np.hypot(m[:, 0], m[:, 1])), np.arctan2(m[:, 1], m[:, 0])
    east = np.stack([-np.sin(mlon), np.cos(mlon), np.zeros_like(mlon)], -1)
    north = np.stack([-np.sin(mlat)*np.cos(mlon), -np.sin(mlat)*np.sin(mlon), np.cos(mlat)], -1)
    nxt = np.where(np.arange(k)[None] + 1 < n[:, None], np.arange(k)[None] + 1, 0)          # successor (ring closed)
    w = np.take_along_axis(v, nxt[..., None], 1)
    o, t, ang = _arc_frame(v.reshape(-1, 3), w.reshape(-1, 3))
    o, t, ang = o.reshape(v.shape), t.reshape(v.shape), ang.reshape(v.shape[:2])
    f = np.arange(2*samples)/(2*samples)                                                      # half steps
    pts = _point(o[:, :, None], t[:, :, None], ang[:, :, None]*f[None, None])               # (rows, k, 2S, 3)
    pts = np.where(real[:, :, None, None], pts, v[:, :1, None])                              # padding: the first vertex
    xy = _azimuthal_equidistant(pts, m, east, north)                                         # (rows, k, 2S, 2)
    q = _azimuthal_equidistant(p[:, None], m, east, north)[:, 0]
    ring = xy[:, :, 0::2].reshape(len(rows), -1, 2)                                          # the polyline's vertices
    mids = xy[:, :, 1::2].reshape(len(rows), -1, 2)                                          # projected half steps
    nb = np.roll(ring, -1, axis=1)
    sag = np.linalg.norm(mids - (ring + nb)/2, axis=-1).max(1)
    th = np.arctan2(ring[..., 1] - q[:, None, 1], ring[..., 0] - q[:, None, 0])
    dth = (np.roll(th, -1, axis=1) - th + np.pi) % (2*np.pi) - np.pi
    winding = np.rint(dth.sum(1)/(2*np.pi)).astype(np.int64)
    seg = nb - ring
    u = np.clip(((q[:, None] - ring)*seg).sum(-1)/np.maximum((seg*seg).sum(-1), 1e-300), 0, 1)
    dmin = np.linalg.norm(ring + u[..., None]*seg - q[:, None], axis=-1).min(1)
    front = (p*m).sum(-1) > 0
    inside = front & (np.abs(winding) == 1)
    return inside, front & (dmin <= 2*sag + 1e-12), winding


# ---------------------------------------------------------------- the per-task checks

def check_dist(cities, rows, ans, great_circle_km=None) -> dict:
    a, b = rows[:, 0], rows[:, 1]
    km = R*central_angle(cities.lat[a], cities.lon[a], cities.lat[b], cities.lon[b])
    if great_circle_km is not None:
        other = great_circle_km(cities.lat[a], cities.lon[a], cities.lat[b], cities.lon[b])
        assert np.abs(km - other).max() < 1e-6, f"haversine and conftest's atan2 distance differ by {np.abs(km - other).max():.3g} km"
    bad, near = rounding_mismatches(km, ans)
    return dict(bad=bad, near=near, value=km)

def check_angle(cities, rows, ans) -> dict:
    deg = vertex_angle(cities.lat, cities.lon, rows[:, 0], rows[:, 1], rows[:, 2])
    bad, near = rounding_mismatches(deg, ans)
    return dict(bad=bad, near=near, value=deg)

def check_compass(cities, rows, ans) -> dict:
    a, b = rows[:, 0], rows[:, 1]
    brg = bearing_tangent(cities.lat[a], cities.lon[a], cities.lat[b], cities.lon[b])
    other = bearing_trig(cities.lat[a], cities.lon[a], cities.lat[b], cities.lon[b])
    gap = np.abs((brg - other + 180) % 360 - 180).max()
    assert gap < 1e-7, f"the two bearing formulas differ by {gap:.3g} degrees"
    bad, near = compass_mismatches(brg, ans)
    return dict(bad=bad, near=near, value=brg)

def check_triarea(cities, rows, ans) -> dict:
    a, b, c = rows[:, 0], rows[:, 1], rows[:, 2]
    (lh, err), gi = excess_lhuilier(cities.lat, cities.lon, a, b, c), excess_girard(cities.lat, cities.lon, a, b, c)
    lh, err, gi = lh*R**2/1000, err*R**2/1000, gi*R**2/1000                 # thousands of km²
    # Girard's angles (atan2 of bearings) are accurate to ~1e-8 thousand km² everywhere and get the plain 1e-6 band;
    # L'Huilier's band is 20x its own error estimate (its measured error is at most ~6x the estimate), at least 1e-6.
    band = np.maximum(20*err, TOL)
    gap = np.abs(lh - gi)/band
    assert gap.max() < 1, f"L'Huilier and Girard differ by {np.abs(lh - gi)[gap.argmax()]:.3g} thousand km² (band {band[gap.argmax()]:.3g})"
    bad_l, near_l = rounding_mismatches(lh, ans, tol=band)
    bad_g, near_g = rounding_mismatches(gi, ans)
    return dict(bad=np.union1d(bad_l, bad_g), near=near_g, value=gi)

def check_perim(cities, rows, ans) -> dict:
    n = (rows >= 0).sum(1)
    km = np.zeros(len(rows))
    for i in range(rows.shape[1]):
        use = i < n
        a = rows[use, i]
        b = rows[np.flatnonzero(use), np.where(i + 1 < n[use], i + 1, 0)]      # the next city; the last closes the ring
        km[use] += R*central_angle(cities.lat[a], cities.lon[a], cities.lat[b], cities.lon[b])
    bad, near = rounding_mismatches(km, ans)
    return dict(bad=bad, near=near, value=km)

def check_cross(cities, rows, ans) -> dict:
    crosses, undecided = cross_independent(xyz(cities.lat[rows], cities.lon[rows]))
    return dict(bad=np.flatnonzero(~undecided & (crosses.astype(np.int64) != ans)), near=undecided, value=crosses)

def check_inside(cities, rows, ans) -> dict:
    inside, undecided, winding = inside_independent(cities.lat, cities.lon, rows)
    assert set(np.unique(winding)) <= {-1, 0, 1}, f"winding numbers {np.unique(winding)}: a polygon is not simple"
    return dict(bad=np.flatnonzero(~undecided & (inside.astype(np.int64) != ans)), near=undecided, value=inside)

CHECKS = dict(dist=check_dist, angle=check_angle, compass=check_compass, triarea=check_triarea, perim=check_perim,
              cross=check_cross, inside=check_inside)
K = dict(dist=(2, 2), angle=(3, 3), compass=(2, 2), triarea=(3, 3), perim=(2, 5), cross=(4, 4), inside=(4, 7))
LABELS = dict(compass=('n', 'ne', 'e', 'se', 's', 'sw', 'w', 'nw'), cross=('false', 'true'), inside=('false', 'true'))
ROWS = dict(cross=N_SLOW, inside=N_SLOW)

def read_task(ds, task):
    rows, comps = read_rows(ds, task, *K[task])
    return rows, (categories(comps, LABELS[task]) if task in LABELS else numbers(comps))

def run_check(cities, task, rows, ans, **kw) -> dict:
    out = CHECKS[task](cities, rows, ans, **kw)
    out['summary'] = (f"{task}: {len(out['bad'])} of {len(rows):,} rows disagree with the independent computation "
                      f"(boundary/undecided rows: {int(out['near'].sum())}); first: {rows[out['bad'][:3]].tolist()} "
                      f"answers {np.asarray(ans)[out['bad'][:3]].tolist()} independent {np.asarray(out['value'])[out['bad'][:3]].tolist()}")
    return out


# ---------------------------------------------------------------- whole datasets agree with the independent checks

@pytest.mark.parametrize('task', ['dist', 'angle', 'compass', 'triarea', 'perim', 'cross', 'inside'])
def test_answers_match_independent_geometry(task, default_cities, great_circle_km):
    rows, ans = read_task(dataset(default_cities, task, ROWS.get(task, N)), task)
    out = run_check(default_cities, task, rows, ans, **({'great_circle_km': great_circle_km} if task == 'dist' else {}))
    print(out['summary'])
    assert len(out['bad']) == 0, out['summary']
    assert out['near'].mean() < 1e-3, f"too many boundary/undecided rows: {out['summary']}"

@pytest.mark.parametrize('task', ['dist', 'angle', 'compass', 'triarea', 'perim', 'cross', 'inside'])
def test_answers_near_poles_and_antimeridian(task, edge_cities, great_circle_km):
    "The same checks on cities within 4 degrees of either pole and in a band across the antimeridian."
    rows, ans = read_task(dataset(edge_cities, task, N_EDGE_CROSS if task == 'cross' else N_EDGE), task)
    out = run_check(edge_cities, task, rows, ans, **({'great_circle_km': great_circle_km} if task == 'dist' else {}))
    print(out['summary'])
    assert len(out['bad']) == 0, out['summary']
    assert out['near'].mean() < 1e-3, f"too many boundary/undecided rows: {out['summary']}"
    lat = edge_cities.lat[rows[rows >= 0]]
    assert (np.abs(lat) > 86).any() and (np.abs(lat) < 5).any(), "the rows should mention both polar and antimeridian cities"


def test_loc_codes_decode_to_their_city(default_cities, tmp_path):
    """Every `loc` completion `<X>,<Y>` decodes (bin centre) to within half a bin of its city in each coordinate, so
    within 4.6 km; and `c_<i>` is row i of the dataset's own cities.csv, which holds the default table's coordinates."""
    dsd, info, cities = build_mixture(default_cities, {'tasks': {'loc': {'n': 'all', 'val': 0}}})
    path = save_dataset(dsd, make_manifest(cities, info, dsd), cities, tmp_path/'loc')
    csv = pd.read_csv(path/'cities.csv')
    assert len(csv) == len(default_cities)
    assert np.abs(csv['latitude'].to_numpy() - default_cities.lat).max() <= 5e-7
    assert np.abs(csv['longitude'].to_numpy() - default_cities.lon).max() <= 5e-7
    for ds in (dsd['train'], dataset(default_cities, 'loc', 5_000)):
        rows, comps = read_rows(ds, 'loc', 1, 1)
        i = rows[:, 0]
        bad = check_loc(csv['latitude'].to_numpy()[i], csv['longitude'].to_numpy()[i], comps)
        assert len(bad) == 0, f"{len(bad)} loc rows decode outside their city's bin, e.g. {[ds['text'][j] for j in bad[:3]]}"
    assert sorted(dsd['train']['cities']) == [[j] for j in range(len(default_cities))], "n: all is one row per city"

def check_loc(lat, lon, comps) -> np.ndarray:
    "Rows whose code is not the bin holding (lat, lon) (0.001 rad bins from -pi / -pi/2), or that decode > 4.6 km away."
    m = [re.fullmatch(r'(0|[1-9]\d*),(0|[1-9]\d*)', c) for c in comps]
    assert all(m), f"loc completions not <X>,<Y>: {[c for c, x in zip(comps, m) if not x][:3]}"
    X, Y = np.array([int(x[1]) for x in m]), np.array([int(x[2]) for x in m])
    cx, cy = (X + 0.5)/1000 - np.pi, (Y + 0.5)/1000 - np.pi/2          # bin centres, radians
    dx = np.abs((np.radians(lon) - cx + np.pi) % (2*np.pi) - np.pi)
    dy = np.abs(np.radians(lat) - cy)
    km = R*central_angle(lat, lon, np.degrees(cy), np.degrees(cx))
    return np.flatnonzero((dx > 0.0005 + 1e-12) | (dy > 0.0005 + 1e-12) | (X > 6283) | (Y > 3141) | (km >= 4.6))


# ---------------------------------------------------------------- class balance

def test_cross_and_inside_are_balanced(default_cities):
    "cross and inside are balanced by rejection: exactly n - n//2 false and n//2 true."
    shares = {}
    for task in ('cross', 'inside'):
        for n in (ROWS[task], 20_001):
            comps = np.array(dataset(default_cities, task, n)['completion'])
            t = int((comps == 'true').sum()); shares[f"{task} n={n}"] = t/n
            assert t == n//2 and (comps == 'false').sum() == n - n//2, f"{task}: {t} of {n} true (share {t/n:.4f})"
    print('true shares:', shares)

@pytest.mark.parametrize('task', ['cross', 'inside'])
def test_balance_holds_with_evaluation_rows(task, default_cities):
    "Training rows equal to an evaluation row are dropped and replaced: the balance must survive it (it did not, once)."
    dsd, _, _ = build_mixture(default_cities, {'tasks': {task: {'n': 20_000, 'val': 100}}})
    for split in ('train', 'validation'):
        comps = np.array(dsd[split]['completion'])
        t = int((comps == 'true').sum())
        assert t == len(comps)//2, f"{task} {split}: {t} of {len(comps)} true"

def test_compass_directions_are_spread(default_cities):
    comps = np.array(dataset(default_cities, 'compass', N)['completion'])
    labels = LABELS['compass']
    share = {l: float((comps == l).mean()) for l in labels}
    msg = 'compass answer shares: ' + ', '.join(f"{l} {s:.3f}" for l, s in share.items())
    print(msg)
    assert min(share.values()) > 0 and max(share.values()) <= 0.30, msg


# ---------------------------------------------------------------- the checks are not vacuous: wrong answers are caught

def _perturb(task, ans, rows, rng, near):
    "A copy of `ans` with ~1% of rows (away from rounding boundaries) made wrong in a plausible way, and those rows."
    pick = rng.choice(np.flatnonzero(~near), max(1, len(ans)//100), replace=False)
    wrong = ans.copy()
    if task == 'compass': wrong[pick] = (wrong[pick] + rng.choice([1, 7], len(pick))) % 8        # a neighbouring sector
    elif task in ('cross', 'inside'): wrong[pick] = 1 - wrong[pick]                            # label inverted
    elif task == 'angle': wrong[pick] = np.where(wrong[pick] < 180, wrong[pick] + 1, 179)       # off by one degree
    else: wrong[pick] = wrong[pick] + 1                                                         # off by one unit
    return wrong, pick

@pytest.mark.parametrize('task', ['dist', 'angle', 'compass', 'triarea', 'perim', 'cross', 'inside'])
def test_check_catches_wrong_answers(task, default_cities):
    rows, ans = read_task(dataset(default_cities, task, 5_000, seed=7), task)
    ok = run_check(default_cities, task, rows, ans)
    wrong, pick = _perturb(task, ans, rows, np.random.default_rng(0), ok['near'])
    out = run_check(default_cities, task, rows, wrong)
    assert set(out['bad']) == set(pick), f"{task}: perturbed {len(pick)} rows, the check flagged {len(out['bad'])}"

def test_text_format_check_catches_bad_rows(default_cities):
    "read_rows rejects a leading zero, a missing bracket, a repeated city, a wrong task name and a cities column mismatch."
    from datasets import Dataset
    ds = dataset(default_cities, 'angle', 5_000, seed=7)
    read_rows(ds, 'angle', 3, 3)
    good = ds.select(range(3)).to_dict()
    for field, value in [('prompt', 'angle(c_1,c_02,c_3)='), ('prompt', 'angle(c_1,c_2,c_3='), ('prompt', 'angle(c_1,c_2,c_1)='),
                         ('prompt', 'angel(c_1,c_2,c_3)='), ('cities', [1, 2, 4])]:
        bad = {k: list(v) for k, v in good.items()}
        bad[field][1] = value
        if field == 'prompt': bad['text'][1] = value + bad['completion'][1]
        else: bad['prompt'][1] = 'angle(c_1,c_2,c_3)='; bad['text'][1] = bad['prompt'][1] + bad['completion'][1]
        with pytest.raises(AssertionError): read_rows(Dataset.from_dict(bad), 'angle', 3, 3)
    with pytest.raises(AssertionError): numbers(['12', '012'])
    with pytest.raises(AssertionError): categories(['n', 'north'], LABELS['compass'])

def test_loc_check_catches_wrong_codes(default_cities):
    rows, comps = read_rows(dataset(default_cities, 'loc', 5_000, seed=7), 'loc', 1, 1)
    lat, lon = default_cities.lat[rows[:, 0]], default_cities.lon[rows[:, 0]]
    assert len(check_loc(lat, lon, comps)) == 0
    wrong = [f"{int(c.split(',')[0]) + (k % 2)},{int(c.split(',')[1]) + 1 - (k % 2)}" if k % 50 == 0 else c for k, c in enumerate(comps)]
    assert len(check_loc(lat, lon, wrong)) == len(range(0, len(comps), 50))

def test_cross_sampling_decides_known_cases():
    "Hand-made arcs: a right-angle crossing, a miss by 1 m, arcs that meet only if extended, and a 1-degree crossing."
    def row(*pts): return xyz(np.array([p[0] for p in pts]), np.array([p[1] for p in pts]))
    d1m = np.degrees(1/6371008.8)
    x = np.stack([row((0, -10), (0, 10), (-10, 0), (10, 0)),                 # a plus sign: cross
                  row((0, -10), (0, 10), (d1m, 0), (10, 0)),                 # c is 1 m north of arc a-b: no
                  row((0, -10), (0, -1), (-10, 5), (10, 5)),                 # great circles meet at (0, 5), off arc a-b: no
                  row((0, -10), (0, 10), (-0.1, -5), (0.1, 5))])             # crossing at ~1.1 degrees: cross
    crosses, undecided = cross_independent(x)
    assert not undecided.any() and crosses.tolist() == [True, False, False, True]


# ---------------------------------------------------------------- ... and so are bugs in the package's geometry

def _chord_angle(a, b, c):
    "A plausible bug: the angle between the chords b->a and b->c instead of between the great circles."
    u, v = a - b, c - b
    return np.degrees(np.arccos(np.clip((u*v).sum(-1)/np.linalg.norm(u, axis=-1)/np.linalg.norm(v, axis=-1), -1, 1)))

def _break(name):
    "(function name in wm_nb.tasks, broken replacement) for one task."
    g = {k: getattr(wt, k) for k in ('haversine_km', 'angle_at_deg', 'compass_sector', 'triangle_area_km2', 'perimeter_km',
                                       'arcs_cross', 'inside_polygon')}
    def perim_open(pts, n=None):      # forgets the closing side b -> a
        pts = np.asarray(pts, float); n = np.full(len(pts), pts.shape[1]) if n is None else np.asarray(n)
        last = np.take_along_axis(pts, (n - 1)[:, None, None].repeat(3, 2), 1)[:, 0]
        return g['perimeter_km'](pts, n) - R*np.arctan2(np.linalg.norm(np.cross(last, pts[:, 0]), axis=-1), (last*pts[:, 0]).sum(-1))
    def cross_one_side(a, b, c, d):   # only tests the intersection point n1 x n2, never its antipode
        n1, n2 = np.cross(a, b), np.cross(c, d); x = np.cross(n1, n2)
        on = lambda y, p, q, nn: ((np.cross(p, y)*nn).sum(-1) >= 0) & ((np.cross(y, q)*nn).sum(-1) >= 0)
        return on(x, a, b, n1) & on(x, c, d, n2)
    return dict(
        dist=('haversine_km', lambda *a: g['haversine_km'](*a)*6371.0/R),                  # R = 6371 km
        angle=('angle_at_deg', _chord_angle),
        compass=('compass_sector', lambda b: (np.floor(np.asarray(b)/45)).astype(np.int64) % 8),   # sectors not centred
        triarea=('triangle_area_km2', lambda a, b, c: g['triangle_area_km2'](a, b, c)*(1 + 1e-4)),
        perim=('perimeter_km', perim_open),
        cross=('arcs_cross', cross_one_side),
        inside=('inside_polygon', lambda p, poly, n=None: g['inside_polygon'](p, poly[:, ::-1] if n is None else poly, None if n is None else np.maximum(np.asarray(n) - 1, 3))),
    )[name]

@pytest.mark.parametrize('task', ['dist', 'angle', 'compass', 'triarea', 'perim', 'cross', 'inside'])
def test_check_catches_broken_package_geometry(task, default_cities, monkeypatch):
    fn, broken = _break(task)
    monkeypatch.setattr(wt, fn, broken)
    dsd, _, _ = build_mixture(default_cities, {'seed': 3, 'tasks': {task: N_BROKEN}})
    rows, ans = read_task(dsd['train'], task)
    out = run_check(default_cities, task, rows, ans)
    print(f"broken {fn}: {out['summary']}")
    assert len(out['bad']) > 0, f"the check did not notice a broken {fn}"

def test_loc_check_catches_broken_encoding(default_cities, monkeypatch):
    def rounded_codes(lat, lon):      # a plausible bug: nearest code instead of the floor
        return (np.rint((np.radians(lon) + np.pi)*1000).astype(np.int64), np.rint((np.radians(lat) + np.pi/2)*1000).astype(np.int64))
    monkeypatch.setattr(wt, 'encode_xy', rounded_codes)
    rows, comps = read_rows(build_mixture(default_cities, {'seed': 3, 'tasks': {'loc': N_BROKEN}})[0]['train'], 'loc', 1, 1)
    assert len(check_loc(default_cities.lat[rows[:, 0]], default_cities.lon[rows[:, 0]], comps)) > 0
