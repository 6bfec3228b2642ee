"""The docs site as a reader sees it: `wm_nb.docs.build_site` builds it from the notebooks, a local HTTP server serves
it, and a real headless Chromium (the system's `chromium` + `chromedriver`, nothing downloaded) reads every page.

Fails on a browser console error, a broken internal link or anchor, an image that did not load; checks the index shows
the Quickstart with the README's install line, the spatial-analysis page shows its histogram and its world map, every
notebook has a page linked from the index, and search finds a page. A screenshot of each page goes to
tests/outputs/docs_screenshots/.

The interactive error map (nbs/10a_interactive.ipynb) is checked on its page: BokehJS came inline (every request the
page made went to this server), the map holds every city of the notebook's table and is drawn, and a real mouse moved
over an isolated city brings up a tooltip with that city's name, position and error as computed here from the table
(screenshot: tests/outputs/interactive_map_hover.png)."""
from __future__ import annotations
import base64, functools, http.server, os, re, shutil, sys, threading, time, urllib.error, urllib.request
from pathlib import Path
from urllib.parse import urldefrag

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT/'tests'/'outputs'/'docs_screenshots'
INSTALL_HINT = ("no headless Chromium found (looked for chromium/chromium-browser/google-chrome and chromedriver on PATH): "
                "install them with `apt-get install chromium chromium-driver` (Debian/Ubuntu, as root) to run the docs browser test")


def find_browser() -> tuple[str, str] | None:
    "`(browser, chromedriver)` paths of a system Chromium, or None."
    browser = next((p for n in ('chromium', 'chromium-browser', 'google-chrome') if (p := shutil.which(n))), None)
    driver = shutil.which('chromedriver') or next((p for p in ('/usr/bin/chromedriver', '/usr/lib/chromium/chromedriver')
                                                   if os.access(p, os.X_OK)), None)
    return (browser, driver) if browser and driver else None


def readme_install_line() -> str:
    "The first line of the README's Quickstart block (the install line)."
    text = (ROOT/'README.md').read_text()
    block = re.search(r'^#+ [^\n]*[Qq]uickstart.*?```\w*\n(.*?)```', text, flags=re.S | re.M)
    assert block, "README.md has no Quickstart code block"
    return next(l for l in block[1].splitlines() if l.strip() and not l.startswith('#'))


@pytest.fixture(scope='module')
def built(tmp_path_factory):
    "The site built from the notebooks into a temporary folder: `(site folder, [(notebook, page), ...], seconds)`."
    from wm_nb.docs import build_site
    t = time.time()
    site, pages = build_site(ROOT, tmp_path_factory.mktemp('docs')/'site')
    return site, pages, time.time() - t


@pytest.fixture(scope='module')
def server(built):
    "Base URL of the site served on 127.0.0.1 (a free port) from a background thread."
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a): pass
    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):   # the browser dropping a download when it leaves a page is no error
            if not isinstance(sys.exc_info()[1], ConnectionError): super().handle_error(request, client_address)
    httpd = Server(('127.0.0.1', 0), functools.partial(Quiet, directory=str(built[0])))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f'http://127.0.0.1:{httpd.server_address[1]}/'
    httpd.shutdown(); httpd.server_close()


@pytest.fixture(scope='module')
def browser():
    "Headless system Chromium driven by selenium through the system chromedriver; skips (saying how to install) if absent."
    found = find_browser()
    if found is None: pytest.skip(INSTALL_HINT)
    webdriver = pytest.importorskip('selenium.webdriver', reason='selenium is missing: pip install -e ".[dev]"')
    from selenium.webdriver.chrome.service import Service
    os.environ['SE_OFFLINE'] = 'true'            # selenium-manager must not fetch a browser or driver
    opts = webdriver.ChromeOptions()
    opts.binary_location = found[0]
    for a in ['--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu', '--window-size=1280,1000',
              '--no-first-run', '--disable-extensions', '--disable-background-networking',
              '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1']:   # any fetch off this machine fails loudly
        opts.add_argument(a)
    opts.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    d = webdriver.Chrome(service=Service(executable_path=found[1]), options=opts)
    d.set_page_load_timeout(30)
    yield d
    d.quit()


PAGE_STATE = """
const imgs = Array.from(document.images);
return {
  ready: document.readyState === 'complete' && imgs.every(i => i.complete),
  title: document.title,
  links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href),
  ids: Array.from(document.querySelectorAll('[id]')).map(e => e.id)
       .concat(Array.from(document.querySelectorAll('a[name]')).map(a => a.name)),
  broken_imgs: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.currentSrc || i.src),
  n_imgs: imgs.length,
};"""

