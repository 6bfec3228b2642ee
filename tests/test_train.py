"""wm_train and wm_eval end to end: the baby config through the CLI, SIGKILL mid-training then
--resume, 2 processes under torchrun against 1, tracking, and the bad inputs of the model side."""
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path
import pytest

BIN = Path(sys.executable).parent
ENV = dict(os.environ, HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1', MPLBACKEND='Agg', WANDB_MODE='', PYTHONUNBUFFERED='1')
ENV.pop('WANDB_API_KEY', None)

def run(*args, cwd, timeout=300, env=None):
    return subprocess.run([str(BIN/args[0]), *map(str, args[1:])], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env or ENV)

def one_error_line(r, prog):
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-3000:])
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert 'Traceback' not in r.stderr, r.stderr
    assert lines[-1].startswith(f'{prog}: error:'), lines
    return lines[-1]

# the baby config with a longer run, so that a kill lands mid-training
LONG = ['--train.epochs', '12', '--train.save_every', '10', '--train.eval_every', '10', '--train.save_total_limit', '20', '--train.logging_steps', '10']

@pytest.fixture(scope='module')
def baby(tmp_path_factory):
    d = tmp_path_factory.mktemp('train')
    r = run('wm_train', 'baby', cwd=d)
    assert r.returncode == 0, r.stderr[-3000:]
    return d

def test_baby_experiment_folder(baby):
    exp = baby/'outputs'/'experiments'/'baby'
    for f in ['config.yaml', 'curves.png', 'error_map.png', 'metrics.json', 'log_history.json', 'final/config.json', 'final/model.safetensors', 'final/tokenizer.json']:
        assert (exp/f).exists(), f
    m = json.loads((exp/'metrics.json').read_text())
    assert m['params'] > 0 and m['global_step'] == m['steps']['max_steps']
    assert {'centroid', 'random_city', 'parse_rate', 'median_km'} <= set(m['eval'])
    assert m['eval']['scored_cities'].startswith('recall')
    code = ("from transformers import AutoModelForCausalLM, AutoTokenizer; import sys; p=sys.argv[1]; "
            "m=AutoModelForCausalLM.from_pretrained(p); t=AutoTokenizer.from_pretrained(p); assert m.config.vocab_size == len(t) == 44")
    subprocess.run([sys.executable, '-c', code, str(exp/'final')], check=True, env=ENV, timeout=120)

def test_wm_eval_on_final(baby):
    exp = baby/'outputs'/'experiments'/'baby'
    r = run('wm_eval', exp/'final', '--split', 'train', '--out', baby/'ev', cwd=baby)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'centroid' in r.stdout and 'random city' in r.stdout and 'recall' in r.stdout
    m = json.loads((baby/'ev'/'metrics_train.json').read_text())
    assert m['n'] == 300 and (baby/'ev'/'error_map_train.png').exists() and (baby/'ev'/'samples_train.csv').exists()

def _final(exp):
    m = json.loads((exp/'metrics.json').read_text())
    hist = json.loads((exp/'log_history.json').read_text())
    return m['global_step'], [h['eval_loss'] for h in hist if 'eval_loss' in h][-1], [h['loss'] for h in hist if 'loss' in h][-1]

