"""The docs site as a reader sees it: `wm_nb.docs.build_site` builds it from the notebooks, a local HTTP server serves
it, and a real headless Chromium (the system's `chromium` + `chromedriver`, nothing downloaded) reads every page.

Fails on a browser console error, a broken internal link or anchor, an image that did not load; checks the index shows
the Quickstart with the README's install line, the spatial-analysis page shows its histogram and its world map, every
notebook has a page linked from the index, and search finds a page. A screenshot of each page goes to
tests/outputs/docs_screenshots/."""
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
