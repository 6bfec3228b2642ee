"""Does it learn the map: the held-out mix, wm_probe with its controls, walk validity and the
walk-neighbour baseline, through the CLI on the tiny `mix_baby` config, plus leakage checks."""
import json, os, subprocess, sys
from pathlib import Path
import numpy as np
import pytest

BIN = Path(sys.executable).parent
ENV = dict(os.environ, HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1', MPLBACKEND='Agg', PYTHONUNBUFFERED='1')

def run(*args, cwd, timeout=600):
    return subprocess.run([str(BIN/args[0]), *map(str, args[1:])], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=ENV)

def one_error_line(r, prog):
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-3000:])
    assert 'Traceback' not in r.stderr, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert lines[-1].startswith(f'{prog}: error:'), lines
    return lines[-1]


@pytest.fixture(scope='module')
def mix(tmp_path_factory):
    "A mix_baby experiment trained through the CLI (300 cities, 30 of them held out)."
    d = tmp_path_factory.mktemp('mix')
    r = run('wm_train', 'mix_baby', '--train.epochs', '1', cwd=d)
    assert r.returncode == 0, r.stderr[-3000:]
    exp = d/'outputs'/'experiments'/'mix_baby'
    from wm_nb.tasks import load_task_dataset
    dsd, man, cities = load_task_dataset(json.loads((exp/'wm_dataset.json').read_text())['path'])
    return d, exp, dsd, man, cities


def test_mix_dataset_holds_out_locations_only(mix):
    _, _, dsd, man, cities = mix
    assert man['task'] == 'mix' and man['n_heldout'] == 30
    train = dsd['train'].to_pandas()
    held = set(dsd['heldout']['city'])
    assert len(held) == 30
    assert held.isdisjoint(train.loc[train.task == 'loc', 'city'])         # no held-out location is trained on
    assert held.isdisjoint(dsd['validation']['city'])                       # nor used to select the model
    assert (train.task == 'loc').sum() == len(cities) - 30
    walks = np.concatenate(train.loc[train.task == 'walk', 'cities'].to_numpy())
    assert set(walks) & held                                                # the walks do visit held-out cities


def test_final_metrics_report_heldout_and_walks(mix):
    _, exp, _, _, _ = mix
    m = json.loads((exp/'metrics.json').read_text())
    h = m['eval_heldout']
    assert h['n'] == 30 and h['split'] == 'heldout' and h['scored_cities'].startswith('held out')
    assert {'centroid', 'random_city', 'walk_neighbours'} <= set(h) and 0 < h['walk_neighbours_coverage'] <= 1
    w = m['walk_validity']
    assert {'valid_rate', 'hops_within_T', 'repeat_rate', 'random_next_city'} <= set(w)
    hist = json.loads((exp/'log_history.json').read_text())
    assert any('eval_heldout_median_km' in x for x in hist)                 # tracked during training, not selected on


def test_walk_neighbour_baseline_is_the_mean_of_known_co_walkers(mix):
    "Recomputed by hand for a few held-out cities, independently of the sparse implementation."
    from wm_nb.evaluate import walk_neighbour_positions, known_cities
    from wm_nb.geo import spherical_centroid
    _, _, dsd, _, cities = mix
    known = known_cities(dsd)
    held = np.array(dsd['heldout']['city'])
    la, lo, cov = walk_neighbour_positions(dsd['train'], cities, held, known)
    train = dsd['train'].to_pandas(); walks = train.loc[train.task == 'walk', 'cities'].tolist()
    ks = set(known.tolist())
    for k, c in enumerate(held):
        nb = sorted({int(x) for w in walks if c in w for x in w if x != c and int(x) in ks})
        assert cov[k] == bool(nb)
        if nb: assert np.allclose((la[k], lo[k]), spherical_centroid(cities.lat[nb], cities.lon[nb]))


def test_wm_eval_heldout_split(mix):
    d, exp, _, _, _ = mix
    r = run('wm_eval', exp/'final', '--split', 'heldout', '--out', d/'ev', cwd=d)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'walk nbrs' in r.stdout and 'centroid' in r.stdout and 'held out' in r.stdout
    m = json.loads((d/'ev'/'metrics_heldout.json').read_text())
    assert m['n'] == 30 and (d/'ev'/'error_map_heldout.png').exists()


