"""The hub path of `wm_arxiv_prep`, without the internet. A loopback server started here stands in for the Hugging Face
Hub (huggingface_hub reads HF_ENDPOINT) and serves, in the hub's layout, a small tokenizer as `EleutherAI/pythia-70m`
(tokenizer.json, tokenizer_config.json, special_tokens_map.json, config.json, and model weights that must not be
fetched) and a small dataset as `ccdv/arxiv-classification` (Parquet per split under `no_ref/` and `data/`, named by the
dataset card's `configs`). The CLI runs in a subprocess with HF_HOME in a temporary folder; the tests check that both are
downloaded, cached and used, that a second run works offline from the cache (HF_HUB_OFFLINE=1, server stopped) and with
the hub unreachable, and what happens when neither hub nor cache has them."""
import hashlib, io, json, os, re, subprocess, sys, threading
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import urlsplit, unquote
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
NAMES = ['math.AC', 'cs.CV', 'math.GR', 'cs.AI']          # arXiv class names, as the real dataset's ClassLabel has them
SPLITS = ('train', 'validation', 'test')

class LoopbackHub:
    "The hub's API as huggingface_hub uses it: repo info, the file tree, and file resolution (HEAD/GET with commit and ETag)."
    def __init__(self, repos:dict):                       # {(repo_type, repo_id): {path: bytes}}
        self.repos, self.log = repos, []
        self.sha = {k: hashlib.sha1(json.dumps(sorted((p, hashlib.sha1(b).hexdigest()) for p, b in v.items())).encode()).hexdigest()
                    for k, v in repos.items()}
        self.server = ThreadingHTTPServer(('127.0.0.1', 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self): self.server.shutdown(); self.server.server_close()

    def answer(self, method:str, path:str):
        "(status, body, headers) of one request."
        self.log.append((method, path))
        m = re.fullmatch(r'/api/(model|dataset)s/([^/]+/[^/]+)(?:/(revision|tree)/([^/]+)(/.*)?)?', path)
        if m:
            key = (m[1], m[2])
            if key not in self.repos: return 404, b'{"error": "Repository not found"}', {'X-Error-Code': 'RepoNotFound'}
            files = self.repos[key]
            if m[3] in (None, 'revision'):
                info = dict(id=m[2], sha=self.sha[key], siblings=[dict(rfilename=p) for p in sorted(files)], private=False)
                return 200, json.dumps(info).encode(), {'Content-Type': 'application/json'}
            sub = (m[5] or '').strip('/')
            tree = [dict(type='file', oid=hashlib.sha1(b).hexdigest(), size=len(b), path=p) for p, b in sorted(files.items()) if p.startswith(sub)]
            return 200, json.dumps(tree).encode(), {'Content-Type': 'application/json'}
        m = re.fullmatch(r'/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)', path)
        if m:
            key = ('dataset' if m[1] else 'model', m[2])
            if key not in self.repos: return 404, b'', {'X-Error-Code': 'RepoNotFound'}
            if m[4] not in self.repos[key]: return 404, b'', {'X-Error-Code': 'EntryNotFound'}
            data = self.repos[key][m[4]]
            return 200, data, {'X-Repo-Commit': self.sha[key], 'ETag': f'"{hashlib.sha1(data).hexdigest()}"'}
        return 404, b'', {}

    def _handler(self):
        hub = self
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a): pass
            def do_HEAD(self): self.reply(False)
            def do_GET(self): self.reply(True)
            def reply(self, body:bool):
                status, data, headers = hub.answer(self.command, unquote(urlsplit(self.path).path))
                self.send_response(status)
                for k, v in {**headers, 'Content-Length': str(len(data))}.items(): self.send_header(k, v)
                self.end_headers()
                if body: self.wfile.write(data)
        return Handler

def parquet(texts, labels) -> bytes:
    import datasets
    feats = datasets.Features(text=datasets.Value('string'), label=datasets.ClassLabel(names=NAMES))
    buf = io.BytesIO(); datasets.Dataset.from_dict(dict(text=texts, label=labels), features=feats).to_parquet(buf)
    return buf.getvalue()

