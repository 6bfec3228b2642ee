"""The arXiv K-category experiment end to end on the generated corpus: prepare through the CLI,
S3 upload/download against a moto server on loopback, the download fallback, reproducible windows
with DataLoader workers, K selection, every bad input (one line, exit 2, nothing half-written), the
sweep (seeds, category seeds, both budget modes) + wm_eval commands, and what preparation and training
report (duplicate texts across splits, budgets that repeat the data many times). The hub path is in
test_arxiv_hub.py."""
import csv, json, os, pickle, shutil, socket, subprocess, sys, tempfile
from pathlib import Path
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MODULE = {'wm_arxiv_corpus': 'wm_nb.arxiv_data', 'wm_arxiv_prep': 'wm_nb.arxiv_data', 'wm_arxiv_sweep': 'wm_nb.arxiv_train',
          'wm_train': 'wm_nb.train', 'wm_eval': 'wm_nb.evaluate'}

def env(**extra):
    e = dict(os.environ, HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1', TRANSFORMERS_OFFLINE='1', MPLBACKEND='Agg',
             OMP_NUM_THREADS='1', PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]), WANDB_MODE='offline')
    e.update(extra)
    return e

_SCRIPTS = Path(tempfile.mkdtemp(prefix='wm_arxiv_scripts_'))

def script(prog):
    "The installed console script, or (checkout not reinstalled yet) the same two lines pip would write for it."
    if (BIN/prog).exists(): return str(BIN/prog)
    p = _SCRIPTS/prog
    if not p.exists(): p.write_text(f"import sys\nfrom {MODULE[prog]} import {prog}\nsys.exit({prog}())\n")
    return str(p)

def run(prog, *args, cwd, extra_env=None, timeout=300):
    "Run console script `prog` (with this checkout first on the path)."
    cmd = [sys.executable, script(prog)]
    return subprocess.run(cmd + [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env(**(extra_env or {})))

def ok(r):
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    return r

def one_error_line(r, prog, contains):
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-3000:])
    assert 'Traceback' not in r.stderr, r.stderr[-3000:]
    lines = [l for l in r.stderr.splitlines() if l.strip() and not l.startswith(('\r', 'tokenize', 'write'))]
    assert lines[-1].startswith(f'{prog}: error:') and contains in lines[-1], lines[-3:]
    return lines[-1]

@pytest.fixture(scope='module')
def work(tmp_path_factory):
    "The generated corpus prepared through the two commands."
    d = tmp_path_factory.mktemp('arxiv')
    ok(run('wm_arxiv_corpus', '--out', d/'corpus.jsonl', '--n_categories', 8, '--papers_per_category', 40, cwd=d))
    r = ok(run('wm_arxiv_prep', '--source', d/'corpus.jsonl', '--out', d/'prepared', '--full_dataset', '--tokenizer', 'bpe',
               '--vocab_size', 512, '--num_proc', 2, cwd=d))
    assert '320 papers' in r.stdout
    return d

def files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(Path(root).rglob('*')) if p.is_file()}

def test_prepared_folder(work):
    from wm_nb.arxiv_data import Prepared
    P = Prepared(work/'prepared')
    man = json.loads((work/'prepared'/'manifest.json').read_text())
    assert man['tokenizer']['kind'] == 'bpe' and man['tokenizer']['size'] <= 65_535 and man['n_papers'] == 320
    splits = json.loads((work/'prepared'/'splits.json').read_text())
    assert len(splits['categories']) == 8 and all(len(splits['splits'][s]['categories']) == 8 for s in ('train', 'validation', 'test'))
    assert sum(splits['splits'][s]['tokens'] for s in splits['splits']) == P.n_tokens
    lines = (work/'prepared'/'index.jsonl').read_text().splitlines()
    assert set(json.loads(lines[0])) == {'id', 'category', 'split', 'offset', 'length'}

