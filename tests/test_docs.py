"""The documentation: user-facing text cites the paper and public sources only, and its links resolve."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = {".md", ".py", ".txt", ".toml", ".html", ".css"}


def _user_facing_files() -> list[Path]:
    """README.md, docs/ and the package's text files (code, docstrings, help and output strings)."""
    files = [ROOT / "README.md"]
    for folder in ("docs", "alexnet"):
        files += [p for p in sorted((ROOT / folder).rglob("*")) if p.is_file() and p.suffix in TEXT_SUFFIXES]
    return files


# Private working notes the repository does not contain, and which users cannot read: the text must
# cite the paper (docs/paper.md) or a public source by name instead. "seed" as a random seed is fine.
FORBIDDEN = [
    (re.compile(r"PAPER\.md|\bPAPER\b(?!_)"), "a file the repository does not contain; cite docs/paper.md"),
    (re.compile(r"\bissues? #?\d+", re.IGNORECASE), "a private tracker item; say what it asks for"),
    (re.compile(r"\bthe issue'?s?\b", re.IGNORECASE), "a private tracker item; say what it asks for"),
    (
        re.compile(
            r"\bthe seed's\b|\bthe seeds'(?!\])|\b(lecture|course|original) seeds?\b|\bseed (file|notes?)\b",
            re.IGNORECASE,
        ),
        "private notes; name the public source (the paper, course notes)",
    ),
    (
        re.compile(r"\b(a|one|two|the|some) seeds? (says?|quotes?|places?|gives?|lists?|compares?)\b", re.IGNORECASE),
        "private notes; name the public source (the paper, course notes)",
    ),
]


def test_forbidden_patterns_are_caught():
    """The patterns themselves: they catch the phrasings they are for and spare random seeds."""
    caught = [
        "see PAPER.md §3",
        "PAPER facts in the docstring",
        "goal (issue 8)",
        "as the issue's goals",
        "the seeds' comparison nets",
        "the seed's line items",
        "the lecture seed",
        "one seed places LRN before the ReLU",
    ]
    spared = [
        "--set train.seed=1",
        "same seed, same batches",
        "mean ± std over seeds",
        "per-(seed, epoch, index) generators",
        "a fixed seed",
        "seeds 0..K-1",
        "seed-0 run",
        "rapeseed",
        "one seed fitted into the time",
        "paired by seed",
        "{s['seeds']} seed(s)",
        "PAPER_RESULTS",
        "trains just the third seed's nets",
        "each seed's curve",
    ]
    for text in caught:
        assert any(rx.search(text) for rx, _ in FORBIDDEN), text
    for text in spared:
        assert not any(rx.search(text) for rx, _ in FORBIDDEN), text


def test_user_facing_text_cites_public_sources_only():
    problems = []
    for path in _user_facing_files():
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for rx, why in FORBIDDEN:
                match = rx.search(line)
                if match:
                    problems.append(f"{path.relative_to(ROOT)}:{number}: {match.group(0)!r}: {why}")
    assert not problems, "\n".join(problems)


def _local_links(markdown: str) -> list[str]:
    """Targets of [text](target) links that are files in the repository (no URL, no bare #anchor)."""
    targets = re.findall(r"\]\(([^)\s]+)\)", markdown)
    return [t.split("#", 1)[0] for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


@pytest.mark.parametrize("page", ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))])
def test_links_resolve(page):
    """Every relative link of README.md and docs/*.md names a file or folder that exists."""
    source = ROOT / page
    missing = [t for t in _local_links(source.read_text(encoding="utf-8")) if not (source.parent / t).exists()]
    assert not missing, f"{page} links to missing files: {missing}"


def test_readme_links_every_docs_page_it_names_and_they_exist():
    """docs/*.md named in README.md (linked or in backticks) exist, and README links docs/paper.md."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    named = set(re.findall(r"docs/[\w.-]+\.md", readme))
    assert "docs/paper.md" in named
    assert all((ROOT / n).is_file() for n in named), sorted(n for n in named if not (ROOT / n).is_file())


def test_paths_named_in_the_docs_exist():
    """Every alexnet/... or tests/... path named in README.md or docs/*.md is in the tree."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    named = {
        m
        for page in pages
        for m in re.findall(r"(?<![\w/.-])((?:alexnet|tests)/[\w/]*\w(?:\.py)?)", page.read_text(encoding="utf-8"))
    }
    missing = sorted(n for n in named if not (ROOT / n).exists())
    assert not missing, f"named in the docs but not in the tree: {missing}"


def test_architecture_names_every_module():
    """docs/architecture.md's table names every module of the package (cli/ as a whole)."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    package = ROOT / "alexnet"
    modules = [p for p in package.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    for folder in ("data", "parallel", "bench", "report", "experiments"):
        modules += [p for p in (package / folder).glob("*.py") if p.name != "__init__.py"]
    missing = sorted(
        str(p.relative_to(package)) for p in modules if f"{p.name}`" not in text and f"{p.name}," not in text
    )
    assert not missing, f"docs/architecture.md does not name: {missing}"
