#!/usr/bin/env python3
"""Render every page of the built book in headless Chromium at 1400 px and check that it fits.

``make screenshots`` (after ``make book``) opens each page of the table of contents from ``_build/html``,
writes a full-page picture to ``book/screenshots/<page>.png`` (palette PNG: the pages are text and
line plots, so 256 colours lose nothing a reader sees and keep the committed files small), and measures
in the browser every table and every cell output against the width of the content column. It exits 1
with one line per overflowing element (page, element, its width, the column's width), so a table that
runs off the page fails here rather than in a reader's browser. ``book/screenshots/README.md`` lists the
pages with their heights and links the pictures.

Chromium is Debian's package (``apt-get install chromium``); it is driven through the DevTools protocol
over a pipe (``--remote-debugging-pipe``), which needs no network, no port and no package beyond
Pillow (a dependency of matplotlib). Not part of ``make test``: CI has no Chromium.

Usage: python tools/screenshots.py [--html _build/html] [--out book/screenshots] [--width 1400] [--no-png]
       [--only 09_ ...]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--force-device-scale-factor=1", "--remote-debugging-pipe"]
#: Chromium composites a capture in one surface; beyond a few thousand pixels tall it repeats or blanks
#: tiles, so tall pages are captured in slices of this height and stitched.
SLICE_PX = 4000
#: pages up to this height are captured in one window as tall as the page (Chromium's texture limit is 16384)
TALL_PX = 16000

# Waits for what changes the layout after the load event: MathJax's typesetting and the web fonts.
SETTLE_JS = """
(async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  if (document.fonts && document.fonts.ready) { await document.fonts.ready; }
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  return true;
})()
"""

# The content column is the article's content box; an element overflows when it is laid out wider than
# that (a table's own box: pandas tables sit in a scrolling wrapper that is never wider than the column)
# or when its content is (scrollWidth of a cell's output). Collapsed blocks are not laid out and are
# skipped: moving wide detail into one is a way to make a page fit.
MEASURE_JS = """
(() => {
  const article = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
  const cs = getComputedStyle(article);
  const column = article.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight);
  const cells = Array.from(article.querySelectorAll('div.cell'));
  const where = el => {
    const cell = el.closest('div.cell');
    let heading = null;
    const all = Array.from(article.querySelectorAll('h1, h2, h3, h4'));
    for (const h of all) {
      if (h.compareDocumentPosition(el) & Node.DOCUMENT_POSITION_FOLLOWING) heading = h; else break;
    }
    const section = heading ? heading.textContent.replace(/[#¶]/g, '').trim().slice(0, 60) : 'top';
    return (cell ? 'code cell ' + (cells.indexOf(cell) + 1) + ', ' : '') + 'under "' + section + '"';
  };
  const shown = el => el.getClientRects().length > 0;
  const found = [];
  let tables = 0, outputs = 0;
  for (const t of article.querySelectorAll('table')) {
    if (!shown(t) || t.closest('div.cell_output')) continue;  // an output's tables count with the output
    tables += 1;
    const w = t.getBoundingClientRect().width;
    if (w > column + 1) found.push({element: 'table (' + where(t) + ')', width: Math.round(w)});
  }
  for (const o of article.querySelectorAll('div.cell_output')) {
    if (!shown(o)) continue;
    outputs += 1;
    let w = o.scrollWidth;
    for (const d of o.querySelectorAll('*')) { if (shown(d)) w = Math.max(w, d.scrollWidth); }
    if (w > column + 1) found.push({element: 'output (' + where(o) + ')', width: Math.round(w)});
  }
  tables += Array.from(article.querySelectorAll('div.cell_output table')).filter(shown).length;
  return {column: Math.round(column), tables, outputs, overflow: found,
          height: Math.ceil(document.documentElement.scrollHeight)};
})()
"""


class Browser:
    """One headless Chromium, spoken to in DevTools protocol messages over its pipe (fds 3 and 4)."""

    def __init__(self, executable: str) -> None:
        self.profile = tempfile.mkdtemp(prefix="mst-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def as_fds_3_and_4() -> None:  # runs in the child before exec
            # copies first: a pipe end may already be fd 3 or 4, and dup2 onto itself keeps close-on-exec
            read_end, write_end = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self.proc = subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            preexec_fn=as_fds_3_and_4, close_fds=False,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._buffer = b""
        self._events: list[dict[str, Any]] = []

    def _read_message(self, timeout: float) -> dict[str, Any]:
        import select

        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed its DevTools pipe (did it start? try running it by hand)")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 120.0) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read_message(timeout)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._events.append(reply)

    def wait_for(self, event: str, session: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for i, e in enumerate(self._events):
                if e.get("method") == event and e.get("sessionId") == session:
                    del self._events[: i + 1]
                    return
            self._events.clear()
            self._events.append(self._read_message(max(0.1, deadline - time.monotonic())))

    def evaluate(self, expression: str, session: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                "returnByValue": True}, session)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except Exception:  # noqa: BLE001 - it is going away either way
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


def book_pages(html: Path) -> list[str]:
    """The pages of the table of contents (``book/intro``, ``notebooks/00_census``, ...), in its order."""
    import yaml

    toc = yaml.safe_load((ROOT / "book/_toc.yml").read_text())
    pages = [toc["root"]]

    def walk(node: object) -> None:
        if isinstance(node, dict):
            pages.extend([node["file"]] if "file" in node else [])
            for key, value in node.items():
                if key != "root":
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(toc)
    missing = [p for p in pages if not (html / f"{p}.html").is_file()]
    if missing:
        raise SystemExit(f"{html} has no page for {missing}: run `make book` first")
    return pages


def render(browser: Browser, session: str, url: str, width: int) -> dict[str, Any]:
    browser.send("Emulation.setDeviceMetricsOverride",
                 {"width": width, "height": 1000, "deviceScaleFactor": 1, "mobile": False}, session)
    browser.send("Page.navigate", {"url": url}, session)
    browser.wait_for("Page.loadEventFired", session)
    browser.evaluate(SETTLE_JS, session)
    return browser.evaluate(MEASURE_JS, session)


def capture(browser: Browser, session: str, width: int, height: int):
    """The whole page as one picture. A page up to TALL_PX is laid out in a window as tall as itself and
    captured at once (captured beyond a 1000 px window, Chromium 150 shifted some tall pages sideways by
    the sidebar's width); a taller one in slices."""
    from PIL import Image
    import base64

    if height <= TALL_PX:
        browser.send("Emulation.setDeviceMetricsOverride",
                     {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session)
        browser.evaluate(SETTLE_JS, session)
        shot = browser.send("Page.captureScreenshot", {"format": "png"}, session)
        page = Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB")
        return page.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    page = Image.new("RGB", (width, height), "white")
    for top in range(0, height, SLICE_PX):
        h = min(SLICE_PX, height - top)
        shot = browser.send("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": top, "width": width, "height": h, "scale": 1}}, session)
        page.paste(Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB"), (0, top))
    return page.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)


def write_index(out: Path, rows: list[dict[str, Any]], width: int) -> None:
    lines = [
        "# Screenshots of the book",
        "",
        f"Every page of the built book as headless Chromium renders it at {width} px wide, full height, made",
        "by `make screenshots` (`tools/screenshots.py`), which also fails when a table or a cell output is",
        "wider than the content column. Regenerate after `make book`.",
        "",
        "| page | height (px) | tables | outputs | overflowing |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        name = r["page"].replace("/", "_")
        lines.append(f"| [{r['page']}]({name}.png) | {r['height']:,} | {r['tables']} | {r['outputs']} | "
                     f"{len(r['overflow'])} |")
    (out / "README.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--html", type=Path, default=ROOT / "_build/html", help="the built book")
    parser.add_argument("--out", type=Path, default=ROOT / "book/screenshots", help="where the pictures go")
    parser.add_argument("--width", type=int, default=1400, help="window width in CSS pixels")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--no-png", action="store_true", help="measure only; write no pictures")
    parser.add_argument("--only", nargs="+", metavar="TEXT",
                        help="only the pages whose name contains one of these (e.g. 09_); the index is left as it is")
    args = parser.parse_args(argv)
    if not Path(args.chromium).exists():
        print(f"no Chromium at {args.chromium}: apt-get install -y chromium (or --chromium PATH)", file=sys.stderr)
        return 2
    pages = book_pages(args.html)
    if args.only:
        pages = [p for p in pages if any(o in p for o in args.only)]
    if not args.no_png:
        args.out.mkdir(parents=True, exist_ok=True)
    if not args.no_png and not args.only:
        for old in args.out.glob("*.png"):  # a page that left the book must not keep its picture
            old.unlink()
    browser = Browser(args.chromium)
    rows = []
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        browser.send("Page.enable", session=session)
        for page in pages:
            measured = render(browser, session, (args.html / f"{page}.html").resolve().as_uri(), args.width)
            measured["page"] = page
            rows.append(measured)
            if not args.no_png:
                capture(browser, session, args.width, measured["height"]).save(
                    args.out / f"{page.replace('/', '_')}.png", optimize=True)
            print(f"{page:45s} {measured['height']:>7,} px  {measured['tables']:>3} tables  "
                  f"{measured['outputs']:>3} outputs  {len(measured['overflow'])} overflowing", flush=True)
    finally:
        browser.close()
    if not args.no_png and not args.only:
        write_index(args.out, rows, args.width)
    sys.stdout.flush()
    overflow = [(r["page"], o, r["column"]) for r in rows for o in r["overflow"]]
    for page, o, column in overflow:
        print(f"OVERFLOW {page}: {o['element']} is {o['width']} px wide, the column {column} px", file=sys.stderr)
    total = sum(r["height"] for r in rows)
    print(f"{len(rows)} pages, {total:,} px in all; " + (f"{len(overflow)} element(s) overflow" if overflow
                                                          else "every table and output fits"))
    return 1 if overflow else 0


if __name__ == "__main__":
    sys.exit(main())
