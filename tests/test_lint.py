"""The linter (ruff, .ci/ruff.toml) and the type checker (mypy, .ci/mypy.ini) pass over the code.

ruff checks nnlib/ and the scripts beside it (jobs/, bench/, examples/) in well under a second, so it is in
the fast tier; mypy over nnlib/ takes minutes without its cache (.tmp/mypy_cache), so it is slow. Each runs
as the site's Contributing page gives it, from the repository root, and a failure prints the tool's
findings.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# tests/ is not linted yet; of docs/, its Python only (ruff would reformat the pages' code blocks too)
LINTED = ["nnlib", "jobs", "bench", "examples", "docs/hooks.py"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=900, check=False
    )


def test_ruff_finds_nothing():
    proc = _run("ruff", "check", "--config", ".ci/ruff.toml", "--no-fix", *LINTED)
    assert proc.returncode == 0, f"ruff check --config .ci/ruff.toml {' '.join(LINTED)}:\n{proc.stdout}{proc.stderr}"
    assert "All checks passed" in proc.stdout  # it checked, and said so (not a usage error that exits 0)


FORMATTED = [*LINTED, "tests", "setup.py"]  # the formatter holds the whole tree


def test_ruff_format_changes_nothing():
    """`ruff format --check` exits 1 and names each file it would change; 0 means the tree is formatted."""
    proc = _run("ruff", "format", "--config", ".ci/ruff.toml", "--check", *FORMATTED)
    assert proc.returncode == 0, (
        f"ruff format --config .ci/ruff.toml {' '.join(FORMATTED)}:\n{proc.stdout}{proc.stderr}"
    )
    assert "already formatted" in proc.stdout


@pytest.mark.slow
def test_mypy_finds_nothing():
    proc = _run("mypy", "--config-file", ".ci/mypy.ini", "nnlib")
    assert proc.returncode == 0, f"mypy --config-file .ci/mypy.ini nnlib:\n{proc.stdout}{proc.stderr}"
    assert proc.stdout.startswith("Success: no issues found in ")


def test_ruff_reports_a_finding(tmp_path):
    """The configuration selects the rules it says: an unused import, an unsorted import block and a zip
    without strict= in a file of the checked kind are each reported (so a passing check above means clean)."""
    bad = tmp_path / "bad.py"
    bad.write_text("import sys\nimport os\n\n\ndef f(a, b):\n    return list(zip(a, b))\n")
    proc = _run(
        "ruff",
        "check",
        "--config",
        str(ROOT / ".ci" / "ruff.toml"),
        "--no-fix",
        "--no-cache",
        "--output-format",
        "concise",
        str(bad),
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    for code in ("F401", "I001", "B905"):
        assert code in proc.stdout, proc.stdout
