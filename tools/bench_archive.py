#!/usr/bin/env python3
"""Write the book's appendix of the training-speed work, ``book/speed_archive.md``, from
``results/bench/manifest.json``: every GPU call (oldest first) with the code it ran, its script and
commands, what it measured, and its files (current ones read by the chapter, archived, superseded).

The manifest is the record; this page only lays it out, so ``--check`` (a test) fails when the page and
the manifest disagree. Usage: python tools/bench_archive.py [--check]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "results/bench/manifest.json"
PAGE = ROOT / "book/speed_archive.md"
STATUS_WORDS = {"current": "current", "archived": "archived", "superseded": "superseded"}


def page(manifest: dict) -> str:
    calls = manifest["calls"]
    n_files = sum(len(c["files"]) for c in calls)
    current = [f for c in calls for f in c["files"] if f["status"] == "current"]
    out = [
        "# Appendix: the speed work's GPU calls",
        "",
        "<!-- written by tools/bench_archive.py from results/bench/manifest.json; edit the manifest, not this page -->",
        "",
        f"The [training-speed chapter](../notebooks/09_training_speed.ipynb) reads the current files, the latest "
        f"measurement of each kind ({len(current)} at the top of `results/bench/`). They are among {n_files} files "
        f"and folders that {len(calls)} calls to lent GPU machines stored while the speed work went on; the calls "
        "are listed here, oldest first. Each row gives the code commit "
        "the call ran (from the files' own provenance) after the script's name (kept in "
        "`results/bench/archive/scripts/` as it ran), and what the call measured. Earlier files are in `results/bench/archive/` under the names "
        "the calls wrote. `results/bench/manifest.json` also holds every command line and log.",
        "",
        "```{list-table}",
        ":header-rows: 1",
        ":widths: 18 48 34",
        "",
        "* - call: script at code commit",
        "  - what it measured",
        "  - files (in `archive/` unless current)",
    ]
    for c in calls:
        files = "; ".join(f"`{f['path'].removeprefix('archive/')}` ({STATUS_WORDS[f['status']]})"
                          for f in c["files"]) or "logs only"
        out += [f"* - {c['call']}", f"  - {c['what'] or ''}", f"  - {files}"]
    out.append("```")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if the page is not what the manifest gives")
    args = parser.parse_args(argv)
    text = page(json.loads(MANIFEST.read_text()))
    if args.check:
        if not PAGE.is_file() or PAGE.read_text() != text:
            print(f"{PAGE.relative_to(ROOT)} is out of date: run python tools/bench_archive.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text)
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