# The figure drawn by the code of a notebook cell: the cell's input contains `code`, its output an <img> shown on the page.
CELL_FIGURE = """
const code = arguments[0];
for (const cell of document.querySelectorAll('div.cell')) {
  const input = cell.querySelector('.cell_input');
  if (!input || !input.textContent.includes(code)) continue;
  const img = cell.querySelector('.cell_output img');
  if (!img) continue;
  const r = img.getBoundingClientRect();
  return {w: img.naturalWidth, h: img.naturalHeight, shown_w: r.width, shown_h: r.height,
          visible: img.complete && img.naturalWidth > 0 && r.width > 0 && r.height > 0 &&
                   getComputedStyle(img).visibility !== 'hidden' && getComputedStyle(img).display !== 'none'};
}
return null;"""


def load(driver, url, timeout=20):
    "Open `url` and wait until the document and its images are loaded; returns the page state."
    driver.get(url)
    end = time.time() + timeout
    while True:
        st = driver.execute_script(PAGE_STATE)
        if st['ready'] or time.time() > end: return st
        time.sleep(0.1)


def wait_for(driver, script, *args, timeout=10):
    "Run `script` until it returns something truthy (or `timeout` s pass); returns its last result."
    end = time.time() + timeout
    while not (res := driver.execute_script(script, *args)) and time.time() < end: time.sleep(0.1)
    return res


def screenshot(driver, path: Path, max_h: int = 6000):
    "Save a full-page PNG (capped at `max_h` px tall) of the current page."
    h = min(max_h, driver.execute_script('return document.documentElement.scrollHeight'))
    try:
        png = driver.execute_cdp_cmd('Page.captureScreenshot', {'format': 'png', 'captureBeyondViewport': True,
                                     'clip': {'x': 0, 'y': 0, 'width': 1280, 'height': h, 'scale': 1}})['data']
        path.write_bytes(base64.b64decode(png))
    except Exception: driver.save_screenshot(str(path))


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as r: return r.status
    except urllib.error.HTTPError as e: return e.code


def test_docs_site_in_chromium(built, server, browser):
    site, pages, build_s = built
    html_pages = sorted(p.name for p in site.glob('*.html'))
    nb_pages = [f'{pg}.html' for _, pg in pages]
    assert [n for n, _ in pages][0] == 'index.ipynb'
    assert set(nb_pages) <= set(html_pages), f"notebooks without a page: {set(nb_pages) - set(html_pages)}"
    n_nbs = len([p for p in (ROOT/'nbs').glob('*.ipynb') if not p.name.startswith(('_', '.'))])
    assert len(pages) == n_nbs, (len(pages), n_nbs)

    shutil.rmtree(SHOTS, ignore_errors=True); SHOTS.mkdir(parents=True)
    browser.get_log('browser')                                      # drop anything logged before the first page
    problems, links, ids, states = [], {}, {}, {}
    t = time.time()
    for name in ['index.html'] + [p for p in html_pages if p != 'index.html']:
        url = server + name
        st = states[name] = load(browser, url)
        if not st['ready']: problems.append(f"{name}: did not finish loading")
        for e in browser.get_log('browser'):
            if e['level'] == 'SEVERE': problems.append(f"{name}: console error: {e['message']}")
        problems += [f"{name}: image not loaded: {src}" for src in st['broken_imgs']]
        ids[name] = set(st['ids'])
        for href in st['links']:
            if href.startswith(server): links.setdefault(href, name)
        screenshot(browser, SHOTS/f"{name[:-5]}.png")

    # internal links: every target answers 200, and a #fragment names an element of the page it points to
    for href, on in sorted(links.items()):
        target, frag = urldefrag(href)
        path = target[len(server):] or 'index.html'
        if path.endswith('/'): path += 'index.html'
        if path in ids:
            if frag and frag not in ids[path]: problems.append(f"{on}: link {href} names a missing anchor #{frag}")
        elif (code := http_status(target)) != 200: problems.append(f"{on}: broken link {href} (HTTP {code})")

    # navigation: the index links to every notebook's page
    index_links = {urldefrag(h)[0][len(server):] for h in states['index.html']['links'] if h.startswith(server)}
    problems += [f"index.html does not link to {p}" for p in nb_pages if p != 'index.html' and p not in index_links]

    # the index is the README: its Quickstart section with the install line
    browser.get(server + 'index.html')
    qs = wait_for(browser, """
      const h = Array.from(document.querySelectorAll('h1,h2,h3')).find(h => /quickstart/i.test(h.textContent));
      if (!h) return null;
      const sec = h.closest('section') || document.body;
      return {visible: h.getBoundingClientRect().height > 0,
              code: Array.from(sec.querySelectorAll('pre')).map(p => p.textContent).join('\\n')};""")
    assert qs is not None, "index.html has no Quickstart heading"
    assert qs['visible'], "the Quickstart heading is not displayed"
    assert readme_install_line() in qs['code'], f"the Quickstart does not show {readme_install_line()!r}"

    # the spatial-analysis page (nbs/04_spatial.ipynb) shows its histogram and its world map
    spatial = dict(pages)['04_spatial.ipynb'] + '.html'
    browser.get(server + spatial)
    hist = wait_for(browser, CELL_FIGURE, 'plot_neighbour_histogram(counts)')
    world = wait_for(browser, CELL_FIGURE, 'plot_cities(cities, values=counts')
    assert hist and hist['visible'] and hist['w'] >= 200, f"{spatial}: the neighbour histogram is not shown: {hist}"
    assert world and world['visible'] and world['w'] >= 400, f"{spatial}: the world map is not shown: {world}"
    assert world['w'] > 1.3*world['h'], f"{spatial}: the map figure is not a world map's shape: {world}"
    assert 'neighbour_counts' in ids[spatial], f"{spatial}: show_doc(neighbour_counts) is not rendered"

    # search runs in the browser from the local index
    browser.get(server + 'search.html?q=haversine')
    hits = wait_for(browser, "const a = Array.from(document.querySelectorAll('#search-results a, ul.search a')).map(a => a.href); "
                             "return a.length ? a : null;", timeout=15) or []
    problems += [f"search.html: console error: {e['message']}" for e in browser.get_log('browser') if e['level'] == 'SEVERE']
    assert any(dict(pages)['01_geo.ipynb'] + '.html' in h for h in hits), f"searching 'haversine' does not find the geometry page: {hits}"

    assert not problems, '\n'.join(problems)
    assert sorted(p.name for p in SHOTS.glob('*.png')) == sorted(f'{p[:-5]}.png' for p in html_pages)
    print(f"built {len(pages)} notebook pages in {build_s:.1f} s; read {len(html_pages)} pages and checked "
          f"{len(links)} internal links in {time.time() - t:.1f} s; screenshots in {SHOTS}")