def test_max_examples_per_split(work, tmp_path):
    ok(run('wm_arxiv_prep', '--source', work/'corpus.jsonl', '--out', tmp_path/'p', '--max_examples_per_split', 5, '--tokenizer', 'bpe', '--vocab_size', 300, cwd=tmp_path))
    counts = [json.loads(l)['split'] for l in (tmp_path/'p'/'index.jsonl').read_text().splitlines()]
    assert {s: counts.count(s) for s in set(counts)} == {'train': 5, 'validation': 5, 'test': 5}

# --- storage ---------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def s3(work):
    "A moto S3 server on 127.0.0.1 and the environment that points boto at it."
    pytest.importorskip('s3fs'); moto_server = pytest.importorskip('moto.server')
    import boto3
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address='127.0.0.1', port=port, verbose=False)
    server.start()
    e = dict(AWS_ENDPOINT_URL=f'http://127.0.0.1:{port}', AWS_ACCESS_KEY_ID='testing', AWS_SECRET_ACCESS_KEY='testing',
             AWS_DEFAULT_REGION='us-east-1', AWS_EC2_METADATA_DISABLED='true')
    boto3.client('s3', endpoint_url=e['AWS_ENDPOINT_URL'], aws_access_key_id='testing', aws_secret_access_key='testing',
                 region_name='us-east-1').create_bucket(Bucket='wm-test')
    yield e
    server.stop()

def test_s3_roundtrip(work, s3, tmp_path):
    r = ok(run('wm_arxiv_prep', '--download_from', 's3://wm-test/none', '--source', work/'corpus.jsonl', '--out', tmp_path/'a',
               '--full_dataset', '--tokenizer', 'bpe', '--vocab_size', 512, '--upload_to', 's3://wm-test/runs/prepared', cwd=tmp_path, extra_env=s3))
    assert 'uploaded' in r.stdout
    import boto3
    keys = {o['Key'] for o in boto3.client('s3', endpoint_url=s3['AWS_ENDPOINT_URL'], aws_access_key_id='testing', aws_secret_access_key='testing',
                                           region_name='us-east-1').list_objects_v2(Bucket='wm-test')['Contents']}
    assert {'runs/prepared/tokens.bin', 'runs/prepared/index.jsonl', 'runs/prepared/splits.json', 'runs/prepared/tokenizer/tokenizer.json'} <= keys
    r = ok(run('wm_arxiv_prep', '--download_from', 's3://wm-test/runs/prepared', '--source', 'no/such-dataset', '--out', tmp_path/'b', cwd=tmp_path, extra_env=s3))
    assert 'downloaded' in r.stdout
    assert files(tmp_path/'b') == files(tmp_path/'a')

def test_download_fallback(work, tmp_path):
    "A download that fails says so in one line and prepares locally; the result equals a plain local preparation."
    for url in [(tmp_path/'nowhere').as_uri(), 'nosuchproto://x/y']:
        out = tmp_path/f"p{len(url)}"
        r = ok(run('wm_arxiv_prep', '--download_from', url, '--source', work/'corpus.jsonl', '--out', out, '--full_dataset',
                   '--tokenizer', 'bpe', '--vocab_size', 512, cwd=tmp_path))
        assert 'download failed' in r.stderr and 'preparing locally instead' in r.stderr
        assert files(out)['tokens.bin'] == files(work/'prepared')['tokens.bin']

def test_download_copy_error_is_one_clear_error(work, tmp_path, monkeypatch):
    "A transfer that breaks mid-copy (network, permissions) is a WMError (so the CLI falls back), and leaves nothing behind."
    import fsspec.implementations.local as fl
    from wm_nb.arxiv_data import download_prepared
    from wm_nb.core import WMError
    def broken(self, *a, **k): raise OSError('connection reset by peer')
    monkeypatch.setattr(fl.LocalFileSystem, 'get_file', broken)
    with pytest.raises(WMError, match='download of .* failed .*connection reset'): download_prepared((work/'prepared').as_uri(), tmp_path/'y')
    assert not (tmp_path/'y').exists()

