"""Walk models as world models (`wm_nb.walktests`, `wm_walktest`): pair construction checked against the package's
neighbour graph and great-circle distances, the model scorer against plain teacher forcing, perfect and untrained
scorers at the ceiling and the floor, and the console script end to end on a walk-only baby trained through the CLI."""
import json, re
import numpy as np
import pandas as pd
import pytest
import torch
from wm_nb.walks import neighbour_graph
from wm_nb.geo import haversine_km
from wm_nb.walktests import (BANDS, pool_graph, valid_next, is_walk, compression_pairs, distinction_pairs, distance_band, digit_table,
                             next_city_logprobs, model_scorer, process_scorer, walk_tests, reorder)

from helpers import ENV as _ENV, run as _run, one_error_line

ENV = dict(_ENV, OMP_NUM_THREADS='1')   # the CKA and walk-test scripts run single-threaded here
WALK_BABY = ['dist_baby', '--name', 'walk_baby', '--data.task', 'walk', '--data.threshold_km', '1000', '--data.max_cities', '300',
             '--data.n_train', '3000', '--data.n_val', '32', '--data.max_len', '12', '--model.max_position_embeddings', '128',
             '--train.epochs', '2', '--train.group_by_length', 'true']


def run(*args, **kw): return _run(*args, env=ENV, **kw)


@pytest.fixture(scope='module')
def world(default_cities):
    "The first 300 cities, linked within 1,000 km (at most 31 neighbours: the per-token rule accepts every valid city of the process)."
    c = default_cities.subset(np.arange(300))
    return c, pool_graph(c, np.arange(300), 1000)


def km(c, a, b): return haversine_km(c.lat[a], c.lon[a], c.lat[b], c.lon[b])


def true_next(c, prefix, T):
    "Valid next cities from great-circle distances alone: unvisited cities within T of the last one."
    d = km(c, prefix[-1], np.arange(len(c)))
    return sorted(set(np.flatnonzero(d <= T)) - set(prefix))


# --- the graph and the pairs ------------------------------------------------------------------------------------------

def test_pool_graph_is_the_neighbour_graph_over_the_pool(default_cities):
    full = neighbour_graph(default_cities, 200)
    g = pool_graph(default_cities, np.arange(len(default_cities)), 200)
    assert (g.indptr == full.indptr).all() and (g.indices == full.indices).all()
    pool = np.arange(0, len(default_cities), 3)
    h = pool_graph(default_cities, pool, 200)
    for i in pool[:50]:
        assert set(h.neighbours(i)) == set(full.neighbours(i)) & set(pool)
    assert h.degree[1::3].sum() == 0


def test_walk_pool_follows_the_mixture_rules():
    from wm_nb.walktests import walk_pool
    man = lambda held=(), new=(), mention=True, phase='pretrain': dict(spec=dict(phase=phase, tasks={'walk': dict(mention_heldout=mention)}),
                                                                      heldout_cities=list(held), new_cities=list(new))
    assert list(walk_pool(man(held=[1, 3]), 6)) == [0, 1, 2, 3, 4, 5]                  # held out from locations, walked through
    assert list(walk_pool(man(held=[1, 3], mention=False), 6)) == [0, 2, 4, 5]
    assert list(walk_pool(man(new=[5]), 6)) == [0, 1, 2, 3, 4]                          # new cities: pre-training never walks there
    assert list(walk_pool(man(held=[1], new=[5], phase='finetune'), 6)) == [0, 1, 2, 3, 4, 5]


def test_compression_pairs_reach_the_same_state(world):
    c, g = world
    pairs, log = compression_pairs(g, 40, seed=3)
    assert len(pairs) == 40 and log['pair'] == 40
    for r in pairs.itertuples():
        p1, p2 = list(r.p1), list(r.p2)
        assert p1 != p2 and p1[-1] == p2[-1] == r.city and sorted(p1) == sorted(p2) and 3 <= len(p1) <= 8
        for p in (p1, p2):
            assert len(set(p)) == len(p) and (km(c, p[:-1], p[1:]) <= 1000).all()       # valid walks, checked by distance
        assert true_next(c, p1, 1000) == true_next(c, p2, 1000) == list(valid_next(g, p1)) != []


def test_distinction_pairs_reach_different_states_in_their_band(world):
    c, g = world
    pairs, log = distinction_pairs(g, c, 15, seed=4)
    assert pairs.band.value_counts().to_dict() == {b: 15 for b in BANDS}
    for r in pairs.itertuples():
        p1, p2 = list(r.p1), list(r.p2)
        assert p1[-1] != p2[-1] and len(p1) == len(p2)
        for p in (p1, p2): assert len(set(p)) == len(p) and (km(c, p[:-1], p[1:]) <= 1000).all()
        assert true_next(c, p1, 1000) != true_next(c, p2, 1000)
        d = km(c, p1[-1], p2[-1])
        assert r.d_km == pytest.approx(d) and BANDS[[d <= 1000, 1000 < d <= 2000, d > 2000].index(True)] == r.band


