"""Does it learn the map: the held-out walk mix, wm_probe with its controls on any task's prompt and across training
snapshots, walk validity and the walk-neighbour floor, through the CLI on the tiny `walk_loc_baby` config, plus leakage
checks."""
import json
import numpy as np
import pandas as pd
import pytest

from helpers import run, one_error_line, tree


@pytest.fixture(scope='module')
def mix(tmp_path_factory):
    "A walk_loc_baby experiment trained through the CLI (300 cities, 30 of them held out), with snapshots."
    from wm_nb.mixtures import load_dataset
    from wm_nb.evaluate import trained_on
    d = tmp_path_factory.mktemp('mix')
    r = run('wm_train', 'walk_loc_baby', '--train.epochs', '1', '--train.snapshot_every', '10', cwd=d)
    assert r.returncode == 0, r.stderr[-3000:]
    exp = d/'outputs'/'experiments'/'walk_loc_baby'
    dsd, man, cities = load_dataset(trained_on(exp/'final')['path'])
    return d, exp, dsd, man, cities


def _ids(ds): return [c[0] for c in ds['cities']]


def test_mix_dataset_holds_out_locations_only(mix):
    _, _, dsd, man, cities = mix
    assert man['tasks'] == ['walk', 'loc'] and len(man['heldout_cities']) == 30
    train = dsd['train'].to_pandas()
    held = set(man['heldout_cities'])
    assert set(_ids(dsd['heldout_loc'])) == held
    assert held.isdisjoint(c[0] for c in train.loc[train.task == 'loc', 'cities'])   # no held-out location is trained on
    assert held.isdisjoint(_ids(dsd['validation']))                                  # nor used to select the model
    assert (train.task == 'loc').sum() == len(cities) - 30
    walks = np.concatenate(train.loc[train.task == 'walk', 'cities'].to_numpy())
    assert set(walks) & held                                                         # the walks do visit held-out cities
    assert set(_ids(dsd['heldout_walk'])) <= held                                    # held-out walks start at held-out cities


def test_final_metrics_report_heldout_and_walks(mix):
    _, exp, _, _, _ = mix
    m = json.loads((exp/'metrics.json').read_text())
    h = m['eval_heldout']['heldout_loc']
    assert h['n'] == 30 and h['split'] == 'heldout_loc' and h['scored'].startswith('held-out cities')
    assert {'floor', 'random_city', 'walk_neighbours'} <= set(h) and 0 < h['walk_neighbours']['coverage'] <= 1
    w = m['eval_heldout']['heldout_walk']
    assert {'valid_rate', 'hops_within_T', 'repeat_rate', 'floor'} <= set(w) and w['floor']['rule'] == 'random next city'
    hist = json.loads((exp/'log_history.json').read_text())
    assert any('eval_heldout_loc_median_km' in x for x in hist)        # tracked during training, not selected on
    assert json.loads((exp/'metrics.json').read_text())['best_metric'] == 'eval_loc_median_km'


def test_walk_neighbour_floor_is_the_mean_of_known_co_walkers(mix):
    "Recomputed by hand for a few held-out cities, independently of the sparse implementation."
    from wm_nb.geo import spherical_centroid
    _, exp, dsd, man, cities = mix
    t = pd.read_csv(exp/'eval_samples_heldout_loc_loc.csv')
    train = dsd['train'].to_pandas()
    walks = [list(w) for w in train.loc[train.task == 'walk', 'cities']]
    known = {c[0] for c in train.loc[train.task == 'loc', 'cities']}
    for row in t.head(8).itertuples():
        nb = sorted({x for w in walks if row.city in w for x in w if x != row.city and x in known})
        la, lo = spherical_centroid(cities.lat[nb], cities.lon[nb]) if nb else spherical_centroid(cities.lat[sorted(known)], cities.lon[sorted(known)])
        assert np.isclose(la, row.walk_nbr_lat) and np.isclose(lo, row.walk_nbr_lon), row.city


