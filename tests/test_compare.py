"""Linear CKA between models (`wm_nb.compare`, `wm_cka`): CKA on synthetic representations whose value is known, and the
console script end to end on two baby models trained through the CLI (plus a third on another city table), with its
one-line refusals."""
import json, re
import numpy as np
import pandas as pd
import pytest
from wm_nb.compare import linear_cka, cka_of_noise, layer_cka
from wm_nb.core import WMError

from helpers import ENV as _ENV, run as _run, one_error_line

ENV = dict(_ENV, OMP_NUM_THREADS='1')   # the CKA and walk-test scripts run single-threaded here


def run(*args, **kw): return _run(*args, env=ENV, **kw)


# --- CKA on synthetic representations -------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def rng(): return np.random.default_rng(1)


def test_rotation_scale_and_shift_give_one(rng):
    X = rng.normal(size=(800, 48))
    Q, _ = np.linalg.qr(rng.normal(size=(48, 48)))
    assert abs(np.sum(Q.T @ Q - np.eye(48))) < 1e-9                     # Q is orthogonal
    assert linear_cka(X, 0.37*X @ Q - 3.0) == pytest.approx(1.0, abs=1e-10)
    P = rng.normal(size=(48, 48))                                         # a general linear map is not an isometry: CKA < 1
    assert linear_cka(X, X @ P) < 0.9


def test_independent_gaussians_are_near_zero_at_the_stated_magnitude(rng):
    # n = 2000 cities, p = q = 32 features: E[CKA] ~ p/(n+p) = 0.0157 (ratio of expectations, Wishart moments);
    # the sd over draws is ~0.0005, so the mean of 10 draws is within 10% of it and no draw exceeds 0.02.
    n, p = 2000, 32
    assert cka_of_noise(n, p) == pytest.approx(p/(n + p))
    draws = [linear_cka(rng.normal(size=(n, p)), rng.normal(size=(n, p))) for _ in range(10)]
    assert np.mean(draws) == pytest.approx(cka_of_noise(n, p), rel=0.1)
    assert max(draws) < 0.02
    big = [linear_cka(rng.normal(size=(6204, 64)), rng.normal(size=(6204, 128))) for _ in range(3)]   # every city, p != q
    assert np.mean(big) == pytest.approx(cka_of_noise(6204, 64, 128), rel=0.1) and max(big) < 0.02


def test_symmetric_and_invariant_to_isotropic_scaling(rng):
    X = rng.normal(size=(300, 16))
    Y = np.tanh(X @ rng.normal(size=(16, 24))) + 0.5*rng.normal(size=(300, 24))
    v = linear_cka(X, Y)
    assert 0.05 < v < 0.95
    assert linear_cka(Y, X) == pytest.approx(v, abs=1e-12)
    assert linear_cka(1e-3*X, 250*Y) == pytest.approx(v, abs=1e-10)
    S = np.diag(np.r_[np.full(8, 10.0), np.ones(8)])                       # anisotropic scaling does change it
    assert abs(linear_cka(X @ S, Y) - v) > 1e-3


def test_matches_the_gram_matrix_definition(rng):
    X, Y = rng.normal(size=(120, 7)), rng.normal(size=(120, 11)) + 0.3
    H = np.eye(120) - 1/120
    K, L = H @ X @ X.T @ H, H @ Y @ Y.T @ H
    assert linear_cka(X, Y) == pytest.approx((K*L).sum()/np.sqrt((K*K).sum()*(L*L).sum()), abs=1e-12)


def test_constant_representation_is_undefined_and_bad_shapes_refused(rng):
    X = rng.normal(size=(50, 4))
    const = np.tile(rng.normal(size=(1, 6)), (50, 1))
    assert np.isnan(linear_cka(const, X)) and np.isnan(linear_cka(X, const))
    rounded = (const*(1 + 1e-7*rng.normal(size=const.shape))).astype(np.float32)   # the same state up to float32 rounding:
    assert np.isnan(linear_cka(rounded, X))                                        # no geometry to compare, not a CKA of noise
    for bad in [X[:10], X[:, 0], X[None]]:
        with pytest.raises(WMError, match='same 2\\+ items'): linear_cka(X, bad)
    assert list(layer_cka(np.stack([X, X]), np.stack([2*X]))) == pytest.approx([1.0])
    Y = rng.normal(size=(50, 4))
    assert list(layer_cka(np.stack([X, Y, X]), np.stack([-X, 3*Y]))) == pytest.approx([1.0, 1.0])   # layer k against layer k