def test_wm_probe_writes_table_controls_and_maps(mix):
    d, exp, dsd, _, cities = mix
    r = run('wm_probe', exp/'final', '--out', d/'probe', cwd=d)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'untrained' in r.stdout and 'shuffled' in r.stdout
    s = json.loads((d/'probe'/'probe.json').read_text())
    n_layers = 2 + 1                                                            # embeddings + 2 blocks
    assert len(s['layers']) == n_layers
    for row in s['layers']:
        for k in ('r2', 'median_km', 'untrained_r2', 'untrained_median_km', 'shuffled_r2', 'shuffled_median_km'):
            assert np.isfinite(row[k]), (k, row)
    # leakage: scored on exactly the held-out cities, fitted on known ones only
    per_city = __import__('pandas').read_csv(d/'probe'/'probe_cities.csv')
    assert sorted(per_city.city) == sorted(dsd['heldout']['city'])
    assert s['n_test'] == 30 and s['n_fit'] == len(cities) - 30
    assert len(__import__('pandas').read_csv(d/'probe'/'probe_layers.csv')) == n_layers
    for f in ['probe_layers.png', 'probe_map.png', 'probe_vs_generated.png']:
        assert (d/'probe'/f).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and (d/'probe'/f).stat().st_size > 10_000, f


def test_probe_controls_are_computed_as_stated(mix):
    "Each column of the table is recomputed from its own source: trained states, a fresh model of the same architecture, permuted coordinates."
    import torch
    from wm_nb.evaluate import load_model
    from wm_nb.probe import run_probe, untrained_like, probe_split, probe_layers, probe_prompts, hidden_states
    from wm_nb.geo import unit_xyz
    _, exp, dsd, man, cities = mix
    model, tok = load_model(exp/'final')
    u = untrained_like(model, seed=0)
    assert (u.config.num_hidden_layers, u.config.hidden_size, u.config.vocab_size) == (model.config.num_hidden_layers, model.config.hidden_size, model.config.vocab_size)
    assert not all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), u.state_dict().values()))
    fit, test, _ = probe_split(man, dsd, len(cities))
    assert not set(fit) & set(test)
    r = run_probe(model, tok, cities, fit, test, seed=0)
    ids = np.concatenate([fit, test]); p, pos = probe_prompts(ids)
    def full(m):
        s = hidden_states(m, tok, p, pos)
        f = np.zeros((s.shape[0], len(cities), s.shape[2]), np.float32); f[:, ids] = s
        return f
    trained, untrained = full(model), full(untrained_like(model, seed=0))
    assert not np.allclose(trained, untrained)
    t_tr, _ = probe_layers(trained, cities, fit, test)
    t_un, _ = probe_layers(untrained, cities, fit, test)
    perm = np.random.default_rng(0).permutation(len(cities))
    t_sh, _ = probe_layers(trained, cities, fit, test, targets=unit_xyz(cities.lat, cities.lon)[perm])
    tab = r['table']
    assert np.allclose(t_tr.r2, tab.r2) and np.allclose(t_un.r2, tab.untrained_r2) and np.allclose(t_sh.r2, tab.shuffled_r2)
    assert np.allclose(t_un.median_km, tab.untrained_median_km) and np.allclose(t_sh.median_km, tab.shuffled_median_km)
    assert r['best_layer'] == int(tab.fit_loo_r2.idxmax())        # chosen on the fit cities, not the test cities


def test_probe_reads_a_linear_map_and_not_noise(default_cities):
    "On synthetic states that hold the position linearly the probe is near perfect on unseen cities; on noise (and shuffled targets) it is not."
    from wm_nb.probe import probe_layers
    from wm_nb.geo import unit_xyz
    c = default_cities
    rng = np.random.default_rng(1)
    xyz = unit_xyz(c.lat, c.lon)
    signal = np.concatenate([xyz @ rng.normal(size=(3, 12)), rng.normal(size=(len(c), 12))], 1) + 0.05*rng.normal(size=(len(c), 24))
    noise = rng.normal(size=(len(c), 24))
    perm = rng.permutation(len(c)); fit, test = perm[:5000], perm[5000:]
    t, preds = probe_layers(np.stack([signal, noise]).astype(np.float32), c, fit, test)
    assert t.r2[0] > 0.95 and t.median_km[0] < 300 and t.fit_loo_r2[0] > 0.95
    assert t.r2[1] < 0.05 and t.median_km[1] > 3000
    ts, _ = probe_layers(signal[None].astype(np.float32), c, fit, test, targets=xyz[rng.permutation(len(c))])
    assert ts.r2[0] < 0.05
    assert preds.shape == (2, len(test), 3)