def test_wm_eval_heldout_split(mix):
    d, exp, _, _, _ = mix
    r = run('wm_eval', exp/'final', '--split', 'heldout_loc', cwd=d)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'held-out cities' in r.stdout and 'walk nbrs' in r.stdout and 'centroid' in r.stdout
    out = exp/'eval'/'final_walk600_loc_h30_100kplus_first300_42_heldout_loc'
    assert json.loads((out/'metrics.json').read_text())['tasks']['loc']['n'] == 30 and (out/'error_map.png').exists()


def test_wm_probe_every_task_with_controls_and_maps(mix):
    d, exp, _, man, _ = mix
    r = run('wm_probe', exp/'final', cwd=d)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'untrained' in r.stdout and 'shuffled' in r.stdout and 'walk prompt' in r.stdout and 'loc prompt' in r.stdout
    out = exp/'probe'/'final_walk600_loc_h30_100kplus_first300_42'
    s = json.loads((out/'probe.json').read_text())
    assert s['n_test'] == 30 and s['test_cities'].startswith('held out') and sorted(s['tasks']) == ['loc', 'walk']
    tab = pd.read_csv(out/'probe_layers.csv')
    assert sorted(tab.task.unique()) == ['loc', 'walk'] and len(tab) == 2*3       # 2 layers + embeddings, per task
    per_city = pd.read_csv(out/'probe_cities_loc.csv')
    assert sorted(per_city.city) == sorted(man['heldout_cities'])
    for f in ['probe_layers_loc.png', 'probe_map_walk.png', 'probe_vs_generated.png']:
        assert (out/f).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and (out/f).stat().st_size > 10_000, f


def test_wm_probe_over_training_gives_the_curve_and_time_to_map(mix):
    d, exp, _, _, _ = mix
    snaps = sorted((exp/'snapshots').glob('step-*'), key=lambda p: int(p.name.split('-')[1]))
    assert snaps[0].name == 'step-0' and len(snaps) >= 2
    assert [json.loads((s/'snapshot.json').read_text())['rows_seen'] for s in snaps] == [int(s.name.split('-')[1])*32 for s in snaps]
    r = run('wm_probe', exp, cwd=d)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'no map: best R²' in r.stdout or 'map (R² >= 0.8)' in r.stdout
    out = exp/'probe'/'over_training'
    df = pd.read_csv(out/'probe_over_training.csv')
    assert len(df) == 2*len(snaps) and {'r2', 'shuffled_r2', 'untrained_r2', 'rows_seen', 'seconds', 'r2_layer0'} <= set(df.columns)
    ttm = json.loads((exp/'metrics.json').read_text())['time_to_map']
    assert sorted(ttm) == ['loc', 'walk'] and all(('step' in v) == v['reached'] for v in ttm.values())
    assert (out/'probe_over_training.png').stat().st_size > 10_000


def test_time_to_map_is_the_first_snapshot_over_the_threshold():
    from wm_nb.probe import time_to_map
    df = pd.DataFrame(dict(task='dist', step=[0, 10, 20, 30], rows_seen=[0, 640, 1280, 1920], seconds=[0., 60, 120, 180], r2=[0.0, 0.5, 0.85, 0.95]))
    t = time_to_map(df)['dist']
    assert (t['reached'], t['step'], t['rows_seen'], t['minutes']) == (True, 20, 1280, 2.0)
    t = time_to_map(df.assign(r2=[0.0, 0.1, 0.3, 0.2]))['dist']
    assert (t['reached'], t['best_r2'], t['best_step']) == (False, 0.3, 20)