# --- wm_cka end to end ------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def models(tmp_path_factory):
    "dist_baby and angle_baby (first 100 cities), and a dist model on the first 50 cities, trained through the CLI."
    d = tmp_path_factory.mktemp('cka')
    for args in [('dist_baby', '--train.epochs', '1'), ('angle_baby', '--train.epochs', '1'),
                 ('dist_baby', '--name', 'dist50', '--data.max_cities', '50', '--train.max_steps', '5')]:
        r = run('wm_train', *args, cwd=d)
        assert r.returncode == 0, r.stderr[-3000:]
    exp = d/'outputs'/'experiments'
    return d, exp/'dist_baby'/'final', exp/'angle_baby'/'final', exp/'dist50'/'final'


def test_cli_writes_table_json_and_figures(models):
    d, dist, angle, _ = models
    r = run('wm_cka', dist, angle, cwd=d)
    assert r.returncode == 0, r.stderr[-3000:]
    out = d/'outputs'/'cka'/'dist_baby__angle_baby'
    assert {'cka.csv', 'cka.json', 'cka_matrix.png', 'cka_layers.png'} <= {p.name for p in out.iterdir()}
    assert f"written outputs/cka/dist_baby__angle_baby/" in r.stdout
    t = pd.read_csv(out/'cka.csv')
    assert list(t.columns) == ['pair', 'a', 'b', 'kind', 'layer', 'cka', 'noise']
    assert t.groupby('kind').pair.nunique().to_dict() == {'trained': 1, 'vs untrained': 2, 'untrained': 1}
    assert sorted(t.layer.unique()) == [0, 1, 2]                          # embeddings + 2 blocks
    assert t[t.layer == 0].cka.isna().all()                               # the token after the id is the same for every city
    assert t[t.layer > 0].cka.between(0, 1).all()
    s = json.loads((out/'cka.json').read_text())
    assert s['n_cities'] == 100 and s['prompts'].startswith('no task is shared')   # dist and angle: each model's own task
    assert [m['prompt_example'] for m in s['models']] == ['dist(c_0,', 'angle(c_0,']
    pair = s['pairs']['dist_baby ~ angle_baby']
    assert pair['cka'][0] is None and pair['cka'][1:] == pytest.approx(t[t.pair == 'dist_baby ~ angle_baby'].cka[1:].tolist())
    assert pair['noise'] == pytest.approx(32/132)                         # n = 100 cities, 32 features each


def test_cli_task_and_position_options(models):
    d, dist, angle, _ = models
    r = run('wm_cka', dist, angle, '--task', 'dist', '--position', 'concat', '--out', 'cka_concat', cwd=d)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((d/'cka_concat'/'cka.json').read_text())
    assert s['prompts'] == 'dist for every model (asked for)' and s['position'] == 'concat'
    t = pd.read_csv(d/'cka_concat'/'cka.csv')
    assert t.cka.notna().all()                                             # the last digit varies: layer 0 is defined
    assert t.noise.iloc[0] == pytest.approx(64/164)                        # two positions: 64 features
    assert (t[t.kind == 'untrained'].cka < 0.99).all()                     # the twins are two different random networks


def test_cli_same_model_at_two_checkpoints_shares_a_task(models):
    d, dist, _, _ = models
    ck = sorted((dist.parent/'checkpoints').glob('checkpoint-*'))[0]
    r = run('wm_cka', dist, ck, '--out', 'cka_ck', cwd=d)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((d/'cka_ck'/'cka.json').read_text())
    assert s['prompts'] == 'dist: a task every model was trained on'
    assert s['models'][1]['label'] == f'dist_baby-{ck.name}'


def test_bad_inputs_refused_before_any_work(models):
    from wm_nb.compare import run_cka
    d, dist, angle, dist50 = models
    cases = [((dist,), {}, 'give two or more model folders'), ((dist, d/'nope'), {}, 'not found'), ((dist, dist), {}, 'given twice'),
             ((dist, dist50), {}, 'different city tables'), ((dist, angle), dict(position='middle'), '--position must be one of'),
             ((dist, angle), dict(task='distt'), "did you mean 'dist'")]
    for paths, kw, msg in cases:
        with pytest.raises(WMError, match=re.escape(msg)): run_cka(list(paths), out=d/'x', **kw)
    assert not (d/'x').exists()


def test_cli_errors_are_one_line_and_nothing_written(models):
    d, dist, angle, dist50 = models
    assert 'different city tables' in one_error_line(run('wm_cka', dist, dist50, cwd=d), 'wm_cka')
    assert 'give two or more' in one_error_line(run('wm_cka', dist, cwd=d), 'wm_cka')
    foreign = d/'mine'; foreign.mkdir(); (foreign/'cka_layers.png').write_text('my notes\n')   # the last file written
    line = one_error_line(run('wm_cka', dist, angle, '--out', foreign, cwd=d), 'wm_cka')
    assert 'not written by wm_nb' in line and (foreign/'cka_layers.png').read_text() == 'my notes\n'
    assert sorted(p.name for p in foreign.iterdir()) == ['cka_layers.png']  # refused before anything was computed or written
    assert not (d/'outputs'/'cka'/'dist_baby__dist50').exists()
