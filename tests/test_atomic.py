"""A dataset write killed with SIGKILL leaves no dataset (only a hidden temporary folder), and the next write sweeps it."""
from __future__ import annotations
import os, signal, subprocess, sys, textwrap, time
from pathlib import Path

import numpy as np
import pytest

from wm_nb.core import WMError
from wm_nb.cities import Cities
from wm_nb.mixtures import load_dataset, save_dataset, make_manifest, build_mixture, normalise_spec

NAME = 'big'

# Writes a DatasetDict of `n` rows with the real `save_dataset` (atomic_dir + save_to_disk + cities + manifest).
WRITER = textwrap.dedent("""
    import sys, pyarrow as pa
    from datasets import Dataset, DatasetDict
    from datasets.table import InMemoryTable
    from wm_nb.cities import Cities
    from wm_nb.mixtures import make_manifest, save_dataset, normalise_spec
    out, n = sys.argv[1], int(sys.argv[2])
    cities = Cities(['a', 'b'], [0.0, 1.0], [0.0, 1.0], ['xx', 'xx'], [200000, 200000])
    text = pa.array(['dist(c_0,c_1)=157'], pa.string()).take(pa.array([0]*n))
    ids = pa.array([[0, 1]], pa.list_(pa.int32())).take(pa.array([0]*n))
    dsd = DatasetDict(train=Dataset(InMemoryTable(pa.table(dict(text=text, prompt=text, completion=text, task=pa.array(['dist']*n), cities=ids)))))
    man = make_manifest(cities, dict(spec=normalise_spec({'tasks': {'dist': n}}), tasks=['dist']), dsd)
    print('generated', flush=True)
    save_dataset(dsd, man, cities, out + '/' + 'big')
    print('saved', flush=True)
""")


def kill_mid_write(parent: Path, n: int, env: dict, deadline_s: float = 120):
    """Start the writer and SIGKILL it as soon as its `.big.tmp-<pid>` folder holds part of the Arrow data; returns
    (tmp path, returncode), or None when the write completed before the kill could land."""
    p = subprocess.Popen([sys.executable, '-c', WRITER, str(parent), str(n)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tmp = parent/f'.{NAME}.tmp-{p.pid}'
    t0 = time.monotonic()
    try:
        while p.poll() is None and time.monotonic() - t0 < deadline_s:
            if tmp.exists() and any(tmp.glob('train/*.arrow')):
                p.send_signal(signal.SIGKILL)
                break
            time.sleep(0.0005)
    finally:
        if p.poll() is None and not tmp.exists(): p.kill()
        p.wait()    # reap it: a zombie would still count as a live pid for the stale-folder sweep
    # the temporary folder survives only if the kill landed after it was made and before it was renamed
    if p.returncode == -signal.SIGKILL and tmp.exists(): return tmp, p.returncode
    assert p.returncode in (0, -signal.SIGKILL), f"writer failed with status {p.returncode}"
    return None


def test_killed_write_leaves_no_dataset_and_is_swept(tmp_path, subprocess_env):
    env = subprocess_env()
    res, n = None, 2_000_000
    for attempt in range(3):   # 2M, 6M, 18M rows
        parent = tmp_path/f'try{attempt}'
        parent.mkdir()
        res = kill_mid_write(parent, n, env)
        if res is not None: break
        n *= 3   # the write finished before the kill: give it more to write
    assert res is not None, "could not kill the writer mid-write"
    tmp, rc = res
    assert rc == -signal.SIGKILL
    dest = parent/NAME
    # killed mid-write: the temporary folder is still there, the dataset folder never appeared
    assert tmp.is_dir() and tmp.name.startswith(f'.{NAME}.tmp-')
    assert list(tmp.glob('train/*.arrow')), "the kill should have landed while the data was being written"
    assert not (tmp/'manifest.json').exists()
    assert not dest.exists()
    with pytest.raises(WMError, match='not found'): load_dataset(dest)
    # a live process's temporary folder must survive the sweep (it may still be writing)
    live = parent/f'.other.tmp-{os.getpid()}'
    live.mkdir()
    # a new, successful write into the same folder removes the stale temporary folder
    cities = Cities(['a', 'b', 'c'], [0.0, 1.0, 2.0], [0.0, 1.0, 2.0], ['xx']*3, [200000]*3)
    dsd, info, cities = build_mixture(cities, {'tasks': {'loc': 'all'}})
    save_dataset(dsd, make_manifest(cities, info, dsd), cities, dest)
    assert not tmp.exists(), "stale temporary folder of the killed writer was not swept"
    assert live.is_dir(), "the temporary folder of a live process was swept"
    assert sorted(p.name for p in parent.iterdir()) == sorted([NAME, live.name])
    back, man, c = load_dataset(dest)
    assert back['train']['text'] == dsd['train']['text'] and man['counts'] == {'train': 3}
    assert c.fingerprint() == cities.fingerprint()


def test_failed_write_leaves_nothing(tmp_path):
    "An exception inside atomic_dir removes the temporary folder and does not create the destination."
    from wm_nb.core import atomic_dir
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path/'x') as t:
            (t/'part').write_text('half')
            raise RuntimeError('boom')
    assert list(tmp_path.iterdir()) == []


def test_incomplete_folder_is_not_a_dataset(tmp_path):
    (tmp_path/'half').mkdir()
    (tmp_path/'half'/'dataset_dict.json').write_text('{"splits": ["train"]}')
    with pytest.raises(WMError, match='not a wm_nb dataset'): load_dataset(tmp_path/'half')
