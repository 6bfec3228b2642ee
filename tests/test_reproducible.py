"""Datasets are byte-for-byte reproducible across processes, and the seed matters."""
from __future__ import annotations
import pytest

ARGS = {'walk': ['--n_train', 20000, '--n_val', 100], 'dist': ['--n_train', 20000, '--n_val', 100]}
NAMES = {('walk', 3): 'srd200_100kplus_20000_3', ('dist', 3): 'dist_100kplus_20000_3',
         ('walk', 4): 'srd200_100kplus_20000_4', ('dist', 4): 'dist_100kplus_20000_4'}


@pytest.fixture(scope='module')
def runs(tmp_path_factory, cli_bg, hashes):
    """For seeds 3 (twice) and 4: `wm_dataset walk` and `wm_dataset dist` in separate processes (two at a time),
    each into its own folder. Returns {(label, task): {relative path: sha256}}."""
    cwd = tmp_path_factory.mktemp('repro')
    jobs = [(label, seed, task) for label, seed in [('a', 3), ('b', 3), ('c', 4)] for task in ('walk', 'dist')]
    results = {}
    for k in range(0, len(jobs), 2):
        procs = []
        for label, seed, task in jobs[k:k+2]:
            out = cwd/label
            procs.append(((label, seed, task, out), cli_bg('wm_dataset', task, *ARGS[task], '--seed', seed, '--out', out, cwd=cwd)))
        for (label, seed, task, out), p in procs:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err[-2000:]
            results[label, task] = hashes(out/NAMES[task, seed])
    return results


@pytest.mark.parametrize('task', ['walk', 'dist'])
def test_same_seed_same_bytes(runs, task):
    a, b = runs['a', task], runs['b', task]
    assert {'manifest.json', 'cities.csv', 'dataset_dict.json', 'train/data-00000-of-00001.arrow',
            'validation/data-00000-of-00001.arrow'} <= set(a)
    assert a == b, {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}


@pytest.mark.parametrize('task', ['walk', 'dist'])
def test_other_seed_other_bytes(runs, task):
    a, c = runs['a', task], runs['c', task]
    assert set(a) == set(c)
    for split in ('train', 'validation'):
        f = f'{split}/data-00000-of-00001.arrow'
        assert a[f] != c[f], f"{task} {split} data identical for seeds 3 and 4"
    assert a['cities.csv'] == c['cities.csv']   # the city table does not depend on the sampling seed
