"""Nothing lost: every command that replaces a folder or a file replaces only what wm_nb itself wrote (its ledger,
`.wm_nb.json`, lists it with the hash it still has) and refuses anything else with one line naming the path, leaving
the user's files untouched; and replacing its own earlier output still works."""
import json
from pathlib import Path
import pytest

from helpers import run, tree, one_error_line as refused   # refused(r, prog, needle, cwd, before)

MINE = 'years of work, not written by wm_nb'


def user_folder(path: Path) -> Path:
    path.mkdir(parents=True); (path/'notes.txt').write_text(MINE)
    return path


def test_wm_dataset_overwrite_never_deletes_a_user_folder(tmp_path):
    "The reported case: `--overwrite` onto a folder the package never wrote deleted it and the user's file."
    (tmp_path/'cities.csv').write_text('name,latitude,longitude,country,population\nA,1,2,AA,500000\nB,3,4,AA,400000\nC,5,6,AA,300000\n')
    user_folder(tmp_path/'out'/'NAME')
    before = tree(tmp_path)
    r = run('wm_dataset', 'loc', '--source', 'cities.csv', '--all', '--out', 'out', '--name', 'NAME', '--overwrite', cwd=tmp_path)
    line = refused(r, 'wm_dataset', 'out/NAME', tmp_path, before)
    assert 'not written by wm_nb' in line and 'move it away' in line
    # a wm_nb dataset the user has put a file into is not replaced either
    r = run('wm_dataset', 'loc', '--source', 'cities.csv', '--all', '--out', 'out', '--name', 'OURS', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (tmp_path/'out'/'OURS'/'analysis.ipynb').write_text(MINE)
    before = tree(tmp_path)
    r = run('wm_dataset', 'loc', '--source', 'cities.csv', '--all', '--n_val', '1', '--out', 'out', '--name', 'OURS', '--overwrite', cwd=tmp_path)
    assert "holds 'analysis.ipynb', which wm_nb did not write" in refused(r, 'wm_dataset', 'out/OURS', tmp_path, before)
    # its own folder, untouched by the user, is replaced
    (tmp_path/'out'/'OURS'/'analysis.ipynb').unlink()
    r = run('wm_dataset', 'loc', '--source', 'cities.csv', '--all', '--n_val', '1', '--out', 'out', '--name', 'OURS', '--overwrite', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path/'out'/'OURS'/'manifest.json').read_text())['counts'] == {'train': 3, 'validation': 1}


@pytest.mark.parametrize('target', ['outputs/cities.csv', 'outputs/figures/cities_map.png', 'outputs/analysis/neighbours_200km.json', 'outputs/data_summary.json'])
def test_wm_data_never_overwrites_a_user_file(tmp_path, target):
    (tmp_path/target).parent.mkdir(parents=True); (tmp_path/target).write_text(MINE)
    before = tree(tmp_path)
    r = run('wm_data', '--n_dist', '200', '--n_walks', '200', '--n_val', '10', '--datasets', 'loc,dist', cwd=tmp_path)
    refused(r, 'wm_data', target, tmp_path, before)                 # every target is checked before anything is written


def test_wm_data_replaces_a_stale_dataset_only_if_it_is_its_own(tmp_path):
    user_folder(tmp_path/'outputs'/'datasets'/'dist_100kplus_200_42')          # where wm_data would write
    before = tree(tmp_path)
    r = run('wm_data', '--n_dist', '200', '--n_walks', '200', '--n_val', '10', '--datasets', 'dist', cwd=tmp_path)
    assert 'not written by wm_nb' in refused(r, 'wm_data', 'dist_100kplus_200_42', tmp_path, before)
    # run twice on its own outputs: the second run reuses or rewrites what it wrote, without complaint
    tmp2 = tmp_path/'again'; tmp2.mkdir()
    for k in range(2):
        r = run('wm_data', '--n_dist', '200', '--n_walks', '200', '--n_val', '10' if k == 0 else '11', '--datasets', 'loc,dist', cwd=tmp2)
        assert r.returncode == 0, r.stderr[-2000:]


def test_wm_analyze(tmp_path):
    (tmp_path/'an').mkdir(); (tmp_path/'an'/'neighbours_200km.csv').write_text(MINE)
    before = tree(tmp_path)
    refused(run('wm_analyze', '--out', 'an', cwd=tmp_path), 'wm_analyze', 'neighbours_200km.csv', tmp_path, before)
    r = run('wm_analyze', '--out', 'an2', cwd=tmp_path); assert r.returncode == 0, r.stderr
    r = run('wm_analyze', '--out', 'an2', cwd=tmp_path); assert r.returncode == 0, r.stderr       # its own files: replaced


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp('safety')
    r = run('wm_train', 'loc_baby', '--train.max_steps', '4', '--train.eval_every', '2', '--train.save_every', '2', cwd=d)
    assert r.returncode == 0, r.stderr[-3000:]
    return d