def test_download_incomplete_folder_keeps_nothing(work, tmp_path):
    from wm_nb.arxiv_data import download_prepared
    from wm_nb.core import WMError
    remote = tmp_path/'remote'; shutil.copytree(work/'prepared', remote); (remote/'index.jsonl').unlink()
    with pytest.raises(WMError, match='not a complete prepared folder'): download_prepared(remote.as_uri(), tmp_path/'x')
    assert not (tmp_path/'x').exists()

# --- windows ---------------------------------------------------------------------------------

def _batch_and_pid(batch):
    import torch
    return np.stack([b['input_ids'] for b in batch]), torch.utils.data.get_worker_info().dataset._pid, os.getpid()

def test_windows_with_workers(work):
    import torch
    from wm_nb.arxiv_data import RandomWindowDataset
    ds = RandomWindowDataset(work/'prepared', 'train', seed=3, length=256)
    ref = ds.windows(np.arange(256))                                    # also opens the memmap in this process
    assert ds._mm is not None and pickle.loads(pickle.dumps(ds))._mm is None
    dl = torch.utils.data.DataLoader(ds, batch_size=32, num_workers=2, collate_fn=_batch_and_pid)
    got, pids = [], set()
    for w, mm_pid, pid in dl:
        assert mm_pid == pid != os.getpid()                               # each worker opened its own memmap
        got.append(w); pids.add(pid)
    assert len(pids) == 2
    np.testing.assert_array_equal(np.concatenate(got), ref)              # same windows as in one process
    np.testing.assert_array_equal(RandomWindowDataset(work/'prepared', 'train', seed=3, length=256).windows(np.arange(256)), ref)
    assert not np.array_equal(RandomWindowDataset(work/'prepared', 'train', seed=4, length=256).windows(np.arange(256)), ref)

def test_windows_inside_papers_and_short_rule(work):
    from wm_nb.arxiv_data import Prepared, RandomWindowDataset
    P = Prepared(work/'prepared')
    ds = RandomWindowDataset(P, 'validation', window=150, target_categories=['cat01'], seed=0, length=2000)
    p, start = ds.draw(np.arange(2000))
    paper = ds.pool[p]
    assert set(P.cat_codes[paper]) == {P.categories.index('cat01')}
    assert (start >= P.offsets[paper]).all() and (start + 150 <= P.offsets[paper] + P.lengths[paper]).all()
    short = (P.splits == 'validation') & (P.cat_codes == P.categories.index('cat01')) & (P.lengths < 150)
    assert ds.n_short == short.sum() and not np.isin(np.flatnonzero(short), paper).any()

def test_k_selection_deterministic_and_nested():
    cats = [f"c{i}" for i in range(11)]
    code = "from wm_nb.arxiv_data import select_categories as s; print([s([f'c{i}' for i in range(11)], k, 7) for k in (1, 2, 4, 8, 11)])"
    outs = {subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env(PYTHONHASHSEED=str(h))).stdout for h in (1, 2)}
    assert len(outs) == 1                                                 # the same sets in any process
    from wm_nb.arxiv_data import select_categories
    sets = [select_categories(cats, k, 7) for k in range(1, 12)]
    assert all(sets[i] == sets[i + 1][:i + 1] for i in range(10))        # nested as K grows
    assert set(sets[-1]) == set(cats) and len(sets[-1]) == 11
    assert len({tuple(select_categories(cats, 3, s)) for s in range(10)}) > 1

# --- bad input -------------------------------------------------------------------------------

