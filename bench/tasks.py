"""Task generation speed: the package's vectorised rows against a straightforward per-row Python loop, for every task,
measured in the same run on the same cities.

Vectorised: `task.sample(cities, n, rng, pool)` + `task_columns(task, cities, ids)`, i.e. sampling, answers and the
text/prompt/completion/task/cities columns a dataset holds (Arrow arrays).
Loop: pure Python and `math`, one row at a time: draw distinct random cities (`random.sample`), compute the answer with
scalar formulas, build the f-string. It follows the package's sampling rules: `perim` draws 2-5 cities; `cross` and
`inside` are balanced to half true by rejection (a candidate whose answer's quota is full is dropped); `inside` draws a
local polygon exactly as the package does (3-6 of the anchor's 24 nearest cities, ordered by bearing around their centre,
rejected unless distinct, simple and well inside one hemisphere; the 24-nearest table is built once with a k-d tree, as
the package does, and that build is timed). `walk`'s loop is `wm_nb.walks.random_walks_reference` (a k-d tree query
per step) plus the f-string. Each loop's texts are compared with the package's texts for the same city ids (column
"same text"), so both compute the same thing.

Then the wall time to generate and save a 10,000,000-row dataset of one task with the package
(`build_mixture` + `save_dataset` into a temporary folder).

    OMP_NUM_THREADS=1 python bench/tasks.py [--n_vec 200000] [--n_loop 20000] [--tasks angle cross ...]
                                            [--big_task angle] [--n_big 10000000] [--skip_big]
"""
import argparse, math, os, random, tempfile, time
import numpy as np
from scipy.spatial import cKDTree
import datasets
from wm_nb.cities import load_cities
from wm_nb.tasks import get_task, task_columns
from wm_nb.walks import random_walks_reference
from wm_nb.mixtures import build_mixture, make_manifest, save_dataset

TASKS = ['loc', 'dist', 'angle', 'compass', 'triarea', 'perim', 'cross', 'inside', 'walk']
R = 6371.0088
COMPASS = ('n', 'ne', 'e', 'se', 's', 'sw', 'w', 'nw')

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument('--tasks', nargs='+', default=TASKS, choices=TASKS, help='tasks to measure (default: all)')
p.add_argument('--n_vec', type=int, default=200_000, help='rows for the vectorised path')
p.add_argument('--n_loop', type=int, default=20_000, help='rows for the per-row loop')
p.add_argument('--big_task', default='angle', choices=[t for t in TASKS if t != 'loc'],
               help='task of the 10M-row generate-and-save run (loc cannot: its rows are distinct cities)')
p.add_argument('--n_big', type=int, default=10_000_000, help='rows of the generate-and-save run')
p.add_argument('--skip_big', action='store_true', help='skip the generate-and-save run')
p.add_argument('--seed', type=int, default=0)
a = p.parse_args()


# ---------------------------------------------------------------- the per-row loop (pure Python + math)

class Loop:
    "Per-city radians and unit vectors as Python lists, and scalar formulas."
    def __init__(self, cities):
        self.n = len(cities)
        self.lat = [math.radians(v) for v in cities.lat.tolist()]
        self.lon = [math.radians(v) for v in cities.lon.tolist()]
        self.xyz = [(math.cos(la)*math.cos(lo), math.cos(la)*math.sin(lo), math.sin(la)) for la, lo in zip(self.lat, self.lon)]

    def km(self, i, j):
        p1, p2, l1, l2 = self.lat[i], self.lat[j], self.lon[i], self.lon[j]
        h = math.sin((p2 - p1)/2)**2 + math.cos(p1)*math.cos(p2)*math.sin((l2 - l1)/2)**2
        return 2*R*math.asin(math.sqrt(min(1.0, h)))

    def bearing(self, i, j):
        p1, p2, dl = self.lat[i], self.lat[j], self.lon[j] - self.lon[i]
        return math.degrees(math.atan2(math.sin(dl)*math.cos(p2), math.cos(p1)*math.sin(p2) - math.sin(p1)*math.cos(p2)*math.cos(dl))) % 360


def cross3(u, v): return (u[1]*v[2] - u[2]*v[1], u[2]*v[0] - u[0]*v[2], u[0]*v[1] - u[1]*v[0])
def dot3(u, v): return u[0]*v[0] + u[1]*v[1] + u[2]*v[2]

