#!/usr/bin/env python3
"""Write the book's appendix of the training-speed work, ``book/speed_archive.md``, from
``results/bench/manifest.json``: every GPU call (oldest first) with the code it ran, its script and
commands, what it measured, and its files (current ones read by the chapter, archived, superseded).

The manifest is the record; this page only lays it out, so ``--check`` (a test) fails when the page and
the manifest disagree. It also writes each call as a plan file (``results/bench/archive/plans/``, the format of
``tools/gpu/call.sh``). Usage: python tools/bench_archive.py [--check]
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


PLANS = ROOT / "results/bench/archive/plans"


def plan_name(call: dict) -> str:
    """A call's plan file: named by when it started and the code it ran (a call has no other stable name)."""
    when = (call.get("started_utc") or call["stored_in"]["date"])[:16].replace(":", "")
    return f"{when}-{call['commit'][:7] if call.get('commit') else call['stored_in']['commit'][:7]}.plan"


def plans(manifest: dict) -> dict[str, str]:
    """Every call of the manifest as a plan file (tools/gpu/call.sh's format): what it was, the commands it ran
    on which GPU (``CUDA_VISIBLE_DEVICES=N`` as the lane) and the files it stored, as written at the time.
    Shell variables of the old scripts (``$T``) stay as they were: a plan of a past call is a record."""
    out = {}
    for c in manifest["calls"]:
        lines = [f"# call: {c['call']}", f"# machine: {c.get('machine') or '?'}", f"# commit: {c.get('commit') or '?'}",
                 f"# stored in: {c['stored_in']['commit']} ({c['stored_in']['subject']})"]
        if c.get("script"):
            lines.append(f"# script as it ran: results/bench/{c['script']}")
        what = " ".join((c.get("what") or "").split())
        while what:
            cut = what[:110].rfind(" ") if len(what) > 110 else len(what)
            lines.append(f"# what: {what[:cut]}" if len(lines) < 6 or not lines[-1].startswith("# ") else f"#   {what[:cut]}")
            what = what[cut:].strip()
        for cmd in c.get("commands") or []:
            gpu = "all"
            m = cmd.split(" ", 1)
            if m[0].startswith("CUDA_VISIBLE_DEVICES=") and len(m) == 2 and "," not in m[0]:
                gpu, cmd = m[0].split("=", 1)[1], m[1]
            lines.append(f"run gpu={gpu} {cmd.replace('${', '$${')}")  # the shell's ${X}, not the plan's
        for f in c.get("files") or []:
            lines.append(f"collect {f.get('written_as') or 'results/bench/' + f['path']}")
        name, n = plan_name(c), 2
        while name in out:  # two calls from one start and commit (one per model): the second gets a suffix
            name, n = plan_name(c).replace(".plan", f"-{n}.plan"), n + 1
        out[name] = "\n".join(lines) + "\n"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if the page is not what the manifest gives")
    args = parser.parse_args(argv)
    manifest = json.loads(MANIFEST.read_text())
    text = page(manifest)
    want = plans(manifest)
    if args.check:
        stale = [] if PAGE.is_file() and PAGE.read_text() == text else [PAGE]
        stale += [PLANS / n for n, t in want.items() if not (PLANS / n).is_file() or (PLANS / n).read_text() != t]
        stale += [p for p in PLANS.glob("*.plan") if p.name not in want]
        if stale:
            print(f"out of date: {', '.join(str(p.relative_to(ROOT)) for p in stale)}: run python tools/bench_archive.py",
                  file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text)
    PLANS.mkdir(parents=True, exist_ok=True)
    for n, t in want.items():
        (PLANS / n).write_text(t)
    print(f"wrote {PAGE.relative_to(ROOT)} and {len(want)} plans in {PLANS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
