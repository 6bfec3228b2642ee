"""Random walks: the vectorised generator matches the step-by-step reference in distribution, and every walk is valid
(hops within T, no repeated city, padding consistent) even near the poles and across the antimeridian."""
from __future__ import annotations
import numpy as np
import pyarrow as pa
import pytest
from scipy.stats import ks_2samp

from wm_nb.cities import Cities
from wm_nb.core import WMError
from wm_nb.walks import neighbour_graph, random_walks, random_walks_reference, check_walks, WalkTask
from wm_nb.mixtures import build_mixture, normalise_spec

def walk_dataset(cities, n_train, n_val=0, seed=42, threshold_km=200.0, **kw):
    "A one-task walk dataset as `wm_dataset walk` builds it."
    dsd, info, _ = build_mixture(cities, {'seed': seed, 'tasks': {'walk': {'n': n_train, 'val': n_val, 'threshold_km': threshold_km}}})
    return dsd, info

T = 200.0
MAX_LEN = 32
N_REF, N_VEC = 4000, 100_000
ALPHA = 1e-4


def ks_critical(n: int, m: int, alpha: float = ALPHA) -> float:
    """Two-sample Kolmogorov-Smirnov critical value D_crit = c(alpha) * sqrt((n+m)/(n*m)), c(alpha) = sqrt(-ln(alpha/2)/2)
    (asymptotic; c(1e-4) = 2.23). For n=4000, m=100000 this is 0.036. If both samples are i.i.d. from the same
    continuous distribution, D > D_crit with probability ~alpha; for discrete data (walk lengths) the test is
    conservative, so the probability of a false failure is even smaller."""
    return float(np.sqrt(-np.log(alpha/2)/2)*np.sqrt((n + m)/(n*m)))


