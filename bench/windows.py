"""Windows per second of `RandomWindowDataset` against a straightforward sampler, in the same run.

    OMP_NUM_THREADS=1 python bench/windows.py [--papers_per_category 200] [--seconds 1.5] [--repeats 5]

The corpus is the generated one (16 categories), prepared with a byte-level BPE in a temporary
folder. Each sampler runs for `--seconds`, alternating with the others, `--repeats` times; the
median rate is reported. A "window" is one 101-token sample delivered to the caller:

- `windows()`      : RandomWindowDataset.windows(idx), a (B, 101) int64 array per batch of B indices
- `__getitems__`   : what a DataLoader fetcher calls with a batch of indices (list of dicts of arrays)
- `DataLoader`     : torch DataLoader(batch_size=B, num_workers=0) + WindowCollator -> int64 tensors
- naive list       : a Python loop per window: random paper from a list of per-paper uint16 arrays,
                     random start, slice, cast to int64 (all papers held in memory)
- naive reopen     : the same loop, but opening the memmap for each window (no per-worker handle)
"""
import argparse, random, shutil, statistics, tempfile, time
from pathlib import Path
import numpy as np

def rate(fn, seconds):
    "Windows per second of `fn()` (which returns how many windows it made) over `seconds`."
    n, t0 = 0, time.perf_counter()
    while (dt := time.perf_counter() - t0) < seconds: n += fn()
    return n / dt

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--papers_per_category', type=int, default=200)
    ap.add_argument('--batch', type=int, default=1024)
    ap.add_argument('--seconds', type=float, default=1.5)
    ap.add_argument('--repeats', type=int, default=5)
    a = ap.parse_args()
    import torch
    from wm_nb.arxiv_data import make_corpus, write_corpus, prepare_corpus, Prepared, RandomWindowDataset
    from wm_nb.arxiv_train import WindowCollator
    tmp = Path(tempfile.mkdtemp())
    write_corpus(make_corpus(16, a.papers_per_category, seed=0), tmp/'corpus.jsonl')
    prep = prepare_corpus(tmp/'corpus.jsonl', tmp/'prepared', full_dataset=True, tokenizer='bpe', vocab_size=2048, progress=False)
    P = Prepared(prep)
    W, B = 101, a.batch
    ds = RandomWindowDataset(P, 'train', W, seed=0, length=10**12)
    print(f"{P}; train pool {len(ds.pool):,} papers (>= {W} tokens), {ds.n_short} short papers left out; batch {B}")

    pos = {'windows': 0, 'getitems': 0}
    def fast_windows():
        i = pos['windows']; pos['windows'] += B
        return len(ds.windows(np.arange(i, i + B)))
    def fast_getitems():
        i = pos['getitems']; pos['getitems'] += B
        return len(ds.__getitems__(np.arange(i, i + B)))
    dl_it = iter(torch.utils.data.DataLoader(ds, batch_size=B, num_workers=0, collate_fn=WindowCollator()))
    def fast_dataloader(): return len(next(dl_it)['input_ids'])

    toks = np.fromfile(prep/'tokens.bin', np.uint16)
    pool = ds.pool
    papers = [toks[P.offsets[p]:P.offsets[p] + P.lengths[p]].copy() for p in pool]
    rnd = random.Random(0)
    def naive_list():
        for _ in range(B):
            arr = papers[rnd.randrange(len(papers))]
            s = rnd.randrange(len(arr) - W + 1)
            arr[s:s + W].astype(np.int64)
        return B
    offs, lens, path = P.offsets[pool], P.lengths[pool], prep/'tokens.bin'
    def naive_reopen():
        n = B // 16                                  # slow: smaller batches keep the timing loop responsive
        for _ in range(n):
            j = rnd.randrange(len(pool)); s = rnd.randrange(int(lens[j]) - W + 1)
            np.memmap(path, np.uint16, 'r')[offs[j] + s:offs[j] + s + W].astype(np.int64)
        return n

    runs = {'windows()': fast_windows, '__getitems__': fast_getitems, 'DataLoader+collator': fast_dataloader,
            'naive list': naive_list, 'naive reopen': naive_reopen}
    res = {k: [] for k in runs}
    for r in range(a.repeats):
        for k, f in runs.items(): res[k].append(rate(f, a.seconds))
    med = {k: statistics.median(v) for k, v in res.items()}
    base = med['naive list']
    print(f"{'sampler':<22}{'windows/s (median of ' + str(a.repeats) + ')':>30}{'x naive list':>14}")
    for k, v in med.items(): print(f"{k:<22}{v:>30,.0f}{v / base:>14.1f}")
    print(f"target >= 100,000 windows/s: __getitems__ {'meets' if med['__getitems__'] >= 1e5 else 'MISSES'} it")
    shutil.rmtree(tmp)

if __name__ == '__main__': main()
