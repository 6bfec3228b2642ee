"""Training throughput: wm_train's loop (Trainer, answer-only collator with dynamic padding,
length-grouped batches for walks) against a straightforward loop that pads every sequence to the
dataset's maximum length, same model, same data, same batch, in one run. Also prints the fraction
of this machine's measured matmul FLOP/s that training reaches.

    python bench/train.py [--config default] [--steps 40] [--tasks loc,walk]

Throughput is counted in non-pad tokens per second."""
import argparse, time, json, os, math, tempfile
import numpy as np, torch
from transformers import TrainerCallback
from wm_nb.config import load_config
from wm_nb.cities import load_cities
from wm_nb.mixtures import build_mixture
from wm_nb.tokenizer import build_tokenizer
from wm_nb.trainer import build_model, make_trainer_class, n_params
from wm_nb.train import tokenize_dataset, AnswerOnlyCollator

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument('--config', default='default')
p.add_argument('--steps', type=int, default=40, help="timed steps (after 10 warm-up steps)")
p.add_argument('--tasks', default='loc,walk')
p.add_argument('--n_walks', type=int, default=20000)
p.add_argument('--rounds', type=int, default=3, help='alternate the two loops this many times; medians are reported')
a = p.parse_args()
WARM = 10  # warm-up steps, not timed (they include torch.compile when the config asks for it)

def matmul_flops(n=512, reps=20):
    x, y = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3): x @ y
    t = time.perf_counter()
    for _ in range(reps): x @ y
    return 2*n**3*reps/(time.perf_counter() - t)

def naive_loop(model, ds, batch, steps, pad_id, lr):
    "Pad every sequence to the longest in the dataset; plain AdamW loop; returns non-pad tokens/s."
    width = max(ds['length'])
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    rows = torch.randperm(len(ds), generator=g)
    coll = AnswerOnlyCollator(pad_id, pad_to=width)
    toks, t0 = 0, None
    for s in range(WARM + steps):
        if s == WARM: t0 = time.perf_counter(); toks = 0
        b = coll([ds[int(i)] for i in rows[(s*batch) % (len(ds)-batch):][:batch]])
        loss = model(**b).loss; loss.backward(); opt.step(); opt.zero_grad()
        toks += int(b['attention_mask'].sum())
    return toks/(time.perf_counter() - t0)

class Timer(TrainerCallback):
    def __init__(self): self.t0, self.toks = None, 0
    def on_step_begin(self, args, state, control, **kw):
        if state.global_step == WARM: self.t0 = time.perf_counter(); self.toks = 0
    def on_step_end(self, args, state, control, **kw): self.t1 = time.perf_counter()

def trainer_loop(cfg, model, ds, steps, tok, group):
    from transformers import TrainingArguments
    coll = AnswerOnlyCollator(tok.pad_token_id)
    counted = []
    class Counting(AnswerOnlyCollator):
        def __call__(self, feats):
            b = super().__call__(feats); counted.append(int(b['attention_mask'].sum())); return b
    timer = Timer()
    with tempfile.TemporaryDirectory() as d:
        args = TrainingArguments(output_dir=d, per_device_train_batch_size=cfg.train.batch_size, learning_rate=cfg.train.lr, max_steps=WARM+steps,
                                 save_strategy='no', eval_strategy='no', report_to='none', use_cpu=True, remove_unused_columns=False,
                                 train_sampling_strategy='group_by_length' if group else 'random', length_column_name='length',
                                 disable_tqdm=True, logging_steps=10_000, seed=0, optim=cfg.train.optim, torch_compile=cfg.train.compile)
        tr = make_trainer_class()(model=model, args=args, train_dataset=ds.select_columns(['input_ids', 'prompt_len', 'length']), data_collator=Counting(tok.pad_token_id), callbacks=[timer])
        tr.train()
    return sum(counted[WARM:WARM+steps])/(timer.t1 - timer.t0)

cfg = load_config(a.config)
tok = build_tokenizer(); cities = load_cities()
peak = matmul_flops()
print(f"config {a.config}: batch {cfg.train.batch_size}, attention {cfg.model.attn_implementation}, optimizer {cfg.train.optim}, "
      f"torch.compile {cfg.train.compile}; {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}; "
      f"measured fp32 matmul peak {peak/1e9:.1f} GFLOP/s")
out = {}
for task in a.tasks.split(','):
    dsd = build_mixture(cities, {'seed': 0, 'tasks': {'loc': 'all'} if task == 'loc' else {'walk': a.n_walks}})[0]
    ds = tokenize_dataset(dsd, tok)['train']
    lens = np.array(ds['length'])
    naives, ours_ = [], []
    for r in range(a.rounds):    # alternate, so that a slow patch of the machine hits both loops
        torch.manual_seed(0); m1 = build_model(cfg, tok)
        naives.append(naive_loop(m1, ds, cfg.train.batch_size, a.steps, tok.pad_token_id, cfg.train.lr))
        torch.manual_seed(0); m2 = build_model(cfg, tok)
        ours_.append(trainer_loop(cfg, m2, ds, a.steps, tok, group=(task == 'walk')))
        print(f"  round {r+1}: straightforward {naives[-1]:,.0f} tok/s, wm_train {ours_[-1]:,.0f} tok/s", flush=True)
    naive, ours = float(np.median(naives)), float(np.median(ours_))
    P = n_params(m2)
    frac = ours*6*P/peak
    print(f"{task:>4}: lengths {lens.min()}..{lens.max()} (mean {lens.mean():.1f}); straightforward (pad to {lens.max()}, plain AdamW): {naive:9,.0f} tok/s; "
          f"wm_train: {ours:9,.0f} tok/s (medians of {a.rounds}); ratio {ours/naive:.2f}x (target {'1.3' if task == 'loc' else '2'}x); "
          f"~{frac:.1%} of matmul peak (6 x {P:,} params x tok/s)")
    out[task] = dict(naive_tok_s=naive, wm_train_tok_s=ours, ratio=ours/naive, frac_peak=frac)
print(json.dumps(out))
