"""wm_train, wm_eval and the model folder end to end: the loc_baby config through the CLI (it learns; a run with
learning rate 0 does not), a final/ folder that plain transformers calls use correctly, SIGKILL mid-training then
--resume (only the remaining steps run, earlier checkpoints untouched), 2 processes under torchrun against 1 (equal
weights), fine-tuning from a checkpoint, tracking with the resolved config, and the one-line errors of the model side."""
import hashlib, json, re, shutil, signal, subprocess, sys, time
from pathlib import Path
import numpy as np
import pytest

from helpers import BIN, ENV as _ENV, run as _run, tree, one_error_line

ENV = dict(_ENV, WANDB_MODE='')   # tracking stays off unless a test turns it on
ENV.pop('WANDB_API_KEY', None)


def run(*args, env=None, **kw): return _run(*args, env=env or ENV, **kw)


def weights(path):
    from safetensors.numpy import load_file
    return load_file(str(Path(path)/'model.safetensors'))


@pytest.fixture(scope='module')
def baby(tmp_path_factory):
    d = tmp_path_factory.mktemp('train')
    r = run('wm_train', 'loc_baby', cwd=d)
    assert r.returncode == 0, r.stderr[-3000:]
    return d


def exp_of(d, name='loc_baby'): return d/'outputs'/'experiments'/name


def test_experiment_folder(baby):
    exp = exp_of(baby)
    for f in ['config.yaml', 'curves.png', 'error_map.png', 'metrics.json', 'log_history.json', 'eval_samples_loc.csv',
              'final/config.json', 'final/model.safetensors', 'final/tokenizer.json', 'final/README.md', 'final/cities.csv', 'final/wm_dataset.json']:
        assert (exp/f).exists(), f
    assert not (exp/'final'/'training_args.bin').exists()
    m = json.loads((exp/'metrics.json').read_text())
    assert m['params'] > 0 and m['global_step'] == m['steps']['max_steps'] and m['steps_run'] == m['global_step']
    loc = m['eval']['loc']
    assert {'floor', 'random_city', 'parse_rate', 'median_km'} <= set(loc) and loc['scored'].startswith('recall')
    assert not Path(m['dataset']).is_absolute() and not Path(json.loads((exp/'final'/'wm_dataset.json').read_text())['path']).is_absolute()
    cfg = json.loads((exp/'final'/'config.json').read_text())
    assert cfg['architectures'] == ['LlamaForCausalLM'] and cfg['attention_bias'] is True     # described as what it is


def test_model_card(baby):
    exp = exp_of(baby)
    card = (exp/'final'/'README.md').read_text()
    m = json.loads((exp/'metrics.json').read_text())
    from wm_nb.mixtures import load_dataset
    _, man, cities = load_dataset((exp/'final'/json.loads((exp/'final'/'wm_dataset.json').read_text())['path']).resolve())
    assert card.startswith('---\n') and 'library_name: transformers' in card
    assert 'Llama-architecture' in card and 'Qwen2' not in card
    assert man['cities']['fingerprint'] in card and '`loc(c_' in card and 'AutoModelForCausalLM.from_pretrained' in card
    assert 'recall' in card and f"{m['eval']['loc']['floor']['median_km']:,.0f} km" in card      # metrics beside the floor, said what they are
    assert 'learning_rate' not in card and 'lr: 0.003' in card                                    # the wm_nb config, not the Trainer's
    from wm_nb.cities import load_cities
    assert load_cities(exp/'final'/'cities.csv', min_population=0, keep_order=True).fingerprint() == cities.fingerprint()


PLAIN = r"""
import json, math, sys, csv
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
final = sys.argv[1]
tok, model = AutoTokenizer.from_pretrained(final), AutoModelForCausalLM.from_pretrained(final)
rows = list(csv.DictReader(open(final + '/cities.csv')))
out = []
for i, r in enumerate(rows):
    x = math.floor((math.radians(float(r['longitude'])) + math.pi) * 1000); y = math.floor((math.radians(float(r['latitude'])) + math.pi/2) * 1000)
    ids = tok(f'loc(c_{i})=', return_tensors='pt')
    gen = model.generate(**ids, max_new_tokens=10, do_sample=False)
    out.append(dict(city=i, truth=f'{x},{y}', answer=tok.decode(gen[0, ids['input_ids'].shape[1]:], skip_special_tokens=True), n_ids=ids['input_ids'].shape[1]))
pipe = pipeline('text-generation', model=model, tokenizer=tok)
out[0]['pipeline'] = pipe('loc(c_0)=', max_new_tokens=10, do_sample=False, return_full_text=False)[0]['generated_text']
print(json.dumps(out))
"""