def test_probe_controls_are_computed_as_stated(mix):
    "Each column of the table is recomputed from its own source: trained states, a fresh model of the same architecture, permuted coordinates."
    import torch
    from wm_nb.trainer import load_model
    from wm_nb.tasks import get_task
    from wm_nb.probe import run_probe, untrained_like, probe_split, probe_layers, probe_prompts, hidden_states
    from wm_nb.geo import unit_xyz
    _, exp, dsd, man, cities = mix
    model, tok = load_model(exp/'final')
    u = untrained_like(model, seed=0)
    assert (u.config.num_hidden_layers, u.config.hidden_size, u.config.vocab_size) == (model.config.num_hidden_layers, model.config.hidden_size, model.config.vocab_size)
    assert not all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), u.state_dict().values()))
    fit, test, _ = probe_split(man, len(cities))
    assert not set(fit) & set(test)
    r = run_probe(model, tok, cities, fit, test, 'loc', seed=0)
    ids = np.concatenate([fit, test]); p, pos = probe_prompts(get_task('loc'), ids)
    def full(m):
        s = hidden_states(m, tok, p, pos)
        f = np.zeros((s.shape[0], len(cities), s.shape[2]), np.float32); f[:, ids] = s
        return f
    trained, untrained = full(model), full(untrained_like(model, seed=0))
    assert not np.allclose(trained, untrained)
    t_tr, _, _ = probe_layers(trained, cities, fit, test)
    t_un, _, _ = probe_layers(untrained, cities, fit, test)
    perm = np.random.default_rng(0).permutation(len(cities))
    t_sh, _, _ = probe_layers(trained, cities, fit, test, targets=unit_xyz(cities.lat, cities.lon)[perm])
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
    t, preds, probes = probe_layers(np.stack([signal, noise]).astype(np.float32), c, fit, test)
    assert t.r2[0] > 0.95 and t.median_km[0] < 300 and t.fit_loo_r2[0] > 0.95
    assert t.r2[1] < 0.05 and t.median_km[1] > 3000
    ts, _, _ = probe_layers(signal[None].astype(np.float32), c, fit, test, targets=xyz[rng.permutation(len(c))])
    assert ts.r2[0] < 0.05
    assert preds.shape == (2, len(test), 3)
    # probes fitted once can be applied to other states (a model after fine-tuning): same states, same scores
    again, _, _ = probe_layers(np.stack([signal, noise]).astype(np.float32), c, fit, test, probes=probes)
    assert np.allclose(again.r2, t.r2)


def test_probe_positions():
    from wm_nb.tasks import get_task
    from wm_nb.probe import probe_prompts
    p, pos = probe_prompts(get_task('loc'), [3, 620, 6201])
    assert [q[k-1] for q, k in zip(p, pos[:, 0])] == [')', ')', ')']           # <bos> shifts characters by one token
    for t, ch in [('dist', ','), ('angle', ','), ('inside', ','), ('walk', ',')]:
        p, pos = probe_prompts(get_task(t), [620])
        assert p[0].endswith('c_620' + ch) and p[0][pos[0, 0]-1] == ch, t
    p, pos = probe_prompts(get_task('dist'), [620], 'concat')
    assert [p[0][k-1] for k in pos[0]] == ['0', ',']


def test_probe_refuses_leakage():
    from wm_nb.core import WMError
    from wm_nb.probe import probe_layers
    from wm_nb.cities import load_cities
    c = load_cities()
    st = np.random.default_rng(0).normal(size=(1, len(c), 8)).astype(np.float32)
    with pytest.raises(WMError, match='in both the probe'):
        probe_layers(st, c, np.arange(100), np.arange(90, 120))


def test_walk_validity_on_the_heldout_walks(mix, great_circle_km):
    "The walks the model wrote from held-out start cities, scored as stated: recomputed with an independent great-circle formula."
    _, exp, _, _, cities = mix
    d = exp/'eval'
    r = run('wm_eval', exp/'final', '--split', 'heldout_walk', '--out', d/'walks', cwd=exp)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'random next city' in r.stdout
    mm = json.loads((d/'walks'/'metrics.json').read_text())['tasks']['walk']
    assert mm['n'] == 30 and mm['floor']['valid_rate'] == 1.0 and mm['floor']['hops_within_T'] < 0.2
    t = pd.read_csv(d/'walks'/'samples_walk.csv')
    ok = [list(map(int, x.replace('c_', '').split(','))) for x, v in zip(t.text, t.valid) if v]
    assert len(ok) == round(mm['valid_rate']*30)
    hops = np.concatenate([great_circle_km(cities.lat[w[:-1]], cities.lon[w[:-1]], cities.lat[w[1:]], cities.lon[w[1:]]) for w in ok if len(w) > 1] or [np.empty(0)])
    if len(hops): assert np.isclose((hops <= 200).mean(), mm['hops_within_T'])
    assert (d/'walks'/'walks_map.png').exists()


