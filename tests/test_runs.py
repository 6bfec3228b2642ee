"""After the run: load_experiment, ask by name, load_runs, plot_runs and wm_sample on a real (tiny) run, through the CLI."""
import numpy as np
import pytest

from helpers import run


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp('runs')
    for args in (['loc_baby'], ['dist_baby', '--train.epochs', '1'], ['walk_loc_baby', '--train.epochs', '1']):
        r = run('wm_train', *args, cwd=d)
        assert r.returncode == 0, r.stderr[-3000:]
    return d


def test_load_experiment(runs):
    from wm_nb.runs import load_experiment
    e = load_experiment(runs/'outputs/experiments/loc_baby')
    assert e.metrics['global_step'] == 300 and len(e.history) > 10 and e.cities.name[0]
    md = e._repr_markdown_()
    assert 'loc_baby' in md and 'recall' in md and 'floor' in md
    a = e.ask(e.cities.name[5])
    assert a.prompt[0] == 'loc(c_5)=' and 'error_km' in a
    from wm_nb.tasks import get_task
    truth = get_task('loc').completions(get_task('loc').answers(e.cities, np.array([[5]]))).to_pylist()[0]
    samples = e.samples['train_loc'].set_index('city')
    assert str(samples.loc[5, 'completion']) == str(a.completion[0]) or np.isnan(a.error_km[0])   # the same answer wm_nb's evaluation saw
    d = load_experiment(runs/'outputs/experiments/dist_baby')
    q = d.ask([0, 1], task='dist')
    assert q.prompt[0] == 'dist(c_0,c_1)=' and 'truth' in q


def test_load_runs_and_plot(runs):
    from wm_nb.runs import load_runs, plot_runs
    r = load_runs(runs/'outputs/experiments')
    assert list(r.index) == ['dist_baby', 'loc_baby', 'walk_loc_baby']
    assert r.loc['loc_baby', 'tasks'] == 'loc' and r.loc['walk_loc_baby', 'tasks'] == 'walk,loc'
    assert r.loc['dist_baby', 'dist_mean_abs_err_floor'] > 1000 and r.loc['loc_baby', 'steps'] == 300
    assert np.isfinite(r.loc['walk_loc_baby', 'heldout:loc_median_km_floor'])
    fig = plot_runs(runs/'outputs/experiments', 'eval_loss', 'rows_seen')
    assert len(fig.axes[0].lines) == 3


def test_wm_sample(runs):
    exp = runs/'outputs/experiments/loc_baby'
    from wm_nb.runs import load_experiment
    name = load_experiment(exp).cities.name[3]
    r = run('wm_sample', exp, '--city', name, '--map', runs/'q.png', cwd=runs)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'loc(c_3)=' in r.stdout and 'error_km' in r.stdout and (runs/'q.png').stat().st_size > 10_000
    r = run('wm_sample', runs/'outputs/experiments/walk_loc_baby', '--id', '3', '--task', 'walk', '--n', '4', '--temperature', '0.8', cwd=runs)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count('srd_200=c_3,') == 4 and 'valid' in r.stdout
    r = run('wm_sample', runs/'outputs/experiments/dist_baby', '--prompt', 'dist(c_1,c_2)=', cwd=runs)
    assert r.returncode == 0 and 'truth' in r.stdout
    for args, needle in [(['--city', 'Nowhereville'], "no city called 'Nowhereville'"), ([], 'give one of --city'),
                         (['--id', '99999'], 'there is no city c_99999')]:
        r = run('wm_sample', exp, *args, cwd=runs)
        assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and needle in r.stderr, r.stderr
