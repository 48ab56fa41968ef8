"""mkdocs hook: publish benchmarks/results/ (plots, csv, json, md) with the site.

The docs pages link the benchmark outputs where they live in the repository (`../benchmarks/results/x.png`
from docs/ranking.md, `../../benchmarks/results/x.png` from docs/benchmarks/*.md), so the same links work on
GitHub. Those paths are outside docs_dir; this hook registers each file under that outside path (what mkdocs
resolves the link to, so `--strict` validates it) and copies it to `benchmarks-results/` in the site.
Listed in mkdocs.yml under `hooks:` and excluded from the pages by `exclude_docs`."""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files, InclusionLevel

RESULTS = "benchmarks/results"


class _RepoFile(File):
    """A repository file copied as is (a results .md is a file to read, not a page of the site)."""

    def is_documentation_page(self) -> bool:
        return False


def on_files(files: Files, config) -> Files:
    docs = Path(config.docs_dir)
    results = docs.parent / RESULTS
    for path in sorted(p for p in results.rglob("*") if p.is_file() and not p.name.startswith(".")):
        rel = path.relative_to(results).as_posix()
        files.append(
            _RepoFile(
                f"../{RESULTS}/{rel}",
                src_dir=str(docs),
                dest_dir=config.site_dir,
                use_directory_urls=config.use_directory_urls,
                dest_uri=f"benchmarks-results/{rel}",
                inclusion=InclusionLevel.INCLUDED,
            )
        )
    return files
