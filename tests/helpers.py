"""Helpers shared by the end-to-end tests: run a console script, hash a folder, check a refused command.

Test modules import them (`from helpers import run, one_error_line, tree`); pytest puts this folder on the path
because `tests/` is not a package. `conftest.py` builds its fixtures from the same functions.
"""
from __future__ import annotations
import hashlib, os, subprocess, sys
from pathlib import Path

BIN = Path(sys.executable).parent   # the console scripts installed next to the interpreter running the tests

ENV = dict(os.environ, HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1', TRANSFORMERS_OFFLINE='1', MPLBACKEND='Agg', PYTHONUNBUFFERED='1')


def run(*args, cwd, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    "Run console script `args[0]` (installed next to this Python) with the rest as arguments in `cwd`; text output captured."
    return subprocess.run([str(BIN/args[0]), *map(str, args[1:])], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env or ENV)


def tree(root: Path) -> dict[str, str]:
    "`{relative path: sha256}` of every file under `root` (hidden ones included): proves that nothing was written."
    root = Path(root)
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob('*')) if p.is_file()}


def one_error_line(r: subprocess.CompletedProcess, prog: str, needle=None, cwd=None, before: dict | None = None) -> str:
    """A refused command: exit status 2, stderr exactly one line `prog: error: ...` (containing `needle` if given), no traceback,
    and (with `cwd` and `before`, a `tree` taken before the command) not a byte written, changed or deleted under `cwd`."""
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-3000:])
    assert 'Traceback' not in r.stderr, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f'{prog}: error: '), f"stderr should be one line `{prog}: error: ...`, got {r.stderr!r}"
    if needle is not None: assert str(needle) in lines[0], lines[0]
    if before is not None: assert tree(cwd) == before, "a refused command wrote, changed or deleted files"
    return lines[0]