# The interactive map (wm_nb.interactive, Bokeh): the city markers' renderer is named 'cities'; BokehJS draws on a canvas
# inside shadow DOM, so its state is read through the `Bokeh` global and the page's own elements.
MAP_STATE = """
if (typeof Bokeh === 'undefined' || !Bokeh.documents || !Bokeh.documents.length) return null;
const doc = Bokeh.documents[0], r = doc.get_model_by_name('cities');
const root = (Bokeh.index.roots || [])[0];
if (!r || !root || !(root.has_finished ? root.has_finished() : true)) return null;
const rv = root.renderer_views.get(r), cv = root.canvas_view, c = cv.primary.canvas, rect = c.getBoundingClientRect();
const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data, colours = new Set();
for (let i = 0; i < px.length; i += 4*97) colours.add((px[i] << 16) | (px[i+1] << 8) | px[i+2]);
return {n_docs: Bokeh.documents.length, n_roots: document.querySelectorAll('[data-root-id]').length,
        n_points: r.data_source.get_length(), n_drawn: Array.from(rv.glyph.sx).filter(Number.isFinite).length,
        cities: Array.from(r.data_source.data.city || []), w: rect.width, h: rect.height, colours: colours.size};"""

REQUESTS = """
return {requests: performance.getEntriesByType('resource').map(e => e.name),
        loads: Array.from(document.querySelectorAll('script[src], link[href][rel~="stylesheet"], link[href][rel~="preload"], '
                                                    + 'link[href][rel~="modulepreload"], link[href][rel~="icon"]')).map(e => e.src || e.href)};"""

# Screen position (viewport px) of city `arguments[0]`'s marker, after scrolling the map into the middle of the window.
CITY_POSITION = """
const r = Bokeh.documents[0].get_model_by_name('cities'), root = Bokeh.index.roots[0];
const k = Array.from(r.data_source.data.city).indexOf(arguments[0]);
if (k < 0) return null;
const c = root.canvas_view.el;
c.scrollIntoView({block: 'center', behavior: 'instant'});
const rect = c.getBoundingClientRect(), g = root.renderer_views.get(r).glyph;
return {x: rect.left + g.sx[k], y: rect.top + g.sy[k], inside: rect.top >= 0 && rect.bottom <= innerHeight};"""