def test_bad_inputs_one_line(work, tmp_path):
    P = work/'prepared'
    base = ['--arxiv.prepared', P, '--out_dir', tmp_path/'exp']
    one_error_line(run('wm_arxiv_sweep', 'arxiv_baby', '--ks', '1,9', *base, cwd=tmp_path), 'wm_arxiv_sweep', 'K = 9 categories asked for, but the corpus has 8')
    one_error_line(run('wm_train', 'arxiv_baby', '--arxiv.k', 12, *base, cwd=tmp_path), 'wm_train', 'K = 12 categories asked for')
    one_error_line(run('wm_train', 'arxiv_baby', '--arxiv.window', 5000, '--model.max_position_embeddings', 5000, *base, cwd=tmp_path),
                   'wm_train', 'window 5000 is longer than every paper')
    for name, spoil, msg in [('missing_bin', lambda d: (d/'tokens.bin').unlink(), 'tokens.bin is missing'),
                             ('missing_index', lambda d: (d/'index.jsonl').unlink(), 'index.jsonl is missing'),
                             ('short_bin', lambda d: (d/'tokens.bin').write_bytes((d/'tokens.bin').read_bytes()[:-100]), 'tokens.bin is corrupt'),
                             ('bad_index', lambda d: (d/'index.jsonl').write_text((d/'index.jsonl').read_text()[:-30] + '\n'), 'is corrupt')]:
        d = tmp_path/name; shutil.copytree(P, d); spoil(d)
        one_error_line(run('wm_train', 'arxiv_baby', '--arxiv.prepared', d, '--out_dir', tmp_path/'exp', cwd=tmp_path), 'wm_train', msg)
    one_error_line(run('wm_arxiv_prep', '--source', work/'corpus.jsonl', '--out', tmp_path/'x', '--category_column', 'label', cwd=tmp_path),
                   'wm_arxiv_prep', "no column 'label'")
    one_error_line(run('wm_arxiv_prep', '--source', tmp_path/'none.jsonl', '--out', tmp_path/'x', cwd=tmp_path), 'wm_arxiv_prep', 'not found')
    one_error_line(run('wm_eval', tmp_path/'bad_index', cwd=tmp_path), 'wm_eval', 'not a model folder')
    assert not (tmp_path/'exp').exists() and not (tmp_path/'x').exists()   # nothing half-written
    assert not list(tmp_path.glob('.*tmp*'))

def test_category_without_papers(tmp_path):
    "A category whose only paper is in train has no validation/test papers: one line when K reaches it."
    from wm_nb.arxiv_data import make_corpus, write_corpus, select_categories
    docs = make_corpus(3, 20, seed=0) + [dict(id='lonely-1', text=make_corpus(1, 1, min_words=300, short_fraction=0, seed=5)[0]['text'], category='lonely')]
    write_corpus(docs, tmp_path/'c.jsonl')
    ok(run('wm_arxiv_prep', '--source', tmp_path/'c.jsonl', '--out', tmp_path/'p', '--full_dataset', '--tokenizer', 'bpe', '--vocab_size', 300, cwd=tmp_path))
    k = 1 + select_categories(['cat00', 'cat01', 'cat02', 'lonely'], 4, 0).index('lonely')
    one_error_line(run('wm_arxiv_sweep', 'arxiv_baby', '--ks', k, '--arxiv.prepared', tmp_path/'p', '--out_dir', tmp_path/'exp', cwd=tmp_path),
                   'wm_arxiv_sweep', "category 'lonely' has no papers in the validation split")
    assert not (tmp_path/'exp').exists()

def test_token_id_beyond_uint16(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from wm_nb.arxiv_data import write_corpus
    t = Tokenizer(models.WordLevel({f"w{i}": i for i in range(70_000)} | {'[UNK]': 70_000}, unk_token='[UNK]'))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=t).save_pretrained(tmp_path/'tok')
    write_corpus([dict(id=f"p{i}", text=f"w1 w2 w{60_000 + 2000 * i}", category='a') for i in range(6)], tmp_path/'c.jsonl')
    one_error_line(run('wm_arxiv_prep', '--source', tmp_path/'c.jsonl', '--out', tmp_path/'p', '--tokenizer', tmp_path/'tok', cwd=tmp_path),
                   'wm_arxiv_prep', 'is beyond uint16')
    assert not (tmp_path/'p').exists() and not list(tmp_path.glob('.p.tmp*'))

