"""Tasks and mixtures from the command line: mixture specs with held-out and new cities build with their manifests and
splits; datasets written by wm_nb 0.1 still load; every task trains from its baby config; and the task registry is
the only place a task is defined."""
import json
from pathlib import Path
import numpy as np
import pytest

from helpers import run


SPEC = """seed: 3
heldout: {n: 40}
new_cities: {n: 25, lat: -45.0, lon: -120.0, sd_km: 400, seed: 1}
tasks:
  loc: {n: all, val: 20}
  dist: {n: 3000, val: 200}
  angle: {n: 2000, val: 100, mention_heldout: false}
  inside: {n: 1000, val: 100, heldout_rows: 50}
  walk: {n: 500, threshold_km: 300, max_len: 8}
"""


@pytest.fixture(scope='module')
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp('mix')
    (d/'mix.yaml').write_text(SPEC)
    (d/'ft.yaml').write_text(SPEC.replace('seed: 3\n', 'seed: 3\nphase: finetune\nreplay: {fraction: 0.25}\n'))
    for spec in ('mix.yaml', 'ft.yaml'):
        r = run('wm_dataset', '--spec', spec, '--max_cities', '600', '--out', 'ds', cwd=d)
        assert r.returncode == 0, r.stderr[-3000:]
    from wm_nb.mixtures import load_dataset
    return {n: load_dataset(d/'ds'/f'{n}_100kplus_first600_3') for n in ('mix', 'ft')}


def test_mixture_manifest_and_splits(built):
    dsd, man, cities = built['mix']
    assert man['format'] == 2 and man['tasks'] == ['loc', 'dist', 'angle', 'inside', 'walk']
    assert len(cities) == 625 and len(man['new_cities']) == 25 and man['new_cities'][0] == 600 and len(man['heldout_cities']) == 40
    assert list(cities.name[600:603]) == ['atlantis_0', 'atlantis_1', 'atlantis_2'] and set(cities.country[600:]) == {'XX'}
    assert set(dsd) == {'train', 'validation', 'heldout_loc', 'heldout_dist', 'heldout_angle', 'heldout_inside', 'heldout_walk',
                        'new_loc', 'new_dist', 'new_angle', 'new_inside', 'new_walk'}
    assert man['task_counts']['train'] == {'loc': 600 - 40, 'dist': 3000, 'angle': 2000, 'inside': 1000, 'walk': 500}
    assert man['counts']['heldout_inside'] == 50 and man['counts']['heldout_loc'] == 40 and man['counts']['new_loc'] == 25


def _rows(ds, task=None):
    return [(t, list(c)) for t, c in zip(ds['task'], ds['cities']) if task is None or t == task]


def test_heldout_and_new_cities_are_where_the_spec_says(built):
    dsd, man, cities = built['mix']
    held, new = set(man['heldout_cities']), set(man['new_cities'])
    train = _rows(dsd['train'])
    assert not any(c[0] in held for t, c in train if t == 'loc')                 # held-out coordinates never trained on
    assert any(held & set(c) for t, c in train if t == 'dist')                    # ... while relational rows mention them
    assert not any(held & set(c) for t, c in train if t == 'angle')               # unless the spec says no
    assert not any(new & set(c) for t, c in train)                                # pre-training never mentions a new city
    assert all(held & set(c) for _, c in _rows(dsd['heldout_dist']))              # every held-out row mentions one
    assert all(new & set(c) for _, c in _rows(dsd['new_angle']))
    keys = lambda rows: {tuple(c) for _, c in rows}
    for t in ('dist', 'angle', 'inside'):                                         # evaluation rows are never trained on
        assert not keys(_rows(dsd['train'], t)) & (keys(_rows(dsd['validation'], t)) | keys(_rows(dsd[f'heldout_{t}'])) | keys(_rows(dsd[f'new_{t}'])))
    inside = [c for t, c in zip(dsd['train']['task'], dsd['train']['completion']) if t == 'inside']
    assert inside.count('true') == 500                                            # still exactly half true