def pad(walks: list[list[int]], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    arr = np.full((len(walks), max_len), -1, np.int32)
    for k, w in enumerate(walks): arr[k, :len(w)] = w
    return arr, np.array([len(w) for w in walks])


def one_hop_per_walk(cities: Cities, walks: np.ndarray, lengths: np.ndarray, seed: int) -> np.ndarray:
    """The great-circle length of one hop drawn uniformly from each walk with >= 2 cities. Walks are independent, so
    these are i.i.d. draws (hops within a walk are not independent of each other, so pooling all hops would invalidate
    the KS critical value)."""
    keep = lengths >= 2
    w, l = walks[keep], lengths[keep]
    k = np.floor(np.random.default_rng(seed).random(len(l))*(l - 1)).astype(np.int64)
    a, b = w[np.arange(len(l)), k], w[np.arange(len(l)), k + 1]
    return np.asarray(cities_km(cities, a, b))


_GC = {}   # filled by the autouse fixture below with conftest's independent great-circle function


@pytest.fixture(autouse=True, scope='module')
def _independent_km(great_circle_km):
    _GC['km'] = great_circle_km


def cities_km(cities, a, b):
    "Great-circle km between cities `a` and `b`, computed without wm_nb.geo."
    return _GC['km'](cities.lat[a], cities.lon[a], cities.lat[b], cities.lon[b])


@pytest.fixture(scope='module')
def graph(default_cities):
    return neighbour_graph(default_cities, T)


@pytest.fixture(scope='module')
def reference(default_cities):
    "4,000 walks from the step-by-step reference generator (k-d tree query per step)."
    return pad(random_walks_reference(default_cities, N_REF, T, MAX_LEN, seed=123), MAX_LEN)


@pytest.fixture(scope='module')
def vectorised(graph):
    return random_walks(graph, N_VEC, MAX_LEN, seed=7)


def test_reference_walks_are_valid(default_cities, reference):
    w, l = reference
    assert l.min() >= 1 and l.max() <= MAX_LEN
    info = check_walks(default_cities, w, l, T)
    assert info['walks_with_repeats'] == 0 and info['max_hop_km'] <= T


def test_same_length_distribution(reference, vectorised):
    (_, lr), (_, lv) = reference, vectorised
    d = ks_2samp(lr, lv).statistic
    crit = ks_critical(len(lr), len(lv))
    assert crit == pytest.approx(0.0359, abs=5e-4)
    assert d < crit, f"walk-length KS statistic {d:.4f} >= {crit:.4f}"
    # Mean length: a z-test at 5 standard errors of the difference (two-sided p ~ 6e-7 under equal means).
    # The SE is ~0.14 cities, so the tolerance is ~0.7 cities; unexcluded revisits would add ~2.
    se = np.sqrt(lr.var(ddof=1)/len(lr) + lv.var(ddof=1)/len(lv))
    assert abs(lr.mean() - lv.mean()) < 5*se, (lr.mean(), lv.mean(), se)
    assert 0.1 < se < 0.25
    # walks stop early when they run out of unvisited neighbours: the mean is well below the uniform target's 16.5
    assert lv.mean() < 16.0


def test_same_hop_distance_distribution(default_cities, reference, vectorised):
    hr = one_hop_per_walk(default_cities, *reference, seed=1)
    hv = one_hop_per_walk(default_cities, *vectorised, seed=2)
    assert len(hr) > 0.9*N_REF and len(hv) > 0.9*N_VEC
    d = ks_2samp(hr, hv).statistic
    crit = ks_critical(len(hr), len(hv))
    assert d < crit, f"hop-distance KS statistic {d:.4f} >= {crit:.4f}"
    assert hr.max() <= T and hv.max() <= T


@pytest.mark.parametrize('what', ['threshold', 'max_len'])
def test_ks_bound_detects_a_wrong_generator(default_cities, reference, what):
    "The bound is not vacuous: walks made with T=170 km or max_len=28 are rejected by the same comparison."
    if what == 'threshold':
        w, l = random_walks(neighbour_graph(default_cities, 170.0), N_VEC, MAX_LEN, seed=7)
        a, b = one_hop_per_walk(default_cities, *reference, seed=1), one_hop_per_walk(default_cities, w, l, seed=2)
    else:
        _, l = random_walks(neighbour_graph(default_cities, T), N_VEC, 28, seed=7)
        a, b = reference[1], l
    assert ks_2samp(a, b).statistic > ks_critical(len(a), len(b))


def independent_check(cities: Cities, walks: np.ndarray, lengths: np.ndarray, threshold_km: float, max_len: int):
    "Validity checked without wm_nb: shape, padding, hop lengths by vector-angle great circle, no repeats."
    n, L = walks.shape
    assert L == max_len and walks.dtype == np.int32
    assert lengths.min() >= 1 and lengths.max() <= max_len
    pos = np.arange(L)[None]
    assert ((walks >= 0) == (pos < lengths[:, None])).all(), "padding is not exactly the tail after `length` cities"
    assert walks.max() < len(cities)
    a, b = walks[:, :-1], walks[:, 1:]
    m = b >= 0
    hops = cities_km(cities, a[m], b[m])
    assert hops.max() <= threshold_km + 1e-6, f"hop of {hops.max()} km"
    s = np.sort(np.where(walks >= 0, walks, -1 - pos), axis=1)
    assert not (s[:, 1:] == s[:, :-1]).any(), "a walk visits a city twice"
    return hops


@pytest.mark.parametrize('threshold_km,max_len', [(200.0, 32), (50.0, 32), (200.0, 5), (50.0, 5)])
def test_vectorised_walks_valid(default_cities, threshold_km, max_len):
    g = neighbour_graph(default_cities, threshold_km)
    w, l = random_walks(g, 200_000, max_len, seed=11)
    assert w.shape == (200_000, max_len)
    info = check_walks(default_cities, w, l, threshold_km)
    assert info['walks_with_repeats'] == 0 and info['max_hop_km'] <= threshold_km
    assert info['n_hops'] == int((l - 1).sum())
    hops = independent_check(default_cities, w, l, threshold_km, max_len)
    # the walks really move: most reach beyond one city and hops use the whole range up to T
    assert (l >= 2).mean() > 0.5 and hops.max() > 0.9*threshold_km
    assert set(np.unique(l)) == set(range(1, max_len + 1))


def test_uniform_choice_among_unvisited_neighbours(monkeypatch):
    """On a 5-city clique every full-length walk from city 0 is a permutation of cities 1-4, and all 24 must be equally
    likely. Late steps have 1-2 unvisited neighbours of 4, so the rejection rounds often fail and the exact fallback
    is exercised too. Chi-square against uniform, failing at p < 1e-4; a generator that prefers low ids (e.g. 'first
    unvisited neighbour') gives p ~ 0."""
    from itertools import permutations
    from scipy.stats import chisquare
    c = Cities(list('abcde'), [0.0, 0.1, 0.2, 0.0, 0.1], [0.0, 0.0, 0.1, 0.2, 0.2], ['xx']*5, [200_000]*5)
    g = neighbour_graph(c, T)
    assert g.degree.tolist() == [4]*5
    import wm_nb.walks as W
    exact_rows = []
    def counting(g, walks, rows, step, rng, **kw):
        exact_rows.append(len(rows)); return real(g, walks, rows, step, rng, **kw)
    real = W._exact_step
    monkeypatch.setattr(W, '_exact_step', counting)
    w, l = random_walks(g, 250_000, 5, seed=21, starts=np.zeros(250_000, int))
    assert sum(exact_rows) > 5_000, "the exact fallback was not exercised"
    full = w[l == 5]
    assert len(full) > 40_000 and (full[:, 0] == 0).all()
    index = {p: k for k, p in enumerate(permutations(range(1, 5)))}
    counts = np.bincount([index[tuple(r)] for r in full[:, 1:].tolist()], minlength=24)
    assert counts.sum() == len(full)
    assert chisquare(counts).pvalue > 1e-4, counts
    # the target length is uniform on 1..5 and, on a clique, never cut short
    assert chisquare(np.bincount(l, minlength=6)[1:]).pvalue > 1e-4


def test_check_walks_rejects_invalid_walks(default_cities, graph):
    w, l = random_walks(graph, 1000, MAX_LEN, seed=5)
    i = int(np.flatnonzero(l >= 3)[0])
    far = w.copy(); c = far[i, 1]
    far[i, 1] = int(np.argmax(cities_km(default_cities, np.full(len(default_cities), c), np.arange(len(default_cities)))))
    with pytest.raises(AssertionError, match='exceeds'): check_walks(default_cities, far, l, T)
    rep = w.copy(); rep[i, 2] = rep[i, 0]
    with pytest.raises(AssertionError, match='repeat'): check_walks(default_cities, rep, l, T)
    short = l.copy(); short[i] -= 1
    with pytest.raises(AssertionError, match='padding'): check_walks(default_cities, w, short, T)


def test_poles_and_antimeridian(edge_cities, great_circle_km):
    c = edge_cities
    n = len(c)
    d = great_circle_km(c.lat[:, None], c.lon[:, None], c.lat[None], c.lon[None])
    g = neighbour_graph(c, T)
    # the graph is exactly the brute-force neighbour relation
    for i in range(n):
        want = np.flatnonzero((d[i] <= T) & (np.arange(n) != i))
        assert np.array_equal(np.sort(g.neighbours(i)), want), f"neighbours of city {i}"
    w, l = random_walks(g, 200_000, MAX_LEN, seed=3)
    info = check_walks(c, w, l, T)
    assert info['walks_with_repeats'] == 0
    hops = independent_check(c, w, l, T, MAX_LEN)
    a, b = w[:, :-1], w[:, 1:]
    m = b >= 0
    a, b = a[m], b[m]
    assert np.allclose(hops, d[a, b])
    dlon = np.abs(c.lon[a] - c.lon[b])
    # the test exercises what it claims: hops cross the antimeridian (|dlon| > 180 at low latitude)
    # and pass over a pole (longitudes ~opposite at |lat| > 85)
    assert ((dlon > 180) & (np.abs(c.lat[a]) < 10)).sum() > 1000
    assert ((dlon > 150) & (dlon < 210) & (np.abs(c.lat[a]) > 85)).sum() > 1000
    assert (c.lat[a] > 0).any() and (c.lat[a] < 0).any()
    assert l.max() == MAX_LEN


def test_seeds(graph, default_cities):
    w1, l1 = random_walks(graph, 5000, MAX_LEN, seed=42)
    w2, l2 = random_walks(graph, 5000, MAX_LEN, seed=42)
    w3, l3 = random_walks(graph, 5000, MAX_LEN, seed=43)
    assert np.array_equal(w1, w2) and np.array_equal(l1, l2)
    assert not np.array_equal(w1, w3)
    assert (w1[:, 0] != w3[:, 0]).mean() > 0.9      # different start cities, not a tiny perturbation
    r1 = random_walks_reference(default_cities, 50, T, MAX_LEN, seed=9)
    r2 = random_walks_reference(default_cities, 50, T, MAX_LEN, seed=9)
    r3 = random_walks_reference(default_cities, 50, T, MAX_LEN, seed=10)
    assert r1 == r2 and r1 != r3
    d1, _ = walk_dataset(default_cities, n_train=300, n_val=20, seed=1)
    d2, _ = walk_dataset(default_cities, n_train=300, n_val=20, seed=1)
    d3, _ = walk_dataset(default_cities, n_train=300, n_val=20, seed=2)
    assert d1['train']['text'] == d2['train']['text'] and d1['validation']['text'] == d2['validation']['text']
    assert d1['train']['text'] != d3['train']['text']
    assert d1['train']['text'] != d1['validation']['text'][:300]


def test_walk_dataset_texts_match_walks(default_cities, graph):
    d, info = walk_dataset(default_cities, n_train=2000, n_val=0, seed=4, threshold_km=T)
    walks = [list(x) for x in d['train']['cities']]
    texts = d['train']['text']
    assert texts == ['srd_200=' + ','.join(f'c_{i}' for i in w) for w in walks]
    arr, lengths = pad(walks, MAX_LEN)
    assert check_walks(default_cities, arr, lengths, T)['max_hop_km'] <= T
    assert info['task_counts']['train'] == {'walk': 2000}


def test_walk_options_rejected(default_cities, graph):
    with pytest.raises(WMError, match='whole number'): walk_dataset(default_cities, n_train=5, threshold_km=150.5)
    with pytest.raises(WMError, match='max_len'): WalkTask(max_len=0)
    with pytest.raises(WMError, match='max_len'): random_walks(graph, 5, 0)


def test_zero_walks(default_cities, graph):
    "`wm_dataset loc/dist --n_train 0` give an empty train split; walks should too (or a WMError), not a crash."
    try: d, _ = walk_dataset(default_cities, n_train=0)
    except WMError: return
    assert d['train'].num_rows == 0
