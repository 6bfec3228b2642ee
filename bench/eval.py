"""Evaluation speed: the batched, left-padded, KV-cached evaluator against one-prompt-at-a-time
`generate` (the seed work's way), same model, same prompts, same metrics, in one run.

    python bench/eval.py [--checkpoint outputs/experiments/default/final] [--n_single 300]

Without a checkpoint, a randomly initialised model of the default config's architecture is used
(generation cost does not depend on the weights: every answer is capped at 10 new tokens).
Prints prompts/s of both, the ratio (target >= 20x) and the time to evaluate all cities
(target < 30 s on 2 cores)."""
import argparse, time, json, os
import numpy as np, torch
from wm_nb.cities import load_cities
from wm_nb.tasks import get_task
from wm_nb.tokenizer import build_tokenizer
from wm_nb.config import load_config
from wm_nb.trainer import build_model, load_model
from wm_nb.evaluate import generate_completions
from wm_nb.tasks import error_summary, parse_xy
from wm_nb.geo import haversine_km

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument('--checkpoint', default=None)
p.add_argument('--n_single', type=int, default=300, help='prompts generated one at a time')
p.add_argument('--batch_size', type=int, default=512)
a = p.parse_args()

cities = load_cities()
if a.checkpoint: model, tok = load_model(a.checkpoint); what = a.checkpoint
else: tok = build_tokenizer(); model = build_model(load_config('default'), tok); what = 'random default-architecture model'
model.eval()
idx = np.arange(len(cities))
prompts = get_task('loc').prompts(idx[:, None]).to_pylist()
print(f"{what}; {len(cities):,} cities; {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}")

sel = np.random.default_rng(0).choice(len(cities), a.n_single, replace=False)
t = time.perf_counter()
single = []
for i in sel:   # the seed's way: one prompt, one generate() call
    ids = torch.tensor([[tok.bos_token_id] + tok(prompts[i], add_special_tokens=False)['input_ids']])
    with torch.no_grad(): g = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False,
                                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    single.append(tok.decode(g[0, ids.shape[1]:], skip_special_tokens=True))
t_single = time.perf_counter() - t

t = time.perf_counter()
batched = generate_completions(model, tok, prompts, a.batch_size, 10)
t_all = time.perf_counter() - t
same = np.mean([s == batched[i] for s, i in zip(single, sel)])
r_single, r_batch = a.n_single/t_single, len(prompts)/t_all
km = lambda texts: haversine_km(cities.lat[idx[sel]], cities.lon[idx[sel]], *parse_xy(texts))
med = lambda s: 'n/a' if s['median_km'] is None else f"{s['median_km']:.0f} km"
s1 = error_summary(km(single))
s2 = error_summary(km([batched[i] for i in sel]))
print(f"one at a time: {a.n_single:>6,} prompts in {t_single:6.2f} s = {r_single:8.1f} prompts/s  (median {med(s1)} on these)")
print(f"batched:       {len(prompts):>6,} prompts in {t_all:6.2f} s = {r_batch:8.1f} prompts/s  (median {med(s2)} on the same)")
print(f"identical completions on the shared prompts: {same:.1%}")
print(f"speed-up: {r_batch/r_single:.1f}x (target >= 20x); all {len(prompts):,} cities in {t_all:.1f} s (target < 30 s)")
print(json.dumps(dict(single_per_s=r_single, batched_per_s=r_batch, ratio=r_batch/r_single, all_cities_s=t_all, identical=same)))