@pytest.fixture(scope='module')
def served(tmp_path_factory):
    "The two repositories (as bytes) and what the prepared folder must end up holding."
    from wm_nb.arxiv_data import make_corpus, train_bpe
    docs = make_corpus(4, 12, seed=3)
    split_of = lambda d: SPLITS[(int(d['id'][-4:]) >= 8) + (int(d['id'][-4:]) >= 10)]         # 8 train, 2 validation, 2 test per category
    rows = {s: [d for d in docs if split_of(d) == s] for s in SPLITS}
    tok = train_bpe([d['text'] for d in rows['train']], 300)
    d = tmp_path_factory.mktemp('tok'); tok.save_pretrained(d)
    cfg = json.loads((d/'tokenizer_config.json').read_text()) | dict(tokenizer_class='GPTNeoXTokenizer')   # as Pythia's names its class
    model = {'tokenizer.json': (d/'tokenizer.json').read_bytes(), 'tokenizer_config.json': json.dumps(cfg).encode(),
             'special_tokens_map.json': json.dumps(dict(bos_token='<|endoftext|>', eos_token='<|endoftext|>', unk_token='<|endoftext|>')).encode(),
             'config.json': json.dumps(dict(model_type='gpt_neox', architectures=['GPTNeoXForCausalLM'], vocab_size=300)).encode(),
             'model.safetensors': b'weights the tokenizer does not need' * 100}
    card = ("---\nconfigs:\n" + ''.join(f"- config_name: {c}\n  data_files:\n" + ''.join(f"  - split: {s}\n    path: {d_}/{s}-*\n" for s in SPLITS)
                                        for c, d_ in (('default', 'data'), ('no_ref', 'no_ref'))) + "---\n# arXiv classification (loopback copy)\n")
    data = {'README.md': card.encode()}
    for s in SPLITS:
        labels = [int(r['category'][3:]) for r in rows[s]]
        data[f'no_ref/{s}-00000-of-00001.parquet'] = parquet([r['text'] for r in rows[s]], labels)
        data[f'data/{s}-00000-of-00001.parquet'] = parquet([f"[{NAMES[l]}] " + r['text'] for r, l in zip(rows[s], labels)], labels)  # tags in the text
    return dict(repos={('model', 'EleutherAI/pythia-70m'): model, ('dataset', 'ccdv/arxiv-classification'): data}, rows=rows, tok_dir=d)

@pytest.fixture
def nowhere():
    "A hub URL where connections are refused (a loopback port bound but never listening)."
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); yield f"http://127.0.0.1:{s.getsockname()[1]}"

def env(tmp_path, hub, **extra):
    "A CLI environment with its own HF_HOME, the hub at `hub`, and no offline flags unless given."
    e = {k: v for k, v in os.environ.items() if not k.startswith(('HF_', 'HUGGINGFACE_', 'TRANSFORMERS_', 'DATASETS_'))}   # no cache, hub or offline setting leaks in
    e.update(HF_HOME=str(tmp_path/'hf'), HF_ENDPOINT=hub, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]),
             OMP_NUM_THREADS='1', HF_HUB_DISABLE_TELEMETRY='1')
    e.update(extra)
    return e

def prep(tmp_path, out, *args, e):
    "Run wm_arxiv_prep (this checkout's) with `--out tmp_path/out` and `args` in environment `e`."
    script = tmp_path/'wm_arxiv_prep.py'          # what pip writes for the console script (a `python -c` caller would not parse argv)
    script.write_text("import sys\nfrom wm_nb.arxiv_data import wm_arxiv_prep\nsys.exit(wm_arxiv_prep())\n")
    return subprocess.run([sys.executable, str(script), '--out', str(tmp_path/out), *map(str, args)], cwd=tmp_path, env=e,
                          capture_output=True, text=True, timeout=300)

def ok(r):
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    return r

def error_line(r, contains):
    assert r.returncode == 2 and 'Traceback' not in r.stderr, (r.returncode, r.stderr[-3000:])
    last = [l for l in r.stderr.splitlines() if l.strip()][-1]
    assert last.startswith('wm_arxiv_prep: error:') and contains in last, last
    return last

def manifest(folder): return json.loads((Path(folder)/'manifest.json').read_text())

def expected_tokens(served):
    "tokens.bin as the served tokenizer must write it: every paper of every split, in order."
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(served['tok_dir']))
    return np.concatenate([np.asarray(tok(r['text'], add_special_tokens=False)['input_ids'], np.uint16) for s in SPLITS for r in served['rows'][s]])

