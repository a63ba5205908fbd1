"""Every value a notebook glues into the book (myst-nb / papermill `glue` outputs), read from executed notebooks.

    python tools/glue_values.py notebooks/*.ipynb                 # JSON {notebook: {name: {mime: value}}}
    python tools/glue_values.py --out tests/fixtures/glue_values.json notebooks/*.ipynb
    python tools/glue_values.py --compare tests/fixtures/glue_values.json DIR_OR_NOTEBOOKS...

Text values (text/plain, text/markdown, text/html, text/latex) are kept as they are; a glued image is kept as
its mime type only (figures are compared by the book build and the screenshots, not here).
With --compare, the exit status is 1 when any notebook's glue values differ from the fixture, and each
difference is printed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TEXT_MIMES = ("text/plain", "text/markdown", "text/html", "text/latex")


def glue_values(path: Path) -> dict[str, dict[str, str]]:
    """{glue name: {mime: value}} of one executed notebook, in the order the notebook glues them."""
    nb = json.loads(Path(path).read_text())
    out: dict[str, dict[str, str]] = {}
    for cell in nb.get("cells", []):
        for o in cell.get("outputs", []):
            scrap = o.get("metadata", {}).get("scrapbook")
            if not scrap:
                continue
            prefix = scrap.get("mime_prefix", "")
            values: dict[str, str] = {}
            for mime, value in o.get("data", {}).items():
                plain = mime[len(prefix):] if prefix and mime.startswith(prefix) else mime
                text = "".join(value) if isinstance(value, list) else value
                values[plain] = text if plain in TEXT_MIMES else f"<{plain}>"
            out[scrap["name"]] = values
    return out


def collect(paths: list[Path]) -> dict[str, dict[str, dict[str, str]]]:
    books: list[Path] = []
    for p in paths:
        books += sorted(p.glob("[0-9][0-9]_*.ipynb")) if p.is_dir() else [p]
    return {b.stem: glue_values(b) for b in books}


def differences(expected: dict, actual: dict) -> list[str]:
    """One line per glue value that is missing, new or different (only notebooks present in `actual`)."""
    lines = []
    for book, values in actual.items():
        want = expected.get(book)
        if want is None:
            lines.append(f"{book}: not in the fixture")
            continue
        for name in sorted(set(want) | set(values)):
            if name not in values:
                lines.append(f"{book}: {name} no longer glued (was {want[name]})")
            elif name not in want:
                lines.append(f"{book}: {name} newly glued ({values[name]})")
            elif want[name] != values[name]:
                lines.append(f"{book}: {name} was {want[name]} now {values[name]}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", type=Path, help="executed notebooks or folders of them")
    ap.add_argument("--out", type=Path, help="write the values here as JSON")
    ap.add_argument("--compare", type=Path, metavar="FIXTURE", help="compare with a stored JSON of values")
    args = ap.parse_args(argv)
    values = collect(args.paths)
    if args.compare:
        diffs = differences(json.loads(args.compare.read_text()), values)
        n = sum(len(v) for v in values.values())
        print(f"{len(values)} notebooks, {n} glue values compared with {args.compare}: {len(diffs)} differ")
        for line in diffs:
            print("  " + line)
        return 1 if diffs else 0
    text = json.dumps(values, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