def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    r = run('wm_train', 'baby', '--name', 'straight', *LONG, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    exp = tmp_path/'outputs'/'experiments'/'killed'
    p = subprocess.Popen([str(BIN/'wm_train'), 'baby', '--name', 'killed', *LONG], cwd=tmp_path, env=ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None:
        if (exp/'checkpoints'/'checkpoint-30'/'trainer_state.json').exists(): break
        time.sleep(0.05)
    assert p.poll() is None, "the run finished before it could be killed"
    p.send_signal(signal.SIGKILL); p.wait()
    assert not (exp/'metrics.json').exists()                       # it really died mid-training
    r = run('wm_train', 'baby', '--name', 'killed', *LONG, cwd=tmp_path)
    assert 'pass --resume' in one_error_line(r, 'wm_train')           # no silent restart
    r = run('wm_train', 'baby', '--name', 'killed', '--resume', *LONG, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'resuming from' in r.stdout
    s_step, s_eval, s_loss = _final(tmp_path/'outputs'/'experiments'/'straight')
    k_step, k_eval, k_loss = _final(exp)
    assert k_step == s_step
    # same seed, same data order (the Trainer restores RNG states and skips seen batches): equal to float noise
    assert abs(k_eval - s_eval) <= 1e-3 * abs(s_eval), (k_eval, s_eval)
    assert abs(k_loss - s_loss) <= 1e-3 * abs(s_loss), (k_loss, s_loss)

def test_two_processes_match_one(tmp_path):
    r1 = run('wm_train', 'baby', '--name', 'one', cwd=tmp_path)
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = subprocess.run([str(BIN/'torchrun'), '--nproc_per_node=2', '--no-python', str(BIN/'wm_train'), 'baby', '--name', 'two'],
                        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=ENV)
    assert r2.returncode == 0, r2.stderr[-3000:]
    one = json.loads((tmp_path/'outputs/experiments/one/metrics.json').read_text())
    two = json.loads((tmp_path/'outputs/experiments/two/metrics.json').read_text())
    assert two['world_size'] == 2 and one['world_size'] == 1
    assert two['global_step'] == one['global_step']
    # same global batch (32 = 2 x 16), same samples per step: the losses agree to within 1%
    assert abs(two['final_train_loss'] - one['final_train_loss']) <= 0.01 * one['final_train_loss']
    e1, e2 = _final(tmp_path/'outputs/experiments/one')[1], _final(tmp_path/'outputs/experiments/two')[1]
    assert abs(e1 - e2) <= 0.01 * e1, (e1, e2)

def test_wandb_runs_offline_without_a_key(tmp_path):
    env = dict(ENV, HOME=str(tmp_path))
    r = run('wm_train', 'baby', '--train.report_to', 'wandb', '--train.epochs', '1', cwd=tmp_path, env=env, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert list((tmp_path/'outputs/experiments/baby').rglob('offline-run-*')), "no offline wandb run was written"

def test_tensorboard(tmp_path):
    r = run('wm_train', 'baby', '--train.report_to', 'tensorboard', '--train.epochs', '1', cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert list((tmp_path/'outputs/experiments/baby').rglob('events.out.tfevents*'))

def test_bad_inputs(baby, tmp_path):
    exp = baby/'outputs'/'experiments'/'baby'
    assert "did you mean 'train.lr'" in one_error_line(run('wm_train', 'baby', '--train.learning_rate', '1', cwd=tmp_path), 'wm_train')
    assert 'no checkpoint to resume' in one_error_line(run('wm_train', 'baby', '--name', 'nothing', '--resume', cwd=tmp_path), 'wm_train')
    assert 'not found' in one_error_line(run('wm_train', 'baby', '--data.dataset', tmp_path/'missing', cwd=tmp_path), 'wm_train')
    assert 'not a model checkpoint' in one_error_line(run('wm_eval', tmp_path, cwd=tmp_path), 'wm_eval')
    assert 'not found' in one_error_line(run('wm_eval', tmp_path/'nope', cwd=tmp_path), 'wm_eval')
    ds = json.loads((exp/'wm_dataset.json').read_text())['path']
    assert "no 'test' split" in one_error_line(run('wm_eval', exp/'final', '--dataset', ds, '--split', 'test', cwd=tmp_path), 'wm_eval')
    # a tokenizer whose vocabulary is not the model's
    bad = tmp_path/'badmodel'; shutil.copytree(exp/'final', bad)
    tj = json.loads((bad/'tokenizer.json').read_text()); v = tj['model']['vocab']; v['zz'] = 44; (bad/'tokenizer.json').write_text(json.dumps(tj))
    assert 'vocabulary' in one_error_line(run('wm_eval', bad, cwd=tmp_path), 'wm_eval')
    # an empty split
    r = run('wm_dataset', 'loc', '--n_train', '10', '--n_val', '0', '--out', tmp_path/'ds', cwd=tmp_path)
    assert r.returncode == 0
    empty = next((tmp_path/'ds').iterdir())
    assert "no 'validation' split" in one_error_line(run('wm_eval', exp/'final', '--dataset', empty, cwd=tmp_path), 'wm_eval')
    assert 'train split would be empty' in one_error_line(run('wm_dataset', 'loc', '--n_train', '0', '--out', tmp_path/'ds0', cwd=tmp_path), 'wm_dataset')
    assert not (tmp_path/'ds0').exists() or not any((tmp_path/'ds0').iterdir())
    assert not (tmp_path/'outputs'/'experiments'/'nothing').exists()

def test_empty_split_is_one_clear_error(baby):
    "A dataset whose evaluation split has no rows (made elsewhere) is refused by name, not scored as 0/0."
    from datasets import Dataset, DatasetDict
    from wm_nb.core import WMError
    from wm_nb.evaluate import evaluate_split, load_model
    from wm_nb.tasks import load_task_dataset
    exp = baby/'outputs'/'experiments'/'baby'
    dsd, man, cities = load_task_dataset(json.loads((exp/'wm_dataset.json').read_text())['path'])
    dsd['validation'] = dsd['validation'].select([])
    model, tok = load_model(exp/'final')
    with pytest.raises(WMError, match="split 'validation' is empty"): evaluate_split(model, tok, dsd, man, cities, 'validation')