def test_hub_then_cache(served, tmp_path):
    hub = LoopbackHub(served['repos'])
    try:
        r = ok(prep(tmp_path, 'online', '--full_dataset', e=env(tmp_path, hub.url)))             # defaults: ccdv/arxiv-classification, --tokenizer auto
        error_line(prep(tmp_path, 'x', '--source', 'wm-nb/no-such-dataset', e=env(tmp_path, hub.url)), 'the hub answered HTTP 404')
    finally: hub.stop()
    m = manifest(tmp_path/'online')
    sha_tok, sha_data = hub.sha[('model', 'EleutherAI/pythia-70m')], hub.sha[('dataset', 'ccdv/arxiv-classification')]
    assert (m['tokenizer']['kind'], m['tokenizer']['loaded_from'], m['tokenizer']['revision']) == ('pythia', 'hub', sha_tok)
    assert (m['source_info']['loaded_from'], m['source_info']['config'], m['source_info']['revision']) == ('hub', 'no_ref', sha_data)
    assert 'WARNING' not in r.stderr and 'pythia tokenizer' in r.stdout
    got = {p for meth, p in hub.log if meth == 'GET' and '/resolve/' in p}
    assert {f"/EleutherAI/pythia-70m/resolve/{sha_tok}/tokenizer.json", f"/datasets/ccdv/arxiv-classification/resolve/{sha_data}/no_ref/test-00000-of-00001.parquet"} <= got
    assert not any('model.safetensors' in p or '/data/' in p for p in got)            # only the tokenizer, only the no_ref config
    cached = tmp_path/'hf'/'hub'/'models--EleutherAI--pythia-70m'/'snapshots'/sha_tok/'tokenizer.json'
    assert cached.read_bytes() == served['repos'][('model', 'EleutherAI/pythia-70m')]['tokenizer.json']
    assert (tmp_path/'hf'/'hub'/'datasets--ccdv--arxiv-classification'/'snapshots'/sha_data/'no_ref'/'train-00000-of-00001.parquet').exists()
    tokens = np.fromfile(tmp_path/'online'/'tokens.bin', np.uint16)
    np.testing.assert_array_equal(tokens, expected_tokens(served))                  # the served tokenizer on the served no_ref texts
    index = [json.loads(l) for l in (tmp_path/'online'/'index.jsonl').read_text().splitlines()]
    assert {s: sum(i['split'] == s for i in index) for s in SPLITS} == {s: len(served['rows'][s]) for s in SPLITS}
    assert {i['category'] for i in index} == set(NAMES)                               # class labels became their names
    # the hub is gone: offline mode, then an unreachable hub, both from the cache, both the same folder
    for name, extra, why in [('offline', dict(HF_HUB_OFFLINE='1'), 'offline mode'), ('unreachable', {}, 'hub unreachable')]:
        ok(prep(tmp_path, name, '--full_dataset', e=env(tmp_path, hub.url, **extra)))
        m2 = manifest(tmp_path/name)
        for part in (m2['tokenizer'], m2['source_info']):
            assert part['loaded_from'] == 'cache' and part['reason'].startswith(why), part
        assert (m2['tokenizer']['revision'], m2['source_info']['revision']) == (sha_tok, sha_data)
        assert (tmp_path/name/'tokens.bin').read_bytes() == (tmp_path/'online'/'tokens.bin').read_bytes()

def test_neither_hub_nor_cache(served, tmp_path, nowhere):
    "No hub, empty cache: auto falls back to a BPE in one WARNING line (and says so in the manifest); pythia and the hub dataset stop in one line."
    from wm_nb.arxiv_data import write_corpus, make_corpus
    write_corpus(make_corpus(3, 10, seed=0), tmp_path/'c.jsonl')
    r = ok(prep(tmp_path, 'auto', '--source', tmp_path/'c.jsonl', '--vocab_size', 300, e=env(tmp_path, nowhere)))
    warnings = [l for l in r.stderr.splitlines() if l.startswith('WARNING')]
    assert len(warnings) == 1 and 'hub unreachable' in warnings[0] and 'NOT comparable with Pythia' in warnings[0], r.stderr[-2000:]
    t = manifest(tmp_path/'auto')['tokenizer']
    assert (t['kind'], t['fallback_from'], t['comparable_with_pythia']) == ('bpe', 'pythia', False) and 'hub unreachable' in t['fallback_reason']
    assert 'NOT comparable' in r.stdout                                                    # the printed folder says it too
    r = ok(prep(tmp_path, 'bpe', '--source', tmp_path/'c.jsonl', '--tokenizer', 'bpe', '--vocab_size', 300, e=env(tmp_path, nowhere, HF_HUB_OFFLINE='1')))
    assert 'WARNING' not in r.stderr and 'fallback_from' not in manifest(tmp_path/'bpe')['tokenizer']
    error_line(prep(tmp_path, 'p', '--source', tmp_path/'c.jsonl', '--tokenizer', 'pythia', e=env(tmp_path, nowhere)), 'could not be loaded: hub unreachable')
    error_line(prep(tmp_path, 'h', e=env(tmp_path, nowhere, HF_HUB_OFFLINE='1')), 'could not load ccdv/arxiv-classification: offline mode (HF_HUB_OFFLINE=1); not in the local cache')
    assert not (tmp_path/'p').exists() and not (tmp_path/'h').exists()
