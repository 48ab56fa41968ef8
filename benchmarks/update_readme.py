"""Copy benchmarks/results/<name>.md into README.md and docs/**/*.md between <!-- results:<name> --> markers.

    python benchmarks/update_readme.py           # paste every results file into its markers
    python benchmarks/update_readme.py --check   # change nothing; exit 1 and name the files that are out of date

<name> is a path under benchmarks/results/ without `.md` (`demo`, `study_clip/summary`). So every number in README
and docs/ is a benchmark script's output, pasted by a script."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"<!-- results:([\w-]+(?:/[\w-]+)*) -->.*?<!-- /results:\1 -->", flags=re.S)


def update(readme: str, results: Path, where: str = "README") -> str:
    def fill(m: re.Match) -> str:
        f = results / f"{m.group(1)}.md"
        if not f.exists():
            raise FileNotFoundError(f"{where} wants {f}; run the benchmark that writes it")
        return f"<!-- results:{m.group(1)} -->\n{f.read_text().strip()}\n<!-- /results:{m.group(1)} -->"

    return MARKER.sub(fill, readme)


def pages(root: Path = ROOT) -> list[Path]:
    """README.md and every Markdown page under docs/ (the mkdocs site's sources)."""
    return [root / "README.md", *sorted((root / "docs").glob("**/*.md"))]


def markers(text: str) -> list[str]:
    return [m.group(1) for m in MARKER.finditer(text)]


NUMBER = re.compile(r"(?<![\w.])\d+\.\d+x?(?![\w.])")
LINK = re.compile(r"\]\(([^)#]+\.md)(?:#[^)]*)?\)")


def unquoted(readme: str, root: Path = ROOT) -> list[str]:
    """Numbers in README's "## Results" table that none of the pages linked from their row contains: the table
    quotes the pages' script-written tables by hand, so a rerun benchmark must not leave it stale."""
    section = readme.split("\n## Results", 1)[-1].split("\n## ", 1)[0]
    missing = []
    for row in (ln for ln in section.splitlines() if ln.startswith("|") and LINK.search(ln)):
        linked = " ".join((root / link).read_text() for link in LINK.findall(row))
        cells = LINK.sub("]", row)
        missing += [f"{n} ({row.split('|')[1].strip()})" for n in NUMBER.findall(cells) if n not in linked]
    return missing


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a page differs from its results")
    ap.add_argument("--list", action="store_true", help="print every page's markers and exit")
    args = ap.parse_args(argv)
    results = ROOT / "benchmarks" / "results"
    stale = []
    for path in pages():
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text()
        if args.list:
            print(f"{rel}: {', '.join(markers(text)) or '-'}")
            continue
        new = update(text, results, where=rel)
        if args.check:
            if new != text:
                stale.append(rel)
            print(f"{'OUT OF DATE' if new != text else 'up to date'}: {rel} ({len(markers(text))} markers)")
        elif new != text:
            path.write_text(new)
            print(f"updated {rel}")
        else:
            print(f"unchanged {rel}")
    missing = [] if args.list else unquoted((ROOT / "README.md").read_text())
    for m in missing:
        print(f"README's results table quotes {m}, which no page it links holds", file=sys.stderr)
    if missing:
        return 1
    if stale:
        print(
            f"{len(stale)} page(s) differ from benchmarks/results/: run python benchmarks/update_readme.py",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
