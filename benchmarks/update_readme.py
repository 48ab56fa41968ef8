"""Copy benchmarks/results/<name>.md into README.md and docs/*.md between <!-- results:<name> --> markers.

    python benchmarks/update_readme.py

So every number in README and docs/ is a benchmark script's output, pasted by a script."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def update(readme: str, results: Path) -> str:
    def fill(m: re.Match) -> str:
        f = results / f"{m.group(1)}.md"
        if not f.exists():
            raise FileNotFoundError(f"README wants {f}; run the benchmark that writes it")
        return f"<!-- results:{m.group(1)} -->\n{f.read_text().strip()}\n<!-- /results:{m.group(1)} -->"

    return re.sub(r"<!-- results:([\w-]+) -->.*?<!-- /results:\1 -->", fill, readme, flags=re.S)


if __name__ == "__main__":
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]:
        path.write_text(update(path.read_text(), ROOT / "benchmarks" / "results"))
        print(f"updated {path}")