# --- sweep and evaluation --------------------------------------------------------------------

def test_sweep_and_eval_cli(work, tmp_path):
    """Two K, two training seeds, two category seeds, both budget modes: the headline is the shared category's loss (on the
    same windows in every run), the K_min run is trained once for both modes, and wm_eval reproduces a run's test loss."""
    from wm_nb.arxiv_data import Prepared, select_categories
    r = ok(run('wm_arxiv_sweep', 'arxiv_baby', '--arxiv.prepared', work/'prepared', '--ks', '1,2', '--seeds', '0,1', '--category_seeds', '0,1',
               '--budget_modes', 'both', cwd=tmp_path))
    assert 'WARNING' not in r.stderr and 'shared_loss' in r.stdout
    exp = tmp_path/'outputs'/'experiments'
    sw = json.loads((exp/'arxiv_baby_sweep'/'sweep.json').read_text())
    cats = Prepared(work/'prepared').categories
    assert (sw['budget_modes'], sw['seeds'], sw['category_seeds']) == (['fixed_total', 'per_category'], [0, 1], [0, 1])
    assert sw['shared_categories'] == {str(c): select_categories(cats, 1, c) for c in (0, 1)} and sw['shared_categories']['0'] != sw['shared_categories']['1']
    assert len(sw['rows']) == 16 and len(list(exp.glob('arxiv_baby_k*'))) == 12            # 4 seed pairs x (K=1 for both modes, K=2 twice)
    assert sorted({(row['seed'], row['category_seed']) for row in sw['rows']}) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    windows = {}
    for row in sw['rows']:
        m = json.loads((exp/row['run']/'metrics.json').read_text())
        shared = sw['shared_categories'][str(row['category_seed'])]
        assert m['categories'][:1] == shared and (m['seed'], m['category_seed']) == (row['seed'], row['category_seed'])
        assert row['shared_loss'] == pytest.approx(m['test']['per_category'][shared[0]]) and row['own_loss'] == pytest.approx(m['test']['loss'])
        budget = 60 * 16 * 101 * (row['K'] if row['budget_mode'] == 'per_category' else 1)
        assert row['tokens'] == m['tokens_seen'] == budget and row['best_tokens'] == m['best_step'] * 16 * 101 <= budget
        hist = json.loads((exp/row['run']/'log_history.json').read_text())
        assert row['best_val_loss'] == next(h['eval_loss'] for h in hist if h.get('step') == m['best_step'] and 'eval_loss' in h)
        assert sum(m['best_tokens_per_category'].values()) == row['best_tokens']
        assert len(list((exp/row['run']/'checkpoints').glob('checkpoint-*'))) <= 3      # capped (2) + the best
        windows.setdefault(shared[0], set()).add((m['test']['windows_per_category'], m['test']['seed']))
    assert all(len(v) == 1 for v in windows.values())                                   # identical windows of the shared category
    summary = list(csv.DictReader(open(exp/'arxiv_baby_sweep'/'summary.csv')))
    assert [(s['budget_mode'], s['K'], s['n_runs']) for s in summary] == [(m, k, '4') for m in ('fixed_total', 'per_category') for k in ('1', '2')]
    per = list(csv.DictReader(open(exp/'arxiv_baby_sweep'/'per_category.csv')))
    assert len(per) == 4 * (1 + 2 + 2) and (exp/'arxiv_baby_sweep'/'loss_vs_k.png').stat().st_size > 0
    # wm_eval on a final model reproduces the run's test loss; on a step checkpoint it works too
    run_dir = exp/next(row['run'] for row in sw['rows'] if row['K'] == 2)
    m2 = json.loads((run_dir/'metrics.json').read_text())
    r = ok(run('wm_eval', run_dir/'final', cwd=tmp_path))    # defaults: the run's own test windows and seed
    e = json.loads((run_dir/'final'/'eval'/'metrics_test.json').read_text())
    assert e['loss'] == pytest.approx(m2['test']['loss'], abs=1e-4) and 'perplexity' in r.stdout
    ck = sorted((run_dir/'checkpoints').glob('checkpoint-*'))[0]
    ok(run('wm_eval', ck, '--split', 'validation', '--n', 64, cwd=tmp_path))
    assert (ck/'eval'/'metrics_validation.json').exists()
    # the same sweep again refuses to overwrite, in one line
    one_error_line(run('wm_arxiv_sweep', 'arxiv_baby', '--arxiv.prepared', work/'prepared', '--ks', '1,2', '--seeds', '0,1', cwd=tmp_path),
                   'wm_arxiv_sweep', 'already has checkpoints')
    one_error_line(run('wm_arxiv_sweep', 'arxiv_baby', '--arxiv.prepared', work/'prepared', '--budget_modes', 'total', cwd=tmp_path),
                   'wm_arxiv_sweep', 'budget modes are fixed_total, per_category or both')

