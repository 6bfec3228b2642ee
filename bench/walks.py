"""Walk generation speed: the package's vectorised generator against the seed work's
per-step k-d tree loop, measured in the same run on the same cities and graph.

    python bench/walks.py [--n_ref 2000] [--n_walks 1000000]

Prints walks/s of both, their ratio (target >= 10x), and the wall time to generate and save
1,000,000 walks as a DatasetDict (target < 60 s on 2 cores)."""
import argparse, tempfile, time, json, os
import numpy as np
from wm_nb.cities import load_cities
from wm_nb.walks import neighbour_graph, random_walks, random_walks_reference, check_walks
from wm_nb.mixtures import build_mixture, make_manifest, save_dataset

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument('--n_ref', type=int, default=2000, help='walks for the per-step reference loop')
p.add_argument('--n_walks', type=int, default=1_000_000, help='walks for the vectorised generator')
p.add_argument('--threshold_km', type=float, default=200.0)
a = p.parse_args()

cities = load_cities()
print(f"{len(cities):,} cities, T = {a.threshold_km:g} km, max_len 32, {os.cpu_count()} CPUs")
t = time.perf_counter(); ref = random_walks_reference(cities, a.n_ref, a.threshold_km, seed=0); t_ref = time.perf_counter() - t
t = time.perf_counter(); g = neighbour_graph(cities, a.threshold_km); t_graph = time.perf_counter() - t
t = time.perf_counter(); w, l = random_walks(g, a.n_walks, seed=0); t_vec = time.perf_counter() - t
check_walks(cities, w, l, a.threshold_km)
ref_rate, vec_rate = a.n_ref/t_ref, a.n_walks/t_vec
print(f"reference (tree query per step): {a.n_ref:>9,} walks in {t_ref:7.2f} s = {ref_rate:>12,.0f} walks/s  (mean length {np.mean([len(x) for x in ref]):.2f})")
print(f"wm_nb vectorised:                {a.n_walks:>9,} walks in {t_vec:7.2f} s = {vec_rate:>12,.0f} walks/s  (mean length {l.mean():.2f}; graph built in {t_graph:.2f} s)")
print(f"speed-up: {vec_rate/ref_rate:,.0f}x (target >= 10x)")

with tempfile.TemporaryDirectory() as d:
    t = time.perf_counter()
    dsd, info, c = build_mixture(cities, {'seed': 0, 'tasks': {'walk': {'n': a.n_walks, 'threshold_km': a.threshold_km}}})
    save_dataset(dsd, make_manifest(c, info, dsd), c, f"{d}/walks")
    t_all = time.perf_counter() - t
print(f"{a.n_walks:,} walks generated and saved as a DatasetDict in {t_all:.1f} s (target < 60 s)")
print(json.dumps(dict(ref_walks_per_s=ref_rate, vec_walks_per_s=vec_rate, ratio=vec_rate/ref_rate, generate_and_save_s=t_all, n_walks=a.n_walks)))
