"""The repository keeps its promises to a new user: the README's two Quickstart lines, CI running
line 2 verbatim, a README generated from nbs/index.ipynb, and console scripts that exist."""
import configparser, importlib, re, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def quickstart_lines():
    "Non-empty, non-comment lines of the first fenced block under the Quickstart heading (as fresh-clone-check reads them)."
    lines, inq, inblk = [], False, False
    for l in (ROOT/'README.md').read_text().splitlines():
        if re.match(r'^#+ .*[Qq]uickstart', l): inq = True; continue
        if inq and l.startswith('```'):
            if inblk: break
            inblk = True; continue
        if inq and inblk and l.strip() and not l.lstrip().startswith('#'): lines.append(l)
    return lines

def test_quickstart_has_two_lines():
    lines = quickstart_lines()
    assert len(lines) == 2, lines
    assert lines[0].startswith('pip install') and 'wm_data' in lines[0]
    assert 'nbdev_test' in lines[1] and 'pytest' in lines[1]

def test_ci_runs_readme_line_2_verbatim():
    ci = (ROOT/'.ci'/'run').read_text().splitlines()
    assert quickstart_lines()[1] in ci, "the README's test line and .ci/run differ: make them identical"

def test_readme_is_generated_from_index():
    r = subprocess.run([sys.executable, str(ROOT/'tools'/'make_readme.py'), '--check'], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr

def test_console_scripts_resolve():
    cfg = configparser.ConfigParser(delimiters=['=']); cfg.read(ROOT/'settings.ini')
    scripts = cfg['DEFAULT']['console_scripts'].split()
    assert {s.split('=')[0] for s in scripts} >= {'wm_data', 'wm_dataset', 'wm_analyze'}
    for s in scripts:
        name, target = s.split('=')
        assert ' ' not in s
        mod, fn = target.split(':')
        assert callable(getattr(importlib.import_module(mod), fn)), s

def test_torch_is_capped_below_2_14():
    cfg = configparser.ConfigParser(delimiters=['=']); cfg.read(ROOT/'settings.ini')
    req = cfg['DEFAULT']['requirements']
    m = re.search(r'torch([^\s]*)', req)
    assert m and '<2.14' in m.group(1), "torch must stay below 2.14 (newer resolves pull multi-GB CUDA builds)"


def test_no_module_imports_a_later_one():
    "The modules form a line in the notebooks' reading order: each imports only earlier ones (no import circles)."
    import ast
    order = {}
    for nb in sorted((ROOT/'nbs').glob('*.ipynb')):
        m = re.search(r'#\|\s*default_exp\s+(\w+)', nb.read_text())
        if m: order[m[1]] = nb.stem
    later = []
    for mod, nb in order.items():
        tree = ast.parse((ROOT/'wm_nb'/f'{mod}.py').read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ''] if isinstance(node, ast.ImportFrom) else []
            for n in names:
                if isinstance(node, ast.ImportFrom) and node.level: n = f"wm_nb.{n}"
                if n.startswith('wm_nb.') and n.split('.')[1] in order and order[n.split('.')[1]] > nb: later.append(f"{mod} ({nb}) imports {n} ({order[n.split('.')[1]]})")
    assert not later, later