def test_probe_bad_inputs(mix, tmp_path):
    d, exp, _, _, _ = mix
    assert 'not found' in one_error_line(run('wm_probe', tmp_path/'nope', cwd=tmp_path), 'wm_probe')
    assert 'not a model folder' in one_error_line(run('wm_probe', tmp_path, cwd=tmp_path), 'wm_probe')
    assert '--position must be' in one_error_line(run('wm_probe', exp/'final', '--position', 'middle', cwd=tmp_path), 'wm_probe')
    assert "--tasks dist: the dataset has no dist rows" in one_error_line(run('wm_probe', exp/'final', '--tasks', 'dist', cwd=tmp_path), 'wm_probe')
    before = tree(exp)   # an experiment's probe takes no single-model options: refused, not silently ignored, and nothing written
    line = one_error_line(run('wm_probe', exp, '--out', tmp_path/'o', '--probe_from', exp/'final', cwd=tmp_path), 'wm_probe', cwd=exp, before=before)
    assert '--out, --probe_from apply to one model folder' in line and 'probe/over_training/' in line, line
    assert not (tmp_path/'o').exists()
    assert 'heldout.n must be between 1 and' in one_error_line(run('wm_dataset', 'loc', '--all', '--n_heldout', '7000', '--out', tmp_path/'m', cwd=tmp_path), 'wm_dataset')
    assert not (tmp_path/'m').exists()


def test_new_cities_fine_tune_then_probe_with_the_probe_of_before(tmp_path):
    "Pre-train without the new cities, fine-tune from that model on rows that mention them, and probe the new cities with the probe fitted before."
    spec = "seed: 5\nnew_cities: {n: 20, lat: 35.0, lon: -35.0, sd_km: 300, seed: 1}\ntasks:\n  dist: {n: 3000, val: 100, new_rows: 50}\n"
    (tmp_path/'pre.yaml').write_text(spec)
    (tmp_path/'ft.yaml').write_text(spec + "phase: finetune\nreplay: {fraction: 0.2}\n")
    for s in ('pre', 'ft'):
        r = run('wm_dataset', '--spec', f'{s}.yaml', '--max_cities', '200', '--out', 'ds', cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
    common = ['--model.max_position_embeddings', '64', '--train.epochs', '1', '--train.eval_every', '0.5', '--train.save_every', '0.5']
    r = run('wm_train', 'dist_baby', '--name', 'pre', '--data.dataset', 'ds/pre_100kplus_first200_5', *common, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    pre = tmp_path/'outputs/experiments/pre/final'
    r = run('wm_train', 'dist_baby', '--name', 'ft', '--data.dataset', 'ds/ft_100kplus_first200_5', '--train.init_from', pre, '--train.lr', '1e-3', *common, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((tmp_path/'outputs/experiments/ft/metrics.json').read_text())
    assert 'dist' in m['eval'] and 'new_dist' in m['eval_heldout']                       # old cities and new cities, per task
    assert m['eval_heldout']['new_dist']['scored'] == 'rows mentioning a new city, never trained on'
    r = run('wm_probe', tmp_path/'outputs/experiments/ft/final', '--probe_from', pre, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'new cities: R²' in r.stdout
    out = tmp_path/'outputs/experiments/ft/probe/final_ft_100kplus_first200_5'
    s = json.loads((out/'probe.json').read_text())
    assert s['probe_from'] == str(pre) and {'new_r2', 'new_median_km', 'new_centre_lat'} <= set(s['tasks']['dist'])
    assert (out/'probe_new_cities_dist.png').stat().st_size > 10_000
    per_city = pd.read_csv(out/'probe_cities_dist.csv')
    assert (per_city.kind == 'new').sum() == 20 and set(per_city[per_city.kind == 'new'].city) == set(range(200, 220))