def test_finetune_mixture(built):
    pre, ft = built['mix'], built['ft']
    (dsd, man, cities), (dp, mp, cp) = ft, pre
    assert cities.fingerprint() == cp.fingerprint()                               # one table for both phases
    new = set(man['new_cities'])
    train = _rows(dsd['train'])
    with_new = [bool(new & set(c)) for _, c in train]
    assert sum(with_new) == 25 + 3000 + 2000 + 1000 + 500                         # every fine-tuning row of every task mentions a new city ...
    assert len(train) - sum(with_new) == round(sum(with_new)*0.25/0.75)          # ... except the replayed quarter
    for t in ('dist', 'angle', 'inside'):                                         # the same before/after evaluation rows
        assert dsd[f'new_{t}']['text'] == dp[f'new_{t}']['text']


def test_mixture_trains_and_evaluates_per_task(built, tmp_path):
    ds = str(Path(built['mix'][0]['train'].cache_files[0]['filename']).parents[1])
    r = run('wm_train', 'loc_baby', '--name', 'mixrun', '--data.dataset', ds, '--train.max_steps', '6', '--train.eval_every', '3',
            '--train.save_every', '3', '--model.max_position_embeddings', '128', cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp_path/'outputs/experiments/mixrun/metrics.json').read_text())
    assert sorted(m['eval']) == ['angle', 'dist', 'inside', 'loc']                 # the validation split's tasks (walk has no val rows)
    assert {'heldout_loc', 'heldout_walk', 'new_dist'} <= set(m['eval_heldout'])
    assert m['eval']['inside']['floor']['rule'] == 'most frequent training answer' and m['eval']['angle']['floor']['rule'] == 'median training answer'


@pytest.mark.parametrize('task', ['dist', 'angle', 'compass', 'triarea', 'perim', 'cross', 'inside'])
def test_every_task_trains_from_its_baby_config(tmp_path, task):
    r = run('wm_train', f'{task}_baby', '--train.epochs', '1', cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp_path/f'outputs/experiments/{task}_baby/metrics.json').read_text())
    assert m['tasks'] == [task] and 'floor' in m['eval'][task] and m['best_metric'].startswith(f'eval_{task}_')


def test_datasets_of_wm_nb_0_1_still_load(tmp_path):
    "A dataset folder as the previous release wrote it (manifest task 'distance', columns city_a/city_b) loads in this format."
    import pyarrow as pa
    from datasets import Dataset, DatasetDict
    from wm_nb.cities import load_cities
    from wm_nb.mixtures import load_dataset
    cities = load_cities().subset(np.arange(50))
    d = tmp_path/'dist_old'; d.mkdir()
    rows = dict(text=['dist(c_1,c_2)=100', 'dist(c_3,c_4)=200'], prompt=['dist(c_1,c_2)=', 'dist(c_3,c_4)='], completion=['100', '200'],
                city_a=[1, 3], city_b=[2, 4])
    DatasetDict(train=Dataset.from_dict(rows), validation=Dataset.from_dict({k: v[:1] for k, v in rows.items()})).save_to_disk(str(d))
    cities.to_csv(d/'cities.csv')
    (d/'manifest.json').write_text(json.dumps(dict(task='distance', n_train=2, n_val=1, seed=42, validation_overlaps_train=False,
                                                   cities=dict(source=cities.source, n=50, fingerprint=cities.fingerprint()), wm_nb_version='0.1.0')))
    dsd, man, c = load_dataset(d)
    assert man['tasks'] == ['dist'] and dsd['train']['task'] == ['dist', 'dist'] and [list(x) for x in dsd['train']['cities']] == [[1, 2], [3, 4]]
    assert dsd['train']['text'] == rows['text']


def test_one_place_defines_a_task():
    "No module outside tasks/walks branches on task names: pipeline, train, evaluate and probe ask the Task object."
    root = Path(__file__).resolve().parents[1]/'wm_nb'
    import re
    for mod in ('pipeline', 'train', 'evaluate', 'probe', 'mixtures', 'runs'):
        src = (root/f'{mod}.py').read_text()
        hits = re.findall(r"""(?:task|name|t|d\.task)\s*==\s*['"](?:loc|walk|dist|angle|compass|triarea|perim|cross|inside|location|distance|mix)['"]""", src)
        assert not hits, (mod, hits)