def test_reorder_finds_exactly_the_other_hamiltonian_paths(world):
    c, g = world
    rng = np.random.default_rng(0)
    p1 = compression_pairs(g, 1, seed=5)[0].p1[0]
    from itertools import permutations
    others = {q for q in permutations(p1) if q[-1] == p1[-1] and list(q) != list(p1) and is_walk(g, q)}   # brute force
    assert others and all(tuple(reorder(g, p1, rng)) in others for _ in range(10))


# --- scorers --------------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def tiny():
    from transformers import LlamaConfig, LlamaForCausalLM
    from wm_nb.tokenizer import build_tokenizer
    torch.manual_seed(1)
    m = LlamaForCausalLM(LlamaConfig(vocab_size=44, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                     intermediate_size=64, max_position_embeddings=256, bos_token_id=0, eos_token_id=1, pad_token_id=2))
    return m, build_tokenizer()


def test_model_scorer_equals_teacher_forcing(tiny):
    m, tok = tiny
    text = 'srd_1000=c_3,c_251,c_17,'
    lp, low = next_city_logprobs(m, tok, text, digit_table(tok, 1105), batch_size=256)
    ends = [tok.convert_tokens_to_ids(','), tok.eos_token_id]
    for city in [0, 9, 10, 99, 100, 255, 256, 999, 1000, 1104]:
        ids = [tok.bos_token_id] + tok(text + f'c_{city}', add_special_tokens=False)['input_ids']
        with torch.no_grad(): f = m(input_ids=torch.tensor([ids])).logits[0].double().log_softmax(-1)
        first = len(tok(text, add_special_tokens=False)['input_ids']) + 1
        steps = [f[j - 1, ids[j]].item() for j in range(first, len(ids))] + [f[-1, ends].logsumexp(0).item()]
        assert lp[city] == pytest.approx(sum(steps), abs=1e-4) and low[city] == pytest.approx(min(steps), abs=1e-4)
    assert np.exp(lp).sum() <= 1 + 1e-6


def uniform_over_valid(g, n):
    "A perfect scorer written independently of `process_logprobs`: per-token conditionals counted over the valid id strings."
    def score(prefix):
        V = [str(v) for v in valid_next(g, prefix)]
        lp, low = np.full(n, -np.inf), np.full(n, -np.inf)
        for city in range(n):
            s, probs = str(city), []
            for j in range(1, len(s) + 1):
                below = [v for v in V if v.startswith(s[:j - 1])]
                probs.append(sum(v.startswith(s[:j]) for v in below)/len(below) if below else 0.0)
            here = [v for v in V if v.startswith(s)]
            probs.append((s in V)/len(here) if here else 0.0)
            if s in V: lp[city] = -np.log(len(V))
            if min(probs) > 0: low[city] = np.log(min(probs))
        return lp, low
    return score


def exact_sets(g, n):
    "Accepts exactly the valid next cities (no per-token detail)."
    def score(prefix):
        lp = np.full(n, -np.inf); V = valid_next(g, prefix); lp[V] = -np.log(len(V))
        return lp, lp.copy()
    return score


def test_perfect_scorers_score_one_where_they_should(world):
    c, g = world
    r = walk_tests({'uniform over valid': uniform_over_valid(g, 300), 'exact sets': exact_sets(g, 300), 'process': process_scorer(g, 300)},
                   g, c, n_pairs=10, seed=2)
    for name, s in r['summary'].items():
        assert s['compression']['same_accepted']['mean'] == 1 and s['compression']['jaccard']['mean'] == 1
        assert s['compression']['tv']['mean'] == pytest.approx(0, abs=1e-12)
        for b in ('all',) + BANDS:
            assert s['distinction'][b]['recall']['mean'] == pytest.approx(1) and s['distinction'][b]['precision']['mean'] == pytest.approx(1), (name, b)
        for k in ('valid_mass', 'valid_share', 'precision', 'recall'): assert s['next_city'][k]['mean'] == pytest.approx(1), (name, k)
    assert r['summary']['uniform over valid'] == r['summary']['process']                 # two implementations agree


def test_untrained_model_scores_near_the_floor(world, tiny):
    c, g = world
    m, tok = tiny
    r = walk_tests({'untrained': model_scorer(m, tok, 1000, 300)}, g, c, n_pairs=8, seed=6)
    s = r['summary']['untrained']
    assert s['distinction']['all']['recall']['mean'] < 0.05                  # it draws (almost) no boundary...
    assert s['next_city']['valid_mass']['mean'] < 1e-3                       # ...puts almost no mass on valid next cities...
    assert s['next_city']['valid_share']['mean'] == pytest.approx(s['next_city']['chance_share']['mean'], rel=0.5)   # ...no more than chance
    assert s['compression']['same_accepted']['mean'] == 1                    # and, accepting every city, "compresses" trivially