def test_wm_train_overwrite(trained, tmp_path):
    user_folder(tmp_path/'outputs'/'experiments'/'loc_baby')
    before = tree(tmp_path)
    line = refused(run('wm_train', 'loc_baby', '--overwrite', cwd=tmp_path), 'wm_train', 'outputs/experiments/loc_baby', tmp_path, before)
    assert 'not written by wm_nb' in line
    exp = trained/'outputs'/'experiments'/'loc_baby'
    (exp/'my_analysis.csv').write_text(MINE)                                   # the user's file inside wm_nb's experiment
    before = tree(trained)
    refused(run('wm_train', 'loc_baby', '--overwrite', '--train.max_steps', '4', cwd=trained), 'wm_train', "'my_analysis.csv'", trained, before)
    (exp/'my_analysis.csv').unlink()
    r = run('wm_train', 'loc_baby', '--overwrite', '--train.max_steps', '4', '--train.eval_every', '2', '--train.save_every', '2', cwd=trained)
    assert r.returncode == 0, r.stderr[-2000:]


def test_wm_eval_and_wm_probe_outputs(trained, tmp_path):
    final = trained/'outputs'/'experiments'/'loc_baby'/'final'
    (tmp_path/'ev').mkdir(); (tmp_path/'ev'/'metrics.json').write_text(MINE)
    (tmp_path/'pr').mkdir(); (tmp_path/'pr'/'probe.json').write_text(MINE)
    before = tree(tmp_path)
    refused(run('wm_eval', final, '--out', tmp_path/'ev', cwd=tmp_path), 'wm_eval', 'ev/metrics.json', tmp_path, before)
    refused(run('wm_probe', final, '--out', tmp_path/'pr', cwd=tmp_path), 'wm_probe', 'pr/probe.json', tmp_path, before)
    for _ in range(2):                                                          # its own outputs: rewritten
        assert run('wm_eval', final, cwd=tmp_path).returncode == 0
        assert run('wm_probe', final, cwd=tmp_path).returncode == 0


def test_wm_arxiv_corpus_and_prep(tmp_path):
    (tmp_path/'corpus.jsonl').write_text(MINE)
    before = tree(tmp_path)
    refused(run('wm_arxiv_corpus', '--out', 'corpus.jsonl', '--overwrite', cwd=tmp_path), 'wm_arxiv_corpus', 'corpus.jsonl', tmp_path, before)
    r = run('wm_arxiv_corpus', '--out', 'mine/corpus.jsonl', '--n_categories', '2', '--papers_per_category', '12', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run('wm_arxiv_corpus', '--out', 'mine/corpus.jsonl', '--n_categories', '2', '--papers_per_category', '12', '--seed', '1', '--overwrite', cwd=tmp_path)
    assert r.returncode == 0, r.stderr                                            # its own file: replaced
    user_folder(tmp_path/'prepared')
    before = tree(tmp_path)
    r = run('wm_arxiv_prep', '--source', 'mine/corpus.jsonl', '--out', 'prepared', '--tokenizer', 'bpe', '--vocab_size', '300', '--overwrite', cwd=tmp_path)
    assert 'not written by wm_nb' in refused(r, 'wm_arxiv_prep', 'prepared', tmp_path, before)


def test_wm_docs_refuses_a_user_site_folder_before_building(tmp_path):
    pytest.importorskip('sphinx')
    user_folder(tmp_path/'site')
    root = Path(__file__).resolve().parents[1]
    before = tree(tmp_path)
    r = run('wm_docs', '--out', tmp_path/'site', cwd=root, timeout=120)
    refused(r, 'wm_docs', tmp_path/'site', tmp_path, before)


def test_ledger_rules(tmp_path):
    "The rule itself, on every kind of entry."
    from wm_nb.core import WMError, output_file, atomic_dir, remove_tree, check_replaceable
    with output_file(tmp_path/'a.json') as t: t.write_text('1')
    check_replaceable(tmp_path/'a.json')                                           # its own, unchanged
    (tmp_path/'a.json').write_text('2')
    with pytest.raises(WMError, match='was changed since wm_nb wrote it'): check_replaceable(tmp_path/'a.json')
    (tmp_path/'link').symlink_to(tmp_path/'a.json')
    with pytest.raises(WMError, match='symbolic link'): check_replaceable(tmp_path/'link')
    with atomic_dir(tmp_path/'d') as t: (t/'x').write_text('x'); (t/'sub').mkdir()
    remove_tree(tmp_path/'d'); assert not (tmp_path/'d').exists()
    legacy = tmp_path/'old'; legacy.mkdir(); (legacy/'manifest.json').write_text(json.dumps({'wm_nb_version': '0.1.0'}))
    check_replaceable(legacy)                                                      # a folder wm_nb 0.1 wrote (before the ledger)
    with pytest.raises(WMError, match='was not written by wm_nb'): check_replaceable(user_folder(tmp_path/'u'))
