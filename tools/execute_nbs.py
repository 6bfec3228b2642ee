"""Execute notebooks in place so that they carry the outputs a reader should see (figures, tables).

    python tools/execute_nbs.py [nbs/01_geo.ipynb ...]     # default: every notebook in nbs/

Cells are skipped exactly as `nbdev_test` skips them (`#| eval: false`, tst_flags such as
`#| slow`, and the `nbdev_export()` cell). Run `nbdev_clean` afterwards."""
import sys, os
from pathlib import Path
from execnb.shell import CaptureShell
from execnb.nbio import read_nb, write_nb
from nbdev.config import get_config
from nbdev.process import NBProcessor
from fastcore.xtras import working_directory

def execute(fn:Path):
    flags = set(get_config().get('tst_flags', '').split())
    nb = NBProcessor(fn, process=True).nb
    def _skip(cell):
        if cell.cell_type != 'code': return True
        if 'nbdev_export' + '(' in cell.source: return True
        d = getattr(cell, 'directives_', {}) or {}
        if d.get('eval:', [''])[0].lower() == 'false': return True
        return bool(flags & d.keys())
    raw = read_nb(fn)
    for c in nb.cells:                       # a cell that now writes nothing must not keep an old output
        if c.cell_type == 'code': c['outputs'] = []
    sh = CaptureShell(fn)
    with working_directory(fn.parent): sh.run_all(nb, exc_stop=True, preproc=_skip)
    for c_raw, c in zip(raw.cells, nb.cells):
        if c_raw.cell_type == 'code':
            c_raw['outputs'] = c.get('outputs', [])
            c_raw['execution_count'] = c.get('execution_count')
    write_nb(raw, fn)
    print(f"executed {fn}")

if __name__ == '__main__':
    os.environ.setdefault('MPLBACKEND', 'Agg')
    files = [Path(f) for f in sys.argv[1:]] or sorted(Path('nbs').glob('*.ipynb'))
    for f in files: execute(f.resolve())
