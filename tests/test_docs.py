"""The documentation site (docs/mkdocs.yml): every config key has a meaning, the site builds strictly, and a broken
link really fails the build.

The build is the one command the README gives (``mkdocs build --strict -f docs/mkdocs.yml``), run from the
repository root; the strict build must also print no warning at all.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from nnlib.config import Config

ROOT = Path(__file__).resolve().parent.parent
BUILD = ["mkdocs", "build", "--strict", "-f", "docs/mkdocs.yml"]


def _keys(model: type[BaseModel], section: str = ""):
    for name, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            yield from _keys(kind, name)
        else:
            yield (f"{section}.{name}" if section else name), field


def test_every_config_key_has_a_description():
    """The configuration reference is generated from these descriptions: a key without one would be a blank row."""
    keys = dict(_keys(Config))
    missing = sorted(k for k, field in keys.items() if not (field.description or "").strip())
    assert len(keys) > 80  # the walk reaches into every section
    assert not missing, f"config keys without Field(description=...): {missing}"


def _build(cwd: Path, site: Path) -> subprocess.CompletedProcess:
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or "mkdocs"
    return subprocess.run(
        [mkdocs, *BUILD[1:], "--site-dir", str(site)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"},
    )


@pytest.mark.slow
def test_the_site_builds_strictly_without_a_warning(tmp_path):
    done = _build(ROOT, tmp_path / "site")
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    warnings = [line for line in log.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert not warnings, "\n".join(warnings)
    config_page = (tmp_path / "site" / "reference" / "configuration.html").read_text()
    assert "data.shard_storage" in config_page and "train.stop_grace_seconds" in config_page  # generated rows
    api_page = (tmp_path / "site" / "reference" / "api.html").read_text()
    assert "NNClassifier" in api_page and "load_model" in api_page  # mkdocstrings resolved the references
    assert re.search(r":(class|meth|attr|func|data|exc|mod):", api_page) is None  # no Sphinx role left as text
    assert (tmp_path / "site" / "experiments" / "threads" / "report.html").is_file()  # a study's report
    assert (tmp_path / "site" / "search" / "search_index.json").is_file()


@pytest.mark.slow
def test_a_broken_link_fails_the_build(tmp_path):
    """The strictness is real: a copy of docs/ whose one page links to a page that does not exist fails."""
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "docs", copy / "docs")
    for name in ("nnlib", "bench"):
        (copy / name).symlink_to(ROOT / name)
    page = copy / "docs" / "pages" / "speed.md"
    page.write_text(page.read_text() + "\nSee [the missing page](no-such-page.md).\n")
    done = _build(copy, tmp_path / "site")
    assert done.returncode != 0
    assert "no-such-page.md" in done.stdout + done.stderr