# --- what preparation and training report ----------------------------------------------------

def test_duplicates_across_splits_reported(tmp_path):
    "A text that appears in two splits (whitespace aside) is reported in one WARNING line and in the manifest; nothing is dropped."
    from wm_nb.arxiv_data import make_corpus, write_corpus
    docs = [d | dict(split=s) for d, s in zip(make_corpus(2, 9, seed=0), ['train'] * 12 + ['validation'] * 3 + ['test'] * 3)]
    docs.append(dict(id='copy-of-0', text='  ' + docs[0]['text'].replace(' ', '\n', 3), category=docs[0]['category'], split='test'))
    write_corpus(docs, tmp_path/'c.jsonl')
    r = ok(run('wm_arxiv_prep', '--source', tmp_path/'c.jsonl', '--out', tmp_path/'p', '--full_dataset', '--tokenizer', 'bpe', '--vocab_size', 300, cwd=tmp_path))
    warnings = [l for l in r.stderr.splitlines() if l.startswith('WARNING')]
    assert len(warnings) == 1 and '2 papers share their text with a paper of another split' in warnings[0] and 'copy-of-0' in warnings[0], r.stderr[-2000:]
    d = json.loads((tmp_path/'p'/'manifest.json').read_text())['duplicates']
    assert (d['across_splits'], d['papers_across_splits'], d['within_split']) == (1, 2, 0)
    assert d['examples'] == [[f"train:{docs[0]['id']}", 'test:copy-of-0']] and '19 papers' in r.stdout

def test_many_epochs_warning(tmp_path):
    "A budget that reads the training papers many times says so in one line, with the epochs also in metrics.json."
    from wm_nb.arxiv_data import make_corpus, write_corpus, Prepared, select_categories
    write_corpus(make_corpus(2, 12, min_words=150, max_words=200, short_fraction=0, seed=1), tmp_path/'c.jsonl')
    ok(run('wm_arxiv_prep', '--source', tmp_path/'c.jsonl', '--out', tmp_path/'p', '--full_dataset', '--tokenizer', 'bpe', '--vocab_size', 300, cwd=tmp_path))
    r = ok(run('wm_train', 'arxiv_baby', '--arxiv.k', 1, '--arxiv.prepared', tmp_path/'p', '--out_dir', tmp_path/'exp', cwd=tmp_path))
    P = Prepared(tmp_path/'p')
    pool = int(P.lengths[P.papers('train', select_categories(P.categories, 1, 0))].sum())
    m = json.loads((tmp_path/'exp'/'arxiv_baby'/'metrics.json').read_text())
    assert m['epochs'] == pytest.approx(60 * 16 * 101 / pool) and m['epochs'] > 10
    warnings = [l for l in r.stderr.splitlines() if l.startswith('WARNING')]
    assert len(warnings) == 1 and f"{pool:,} training tokens of its 1 category {m['epochs']:,.0f} times" in warnings[0], r.stderr[-2000:]
    assert m['short_papers_left_out'] == {'train': 0, 'validation': 0, 'test': 0}