# --- wm_walktest end to end -----------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp('walktest')
    for args in [WALK_BABY, ['dist_baby', '--train.max_steps', '5']]:
        r = run('wm_train', *args, cwd=d)
        assert r.returncode == 0, r.stderr[-3000:]
    return d, d/'outputs'/'experiments'/'walk_baby'/'final', d/'outputs'/'experiments'/'dist_baby'/'final'


def test_cli_end_to_end(trained):
    d, walk, _ = trained
    r = run('wm_walktest', walk.relative_to(d), '--n_pairs', '10', cwd=d)
    assert r.returncode == 0, r.stderr[-3000:]
    out = d/'outputs'/'experiments'/'walk_baby'/'walktest'/'final'
    assert {'walktest.json', 'walktest_compression.csv', 'walktest_distinction.csv', 'walktest_prefixes.csv', 'walktest.png'} <= {p.name for p in out.iterdir()}
    s = json.loads((out/'walktest.json').read_text())
    assert (s['threshold_km'], s['max_len'], s['n_pool'], s['epsilon']) == (1000, 12, 300, 0.01)
    assert set(s['scores']) == {'trained', 'untrained', 'walk process'}
    proc, untr = s['scores']['walk process'], s['scores']['untrained']
    assert proc['compression']['same_accepted']['mean'] == 1 and proc['distinction']['all']['recall']['mean'] == pytest.approx(1)
    assert untr['distinction']['all']['recall']['mean'] < 0.05
    assert untr['next_city']['valid_mass']['mean'] < 1e-3 < s['scores']['trained']['next_city']['valid_mass']['mean']   # two different models
    assert s['scores']['trained']['distinction']['all']['recall']['n'] == 30
    t = pd.read_csv(out/'walktest_distinction.csv')
    assert len(t) == 3*30 and set(t.scorer) == set(s['scores']) and t.p1.str.split().map(len).between(2, 8).all()
    assert 'distinction recall: near (<= T)' in r.stdout and 'written outputs/experiments/walk_baby/walktest/final/' in r.stdout


def test_bad_inputs_refused_before_any_work(trained):
    from wm_nb.core import WMError
    from wm_nb.walktests import walktest_model
    d, walk, dist = trained
    cases = [((dist,), {}, 'was not trained on walks'), ((d/'nope',), {}, 'not found'),
             ((walk,), dict(epsilon=0), '--epsilon'), ((walk,), dict(epsilon=1.5), '--epsilon'), ((walk,), dict(n_pairs=0), '--n_pairs'),
             ((walk,), dict(max_prefix=2), '--max_prefix must be >= 3'), ((walk,), dict(max_prefix=12), "below the walks' max_len (12)")]
    for args, kw, msg in cases:
        with pytest.raises(WMError, match=re.escape(msg)): walktest_model(*args, out=d/'x', **kw)
    assert not (d/'x').exists()


def test_cli_errors_are_one_line(trained):
    d, walk, dist = trained
    assert 'was not trained on walks' in one_error_line(run('wm_walktest', dist, cwd=d), 'wm_walktest')
    assert '--epsilon' in one_error_line(run('wm_walktest', walk, '--epsilon', '2', cwd=d), 'wm_walktest')
    mine = d/'mine'; mine.mkdir(); (mine/'walktest.json').write_text('{}\n')      # the last file written
    line = one_error_line(run('wm_walktest', walk, '--n_pairs', '2', '--out', mine, cwd=d), 'wm_walktest')
    assert 'not written by wm_nb' in line and sorted(p.name for p in mine.iterdir()) == ['walktest.json']


def test_a_world_too_sparse_for_pairs_is_reported_not_hidden(default_cities):
    from wm_nb.walktests import format_walktest
    c = default_cities.subset(np.arange(40))
    g = pool_graph(c, np.arange(40), 200)
    assert g.degree.max() < 2                                                  # no city has two neighbours: no compression pair exists
    r = walk_tests({'walk process': process_scorer(g, 40)}, g, c, n_pairs=3, max_prefix=4)
    assert r['tries']['compression'] == {'no city with two neighbours': 1}
    assert r['summary']['walk process']['compression']['same_accepted'] == dict(mean=None, se=None, n=0)
    text = format_walktest(dict(checkpoint='m', threshold_km=200, n_pool=40, epsilon=0.01, scores=r['summary']))
    assert '0 compression pairs' in text and 'n/a' in text