def arcs_cross(a, b, c, d):
    "Whether minor arcs a-b and c-d (unit 3-tuples) intersect: the great circles' common points, tested on both arcs."
    n1, n2 = cross3(a, b), cross3(c, d)
    x = cross3(n1, n2)
    if math.sqrt(dot3(x, x)) <= 1e-12: return False
    for y in (x, (-x[0], -x[1], -x[2])):
        if dot3(cross3(a, y), n1) >= 0 and dot3(cross3(y, b), n1) >= 0 and dot3(cross3(c, y), n2) >= 0 and dot3(cross3(y, d), n2) >= 0:
            return True
    return False

def loop_loc(L, rng, n):
    out = []
    for _ in range(n):
        i = rng.randrange(L.n)
        x = min(6283, max(0, math.floor((L.lon[i] + math.pi)*1000)))
        y = min(3141, max(0, math.floor((L.lat[i] + math.pi/2)*1000)))
        out.append(((i,), f"loc(c_{i})={x},{y}"))
    return out

def loop_dist(L, rng, n):
    out = []
    for _ in range(n):
        i, j = rng.sample(range(L.n), 2)
        out.append(((i, j), f"dist(c_{i},c_{j})={round(L.km(i, j))}"))
    return out

def loop_angle(L, rng, n):
    out = []
    for _ in range(n):
        i, j, k = rng.sample(range(L.n), 3)
        d = abs(L.bearing(j, i) - L.bearing(j, k)) % 360
        out.append(((i, j, k), f"angle(c_{i},c_{j},c_{k})={round(min(d, 360 - d))}"))
    return out

def loop_compass(L, rng, n):
    out = []
    for _ in range(n):
        i, j = rng.sample(range(L.n), 2)
        out.append(((i, j), f"compass(c_{i},c_{j})={COMPASS[int(((L.bearing(i, j) + 22.5) % 360)//45) % 8]}"))
    return out

def loop_triarea(L, rng, n):
    out = []
    for _ in range(n):
        i, j, k = rng.sample(range(L.n), 3)
        u, v, w = L.xyz[i], L.xyz[j], L.xyz[k]
        e = 2*math.atan2(abs(dot3(u, cross3(v, w))), 1 + dot3(u, v) + dot3(v, w) + dot3(w, u))
        out.append(((i, j, k), f"triarea(c_{i},c_{j},c_{k})={round(e*R*R/1000)}"))
    return out

def loop_perim(L, rng, n):
    out = []
    for _ in range(n):
        ids = rng.sample(range(L.n), rng.randint(2, 5))
        km = sum(L.km(ids[q], ids[(q + 1) % len(ids)]) for q in range(len(ids)))
        out.append((tuple(ids), f"perim({','.join(f'c_{i}' for i in ids)})={round(km)}"))
    return out