# Text of every tooltip Bokeh shows now (tooltips live in shadow roots).
TOOLTIPS = """
const found = [];
(function walk(node) {
  for (const el of node.querySelectorAll('*')) {
    if (el.classList && el.classList.contains('bk-tooltip-content') && el.getClientRects().length) found.push(el.innerText);
    if (el.shadowRoot) walk(el.shadowRoot);
  }
})(document);
return found.length ? found : null;"""


def samples_csv() -> Path:
    "The table nbs/10a_interactive.ipynb shows: the path its `SAMPLES_CSV = Path('...')` line names, relative to nbs/."
    import json
    cells = json.loads((ROOT/'nbs'/'10a_interactive.ipynb').read_text())['cells']
    m = re.search(r"^SAMPLES_CSV\s*=\s*Path\(['\"]([^'\"]+)['\"]\)", '\n'.join(''.join(c['source']) for c in cells), flags=re.M)
    assert m, "nbs/10a_interactive.ipynb has no `SAMPLES_CSV = Path('...')` line"
    return ROOT/'nbs'/m[1]


def isolated_city(table):
    "The answered city farthest (in degrees on the map) from any other city: its marker is the only one under the mouse."
    import numpy as np
    from scipy.spatial import cKDTree
    xy = table[['lon', 'lat']].to_numpy(float)
    gap = cKDTree(xy).query(xy, 2)[0][:, 1]
    return table.iloc[int(np.argmax(np.where(np.isfinite(table.error_km.to_numpy(float)), gap, -1)))]


def test_interactive_map_in_chromium(built, server, browser):
    import pandas as pd
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    site, pages, _ = built
    page = dict(pages)['10a_interactive.ipynb'] + '.html'
    table = pd.read_csv(samples_csv())
    browser.get_log('browser')
    st = load(browser, server + page)
    assert st['ready'], f"{page} did not finish loading"
    m = wait_for(browser, MAP_STATE, timeout=20) or {}

    # BokehJS came with the page: nothing was requested from anywhere but this server
    sent = browser.execute_script(REQUESTS)
    off = [u for u in sent['requests'] + sent['loads'] if not u.startswith((server, 'data:', 'blob:'))]
    assert not off, f"{page} asks for {off}: everything must come from the page or this server"
    assert m, f"{page}: no Bokeh map was drawn (BokehJS missing, or no renderer named 'cities')"

    # one map, every city of the table, drawn
    assert (m['n_docs'], m['n_roots']) == (1, 1), m
    assert m['n_points'] == m['n_drawn'] == len(table), (m['n_points'], m['n_drawn'], len(table))
    assert sorted(m['cities']) == sorted(table.city.tolist())
    assert m['w'] >= 400 and m['h'] >= 200 and m['w'] > 1.3*m['h'], f"{page}: the map is not shown at a world map's shape: {m['w']}x{m['h']}"
    assert m['colours'] >= 20, f"{page}: the map's canvas is nearly blank ({m['colours']} colours)"

    # a real mouse over an isolated city shows its values, as computed here from the table
    city = isolated_city(table)
    browser.execute_script(CITY_POSITION, int(city.city)); time.sleep(0.3)      # scroll there, let the layout settle
    pos = browser.execute_script(CITY_POSITION, int(city.city))
    assert pos and pos['inside'], f"{page}: cannot place city {city['name']} on the screen: {pos}"
    ab = ActionBuilder(browser); ab.pointer_action.move_to_location(int(round(pos['x'])), int(round(pos['y']))); ab.perform()
    tips = wait_for(browser, TOOLTIPS, timeout=5)
    SHOTS.parent.mkdir(parents=True, exist_ok=True); browser.save_screenshot(str(SHOTS.parent/'interactive_map_hover.png'))
    assert tips, f"{page}: hovering {city['name']} at {pos} shows no tooltip"
    assert len(tips) == 1, f"{page}: hovering {city['name']} shows {len(tips)} tooltips: {tips}"
    text = ' '.join(tips[0].split())
    for want in [f"city: {city['name']} (c_{int(city.city)})", f"truth: {city.lat:.2f}, {city.lon:.2f}",
                 f"prediction: {city.pred_lat:.2f}, {city.pred_lon:.2f}", f"error: {city.error_km:,.1f} km",
                 f"centroid floor: {city.centroid_error_km:,.0f} km"]:
        assert want in text, f"{page}: the tooltip of {city['name']} does not show {want!r}: {text!r}"

    errors = [e['message'] for e in browser.get_log('browser') if e['level'] == 'SEVERE']
    assert not errors, f"{page}: console errors: {errors}"