def test_probe_position_is_the_token_after_the_id():
    from wm_nb.probe import probe_prompts
    p, pos = probe_prompts([3, 620, 6201])
    assert [q[k-1] for q, k in zip(p, pos)] == [')', ')', ')']           # <bos> shifts characters by one token
    p, pos = probe_prompts([620], 'walk', 200)
    assert p == ['srd_200=c_620,'] and p[0][pos[0]-1] == ','
    p, pos = probe_prompts([620], position='last')
    assert p[0][pos[0]-1] == '='


def test_probe_refuses_leakage():
    from wm_nb.core import WMError
    from wm_nb.probe import probe_layers
    from wm_nb.cities import load_cities
    c = load_cities()
    st = np.random.default_rng(0).normal(size=(1, len(c), 8)).astype(np.float32)
    with pytest.raises(WMError, match='in both the probe'):
        probe_layers(st, c, np.arange(100), np.arange(90, 120))


def test_walk_validity_on_a_walk_dataset(mix, tmp_path, great_circle_km):
    "wm_eval on a walk dataset of the model's own cities samples walks, scores them as stated, and writes the walk map."
    import pandas as pd
    d, exp, _, man, cities = mix
    src = Path(json.loads((exp/'wm_dataset.json').read_text())['path'])/'cities.csv'
    r = run('wm_dataset', 'walk', '--n_train', '50', '--n_val', '40', '--source', src, '--min_population', '0', '--keep_order',
            '--out', tmp_path/'ds', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ds = next((tmp_path/'ds').iterdir())
    r = run('wm_eval', exp/'final', '--dataset', ds, '--out', tmp_path/'ev', cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'random next city' in r.stdout
    m = json.loads((tmp_path/'ev'/'metrics_validation.json').read_text())
    assert m['task'] == 'walk' and m['n'] == 40
    assert m['random_next_city']['valid_rate'] == 1.0 and m['random_next_city']['hops_within_T'] < 0.2
    # the model's figures, recomputed from its sampled texts with an independent great-circle formula
    t = pd.read_csv(tmp_path/'ev'/'samples_validation.csv')
    ok = [list(map(int, x.replace('c_', '').split(','))) for x, v in zip(t.text, t.valid) if v]
    assert len(ok) == round(m['valid_rate']*40)
    hops = np.concatenate([great_circle_km(cities.lat[w[:-1]], cities.lon[w[:-1]], cities.lat[w[1:]], cities.lon[w[1:]]) for w in ok if len(w) > 1] or [np.empty(0)])
    if len(hops): assert np.isclose((hops <= 200).mean(), m['hops_within_T'])
    assert (tmp_path/'ev'/'walks_map_validation.png').exists()


def test_probe_bad_inputs(mix, tmp_path):
    d, exp, _, _, _ = mix
    assert 'not found' in one_error_line(run('wm_probe', tmp_path/'nope', cwd=tmp_path), 'wm_probe')
    assert 'not a model checkpoint' in one_error_line(run('wm_probe', tmp_path, cwd=tmp_path), 'wm_probe')
    assert '--position must be' in one_error_line(run('wm_probe', exp/'final', '--position', 'middle', cwd=tmp_path), 'wm_probe')
    r = run('wm_dataset', 'dist', '--n_train', '20', '--n_val', '5', '--out', tmp_path/'ds', cwd=tmp_path)
    ds = next((tmp_path/'ds').iterdir())
    assert 'distance' in one_error_line(run('wm_probe', exp/'final', '--dataset', ds, cwd=tmp_path), 'wm_probe')
    assert '--n_heldout must be' in one_error_line(run('wm_dataset', 'mix', '--n_train', '10', '--n_heldout', '0', '--out', tmp_path/'m', cwd=tmp_path), 'wm_dataset')
    assert not (tmp_path/'m').exists() or not any((tmp_path/'m').iterdir())