def loop_cross(L, rng, n):
    want, out = [n - n//2, n//2], []
    while len(out) < n:
        i, j, k, m = rng.sample(range(L.n), 4)
        t = int(arcs_cross(L.xyz[i], L.xyz[j], L.xyz[k], L.xyz[m]))
        if want[t] == 0: continue
        want[t] -= 1
        out.append(((i, j, k, m), f"cross(c_{i},c_{j},c_{k},c_{m})={('false', 'true')[t]}"))
    return out

def loop_inside(L, rng, n, knn):
    want, out = [n - n//2, n//2], []
    while len(out) < n:
        anchor = rng.randrange(L.n)
        nv = rng.randint(3, 6)
        pick = rng.sample(knn[anchor], 6)
        if rng.random() < 0.5: point, verts = anchor, pick[:nv]
        else: point, verts = pick[0], [anchor] + pick[1:nv]
        if len(set(verts + [point])) < nv + 1: continue
        s = [sum(L.xyz[v][q] for v in verts) for q in range(3)]
        norm = math.sqrt(dot3(s, s)); m = (s[0]/norm, s[1]/norm, s[2]/norm)
        mlat, mlon = math.atan2(m[2], math.hypot(m[0], m[1])), math.atan2(m[1], m[0])
        def brg(v):
            p2, dl = L.lat[v], L.lon[v] - mlon
            return math.degrees(math.atan2(math.sin(dl)*math.cos(p2), math.cos(mlat)*math.sin(p2) - math.sin(mlat)*math.cos(p2)*math.cos(dl))) % 360
        verts.sort(key=brg)
        if any(dot3(L.xyz[v], m) <= 0.2 for v in verts): continue
        simple = True
        for e in range(nv):
            for f in range(e + 2, nv):
                if e == 0 and f == nv - 1: continue
                if arcs_cross(L.xyz[verts[e]], L.xyz[verts[(e + 1) % nv]], L.xyz[verts[f]], L.xyz[verts[(f + 1) % nv]]): simple = False
        if not simple: continue
        # gnomonic projection about m (great circles -> straight lines), then an even-odd ray cast from the point
        e1 = cross3(m, (1.0, 0.0, 0.0) if abs(m[0]) < 0.9 else (0.0, 1.0, 0.0)); ne = math.sqrt(dot3(e1, e1)); e1 = (e1[0]/ne, e1[1]/ne, e1[2]/ne)
        e2 = cross3(m, e1)
        pv = L.xyz[point]
        inside = False
        if dot3(pv, m) > 0:
            proj = lambda v: (dot3(v, e1)/dot3(v, m), dot3(v, e2)/dot3(v, m))
            qx, qy = proj(pv)
            ring = [proj(L.xyz[v]) for v in verts]
            for q in range(nv):
                (x1, y1), (x2, y2) = ring[q], ring[(q + 1) % nv]
                if (y1 > qy) != (y2 > qy) and qx < x1 + (qy - y1)*(x2 - x1)/(y2 - y1): inside = not inside
        t = int(inside)
        if want[t] == 0: continue
        want[t] -= 1
        ids = (point, *verts)
        out.append((ids, f"inside({','.join(f'c_{i}' for i in ids)})={('false', 'true')[t]}"))
    return out

def loop_walk(cities, n, seed):
    walks = random_walks_reference(cities, n, 200.0, 32, seed=seed)
    return [(tuple(w), "srd_200=" + ','.join(f"c_{i}" for i in w)) for w in walks]


def run_loop(task, cities, n, seed):
    rng = random.Random(seed)
    L = Loop(cities)
    if task == 'walk': return loop_walk(cities, n, seed)
    if task == 'inside':
        _, j = cKDTree(np.asarray(L.xyz)).query(np.asarray(L.xyz), k=24)
        return loop_inside(L, rng, n, j.tolist())
    return globals()[f'loop_{task}'](L, rng, n)


def same_text(task, cities, rows):
    "Share of loop rows whose text equals the package's text for the same city ids."
    k = max(len(r[0]) for r in rows)
    ids = np.full((len(rows), k), -1, np.int64)
    for q, (r, _) in enumerate(rows): ids[q, :len(r)] = r
    texts = task_columns(get_task(task), cities, ids)['text'].to_pylist()
    return float(np.mean([t == s for t, (_, s) in zip(texts, rows)]))


# ---------------------------------------------------------------- measure

datasets.disable_progress_bars()
cities = load_cities()
pool = np.arange(len(cities))
print(f"{len(cities):,} cities, {os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; "
      f"vectorised {a.n_vec:,} rows, loop {a.n_loop:,} rows per task")
print(f"{'task':<8} {'vectorised rows/s':>18} {'loop rows/s':>12} {'ratio':>8} {'same text':>10}")
results = {}
for task in a.tasks:
    t = get_task(task, threshold_km=200) if task == 'walk' else get_task(task)   # a fresh walk task: its graph cache is cold
    t0 = time.perf_counter()
    ids = t.sample(cities, a.n_vec, np.random.default_rng(a.seed), pool)
    cols = task_columns(t, cities, ids)
    t_vec = time.perf_counter() - t0
    assert len(cols['text']) == a.n_vec
    t0 = time.perf_counter()
    rows = run_loop(task, cities, a.n_loop, a.seed)
    t_loop = time.perf_counter() - t0
    assert len(rows) == a.n_loop
    same = same_text(task, cities, rows) if task != 'walk' else float('nan')
    vr, lr = a.n_vec/t_vec, a.n_loop/t_loop
    results[task] = (vr, lr)
    print(f"{task:<8} {vr:>18,.0f} {lr:>12,.0f} {vr/lr:>7,.0f}x {same:>10.4%}" if task != 'walk' else
          f"{task:<8} {vr:>18,.0f} {lr:>12,.0f} {vr/lr:>7,.0f}x {'(walks)':>10}", flush=True)

if not a.skip_big:
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        dsd, info, cc = build_mixture(cities, {'tasks': {a.big_task: a.n_big}})
        t_build = time.perf_counter() - t0
        save_dataset(dsd, make_manifest(cc, info, dsd), cc, f"{d}/big")
        t_all = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in __import__('pathlib').Path(d, 'big').rglob('*') if f.is_file())
    print(f"{a.n_big:,} {a.big_task} rows generated and saved in {t_all:.1f} s ({a.n_big/t_all:,.0f} rows/s): "
          f"build_mixture {t_build:.1f} s, save_dataset {t_all - t_build:.1f} s, {size/2**20:,.0f} MiB on disk")
