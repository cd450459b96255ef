"""The product speaks of itself: no tracked file names a numbered round of work or a ticket, or says what a
default was before or since some date (history lives in git and in the notes, not in code, help, tests, docs,
benchmark scripts or file names)."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HISTORY = re.compile(r"\b(session|issue|round|wave|ticket)[ _-]?#?\d+\b"
                     r"|\bdefault (before|since|until)\b"
                     r"|\b(before|since|until) 20\d\d-\d\d-\d\d", re.IGNORECASE)


def _tracked() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return out.stdout.splitlines()


def test_no_tracked_file_speaks_of_development_history():
    hits = []
    for name in _tracked():
        if HISTORY.search(name):
            hits.append(f"{name}: its name")
        path = ROOT / name
        if path.suffix in {".db", ".png", ".whl", ".gguf"} or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        hits += [f"{name}:{i}: {line.strip()[:120]}" for i, line in enumerate(text.splitlines(), 1)
                 if HISTORY.search(line)]
    assert not hits, "history in the product:\n" + "\n".join(hits[:20])


def test_the_pattern_finds_what_it_is_for():
    n = "17"  # kept apart, so that this file does not hold the very phrases it looks for
    for line in (f"the kernel of session {n}", f"see issue {n}'s table", f"round {n} ran e2ba01e",
                 "0.05, the default " + "before " + "2026-11-26", f"acceptance-issue{n}.md"):
        assert HISTORY.search(line), line
    for line in ("round(compression_ratio * 100) - 1", "a Session of SQLAlchemy", "rounds of 512 entries"):
        assert not HISTORY.search(line), line


def test_readme_headline_figures_are_the_latest_results():
    """The README's figures table is what benchmarks/figures.py makes from the latest committed results: a
    figure cannot stay behind when a benchmark's output changes, nor be typed in by hand."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("evolkv_figures", ROOT / "benchmarks" / "figures.py")
    figures = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = figures  # its dataclass looks its module up
    spec.loader.exec_module(figures)
    made = figures.table()
    assert figures.readme_block((ROOT / "README.md").read_text()) == made, \
        "run python benchmarks/figures.py --write"
    assert made.count("\n| ") == len(figures.FIGURES) + 1  # the header and one row a figure