def test_plain_transformers_calls_answer_cities(baby):
    "No wm_nb code: AutoTokenizer/AutoModelForCausalLM/generate/pipeline on final/ give the trained answers, right for many cities."
    final = exp_of(baby)/'final'
    r = subprocess.run([sys.executable, '-c', PLAIN, str(final)], capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert all(o['n_ids'] == 1 + len(f"loc(c_{o['city']})=") for o in out)       # <bos> + the prompt: no <eos> after it
    right = [o for o in out if o['answer'] == o['truth']]
    assert len(right) >= 8, f"only {len(right)} of {len(out)} cities answered exactly: {out[:5]}"
    import pandas as pd
    ours = pd.read_csv(exp_of(baby)/'eval_samples_train_loc.csv', dtype={'completion': str}, keep_default_na=False).set_index('city')['completion']
    assert [o['answer'] for o in out] == [ours[o['city']] for o in out]      # wm_nb's own evaluation saw the same answers
    assert out[0]['pipeline'] == out[0]['answer']


def learned(exp) -> tuple[bool, str]:
    "Did a location run learn? Its validation loss ends well below its first value and its median error below the centroid's."
    hist = json.loads((exp/'log_history.json').read_text())
    ev = [h['eval_loss'] for h in hist if 'eval_loss' in h]
    m = json.loads((exp/'metrics.json').read_text())['eval']['loc']
    ok = ev[-1] < 0.5*ev[0] and m['median_km'] is not None and m['median_km'] < m['floor']['median_km']
    return ok, f"eval loss {ev[0]:.3f} -> {ev[-1]:.3f}; median {m['median_km']} km vs centroid {m['floor']['median_km']:.0f} km"


def test_it_learns_and_lr_0_does_not(baby, tmp_path):
    ok, why = learned(exp_of(baby))
    assert ok, why
    r = run('wm_train', 'loc_baby', '--name', 'frozen', '--train.lr', '0', cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    ok0, why0 = learned(exp_of(tmp_path, 'frozen'))
    assert not ok0, f"a run with learning rate 0 passed the learning check: {why0}"
    for f in ['metrics.json', 'final/README.md']:       # nothing parses for this model: reports say n/a, never nan
        assert not re.search(r'\bnan\b', (exp_of(tmp_path, 'frozen')/f).read_text(), re.I), f
    assert not re.search(r'\bnan\b', r.stdout, re.I)


# --- resume ---------------------------------------------------------------------------------------------------------
LONG = ['--train.save_every', '50', '--train.eval_every', '50', '--train.save_total_limit', '20']


def _files(ckpt):
    return {p.relative_to(ckpt).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in sorted(ckpt.rglob('*')) if p.is_file()}


def test_sigkill_then_resume_runs_only_the_remaining_steps(tmp_path):
    r = run('wm_train', 'loc_baby', '--name', 'straight', *LONG, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    exp = exp_of(tmp_path, 'killed')
    p = subprocess.Popen([str(BIN/'wm_train'), 'loc_baby', '--name', 'killed', *LONG], cwd=tmp_path, env=ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 400
    while time.time() < deadline and p.poll() is None:
        if (exp/'checkpoints'/'checkpoint-150'/'trainer_state.json').exists(): break
        time.sleep(0.05)
    assert p.poll() is None, "the run finished before it could be killed"
    p.send_signal(signal.SIGKILL); p.wait()
    assert not (exp/'metrics.json').exists()                           # it really died mid-training
    done = sorted(q.name for q in (exp/'checkpoints').glob('checkpoint-*') if (q/'optimizer.pt').exists() and (q/'trainer_state.json').exists())
    last = max(int(n.split('-')[1]) for n in done)
    before = {n: _files(exp/'checkpoints'/n) for n in done}
    # an incomplete newer checkpoint (as a kill during saving leaves): it must be ignored, not crash the resume
    broken = exp/'checkpoints'/f'checkpoint-{last + 50}'
    shutil.copytree(exp/'checkpoints'/f'checkpoint-{last}', broken); (broken/'optimizer.pt').unlink()
    r = run('wm_train', 'loc_baby', '--name', 'killed', *LONG, cwd=tmp_path)
    assert 'pass --resume' in one_error_line(r, 'wm_train')               # no silent restart
    r = run('wm_train', 'loc_baby', '--name', 'killed', '--resume', *LONG, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f'resuming from {exp/"checkpoints"/f"checkpoint-{last}"}' in r.stdout or f'checkpoint-{last}' in r.stdout
    m = json.loads((exp/'metrics.json').read_text())
    assert (m['resumed_from_step'], m['steps_run'], m['global_step']) == (last, 300 - last, 300)   # only the remaining steps ran
    for n, files in before.items():                                     # what was written before the kill is untouched
        if (exp/'checkpoints'/n).exists(): assert _files(exp/'checkpoints'/n) == files, n
    def final_losses(e):
        hist = json.loads((e/'log_history.json').read_text())
        return [h['eval_loss'] for h in hist if 'eval_loss' in h][-1], [h['loss'] for h in hist if 'loss' in h][-1]
    (se, sl), (ke, kl) = final_losses(exp_of(tmp_path, 'straight')), final_losses(exp)
    # same seed, same data order (the Trainer restores RNG states and skips seen batches): equal to float noise
    assert abs(ke - se) <= 1e-3*abs(se) and abs(kl - sl) <= 1e-3*abs(sl), (ke, se, kl, sl)


# --- torchrun -------------------------------------------------------------------------------------------------------
SHORT = ['--train.max_steps', '20', '--train.eval_every', '10', '--train.save_every', '10']


def test_two_processes_give_the_weights_of_one(tmp_path):
    """From an empty folder, 2 processes under torchrun (global batch 16 = 2 x 8) build the dataset once and end with the
    weights of the 1-process run with batch 16. Tolerance: both runs see the same rows in every step (the sampler's
    permutation is split between the processes); what differs is only the order of float32 additions (gradient
    all-reduce, per-process loss sums), about 1e-7 relative per step. After 20 AdamW steps of lr 3e-3 that stays below
    1e-5 absolute, while one step of training moves weights by ~1e-3: a wrong batch, a double-counted or dropped
    row would be 100x beyond the tolerance (checked below against the same run's step-10 weights)."""
    one_dir, two_dir = tmp_path/'one', tmp_path/'two'
    one_dir.mkdir(); two_dir.mkdir()
    r1 = run('wm_train', 'loc_baby', '--name', 'one', *SHORT, cwd=one_dir)
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = subprocess.run([str(BIN/'torchrun'), '--nproc_per_node=2', '--no-python', str(BIN/'wm_train'), 'loc_baby', '--name', 'two', *SHORT],
                        cwd=two_dir, capture_output=True, text=True, timeout=600, env=ENV)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert r2.stdout.count('parameters;') == 1                       # one announcement: only rank 0 speaks
    ds = [p.name for p in (two_dir/'outputs'/'datasets').iterdir() if not p.name.startswith('.')]
    assert ds == ['loc_100kplus_first32_all_42'] and not list((two_dir/'outputs').rglob('*.tmp-*'))   # built once, nothing half-written
    m1 = json.loads((exp_of(one_dir, 'one')/'metrics.json').read_text()); m2 = json.loads((exp_of(two_dir, 'two')/'metrics.json').read_text())
    assert (m1['world_size'], m2['world_size'], m1['global_step'], m2['global_step']) == (1, 2, 20, 20)
    a, b = weights(exp_of(one_dir, 'one')/'checkpoints'/'checkpoint-20'), weights(exp_of(two_dir, 'two')/'checkpoints'/'checkpoint-20')
    diff = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert diff < 1e-5, diff
    earlier = weights(exp_of(one_dir, 'one')/'checkpoints'/'checkpoint-10')
    assert max(float(np.abs(a[k] - earlier[k]).max()) for k in a) > 100*1e-5     # the tolerance tells training steps apart


# --- fine-tuning, tracking ------------------------------------------------------------------------------------------
def test_init_from_starts_from_the_checkpoint(baby, tmp_path):
    final = exp_of(baby)/'final'
    r = run('wm_train', 'loc_baby', '--name', 'ft', '--train.init_from', final, '--train.lr', '0', '--train.max_steps', '2',
            '--train.eval_every', '1', '--train.save_every', '1', cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = weights(final), weights(exp_of(tmp_path, 'ft')/'final')
    assert all(np.array_equal(a[k], b[k]) for k in a)
    bad = run('wm_train', 'loc_baby', '--name', 'ft2', '--train.init_from', final, '--model.hidden_size', '16', '--model.intermediate_size', '32', cwd=tmp_path)
    assert 'another architecture than the config' in one_error_line(bad, 'wm_train')


def test_wandb_runs_offline_with_the_resolved_config(tmp_path):
    env = dict(ENV, HOME=str(tmp_path))
    r = run('wm_train', 'loc_baby', '--train.report_to', 'wandb', '--train.max_steps', '4', '--train.eval_every', '2', '--train.save_every', '2',
            cwd=tmp_path, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = list(exp_of(tmp_path).rglob('offline-run-*/run-*.wandb'))
    assert runs, "no offline wandb run was written"
    # the offline run log holds the config update as JSON text after the key `wm_nb` (wandb 0.2x+ keeps no config.yaml offline)
    raw = runs[0].read_bytes()
    k = raw.rfind(b'wm_nb'); start = raw.find(b'{"name"', k)
    assert k >= 0 and start > k, "the run's config has no wm_nb section"
    wm, _ = json.JSONDecoder().raw_decode(raw[start:].decode('utf-8', errors='replace'))
    assert wm['data']['task'] == 'loc' and wm['data']['max_cities'] == 32 and wm['train']['max_steps'] == 4 and wm['model']['hidden_size'] == 32


def test_tensorboard(tmp_path):
    r = run('wm_train', 'loc_baby', '--train.report_to', 'tensorboard', *SHORT, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert list(exp_of(tmp_path).rglob('events.out.tfevents*'))


def test_distance_run_reports_the_median_floor(tmp_path):
    r = run('wm_train', 'dist_baby', cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((exp_of(tmp_path, 'dist_baby')/'metrics.json').read_text())['eval']['dist']
    assert m['floor']['rule'] == 'median training answer' and m['floor']['mean_abs_err'] > 1000 and 'floor' in r.stdout


# --- wm_eval --------------------------------------------------------------------------------------------------------
def test_eval_outputs_are_named_by_checkpoint_dataset_and_split(baby):
    final = exp_of(baby)/'final'
    for split in ('validation', 'train'):
        r = run('wm_eval', final, '--split', split, cwd=baby)
        assert r.returncode == 0, r.stderr[-2000:]
        assert 'centroid' in r.stdout and 'recall' in r.stdout
    ev = exp_of(baby)/'eval'
    names = sorted(p.name for p in ev.iterdir() if not p.name.startswith('.'))
    assert names == ['final_loc_100kplus_first32_all_42_train', 'final_loc_100kplus_first32_all_42_validation'], names
    t = json.loads((ev/names[0]/'metrics.json').read_text())
    assert t['tasks']['loc']['n'] == 32 and (ev/names[0]/'error_map.png').exists() and (ev/names[0]/'samples_loc.csv').exists()


def test_other_data_is_refused_unless_asked(baby, tmp_path):
    final = exp_of(baby)/'final'
    r = run('wm_dataset', 'loc', '--all', '--n_val', '5', '--max_cities', '40', '--out', tmp_path/'ds', cwd=tmp_path)     # another city table
    assert r.returncode == 0, r.stderr
    other = tmp_path/'ds'/'loc_100kplus_first40_all_42'
    r = run('wm_dataset', 'dist', '--n_train', '50', '--n_val', '10', '--max_cities', '32', '--out', tmp_path/'ds', cwd=tmp_path)  # another task
    dist = tmp_path/'ds'/'dist_100kplus_first32_50_42'
    before = tree(tmp_path)
    for prog in ('wm_eval', 'wm_probe'):
        line = one_error_line(run(prog, final, '--dataset', other, cwd=tmp_path), prog, cwd=tmp_path, before=before)
        assert 'city table' in line and '--allow_other_data' in line
    line = one_error_line(run('wm_eval', final, '--dataset', dist, cwd=tmp_path), 'wm_eval', cwd=tmp_path, before=before)
    assert 'task dist (the model was trained on loc)' in line
    r = run('wm_eval', final, '--dataset', other, '--allow_other_data', '--out', tmp_path/'crossed', cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith('CROSSED: city table')
    assert json.loads((tmp_path/'crossed'/'metrics.json').read_text())['crossed']


def test_bad_inputs(baby, tmp_path):
    exp = exp_of(baby)
    cases = [
        (['wm_train', 'loc_baby', '--train.learning_rate', '1'], "did you mean 'train.lr'"),
        (['wm_train', 'loc_baby', '--name', 'nothing', '--resume'], 'no checkpoint to resume'),
        (['wm_train', 'loc_baby', '--data.dataset', tmp_path/'missing'], 'not found'),
        (['wm_train', 'loc_baby', '--data.task', 'angel'], "did you mean 'angle'"),
        (['wm_train', 'loc_baby', '--train.best_metric', 'dist_mean_abs_err'], 'has no dist rows'),
        (['wm_eval', tmp_path], 'not a model folder'),
        (['wm_eval', tmp_path/'nope'], 'not found'),
        (['wm_eval', exp/'final', '--split', 'test'], "no 'test' split"),
        (['wm_probe', tmp_path/'nope'], 'not found'),
        (['wm_probe', exp/'final', '--position', 'middle'], '--position must be one of after, concat, digit'),
        (['wm_probe', exp], 'no snapshots/'),
    ]
    for args, needle in cases:
        before = tree(tmp_path)
        line = one_error_line(run(*args, cwd=tmp_path), args[0], cwd=tmp_path, before=before)
        assert needle in line, (args, line)


def test_config_that_disagrees_with_its_weights_is_one_line(baby, tmp_path):
    bad = tmp_path/'badmodel'; shutil.copytree(exp_of(baby)/'final', bad)
    c = json.loads((bad/'config.json').read_text()); c['vocab_size'] = 40; (bad/'config.json').write_text(json.dumps(c))
    before = tree(tmp_path)
    for prog in ('wm_eval', 'wm_probe'):
        line = one_error_line(run(prog, bad, cwd=tmp_path), prog, cwd=tmp_path, before=before)
        assert str(bad) in line and 'model.embed_tokens.weight is [44, 32] in model.safetensors but the config implies [40, 32]' in line, line
    tok = tmp_path/'badtok'; shutil.copytree(exp_of(baby)/'final', tok)        # a tokenizer whose vocabulary is not the model's
    tj = json.loads((tok/'tokenizer.json').read_text()); tj['model']['vocab']['zz'] = 44; (tok/'tokenizer.json').write_text(json.dumps(tj))
    assert 'vocabulary' in one_error_line(run('wm_eval', tok, cwd=tmp_path), 'wm_eval')


def test_empty_split_is_one_clear_error(baby):
    "A dataset whose evaluation split has no rows (made elsewhere) is refused by name, not scored as 0/0."
    from wm_nb.core import WMError
    from wm_nb.evaluate import evaluate_split, trained_on
    from wm_nb.trainer import load_model
    from wm_nb.mixtures import load_dataset
    exp = exp_of(baby)
    dsd, man, cities = load_dataset(trained_on(exp/'final')['path'])
    dsd['validation'] = dsd['validation'].select([])
    model, tok = load_model(exp/'final')
    with pytest.raises(WMError, match="split 'validation' is empty"): evaluate_split(model, tok, dsd, man, cities, 'validation')
