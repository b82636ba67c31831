"""MkDocs hooks for the site (docs/mkdocs.yml): files kept outside the pages folder, and the configuration reference.

- The studies' outputs (``docs/experiments/``) and the benchmarks' manual (``bench/README.md`` and its
  ``bench/results/`` figures) stay where the tools that write them put them; they join the site as
  ``experiments/...`` and ``bench/...``.
- A page links to them by their path in the repository (so the link works when the markdown is read on its own,
  e.g. on GitHub); the link is rewritten to the file's place in the site before MkDocs checks it, so a broken one
  still fails the strict build.
- ``reference/configuration.md`` gets the table of every config key, generated from the pydantic models in
  ``nnlib/config.py`` (type, default, allowed values, the field's ``description``), so it cannot drift from them.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from types import UnionType
from typing import Literal, Union, get_args, get_origin

from mkdocs.structure.files import File, Files

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
# (folder in the repository, where it sits in the site, which files): kept in place, shown in the site
OUTSIDE = [
    (DOCS / "experiments", "experiments", ("*.md", "*.png", "*.csv", "*.json")),
    (ROOT / "bench", "bench", ("README.md",)),
    (ROOT / "bench" / "results", "bench/results", ("*.png", "*.json")),
]
CONFIG_PAGE = "reference/configuration.md"
_LINK = re.compile(r"(\]\()([^)\s#]+)(#[^)\s]*)?(\))")


def _outside_files() -> dict[Path, str]:
    """Each kept-in-place file's real path -> its path in the site (relative to the pages folder)."""
    found = {}
    for folder, site, patterns in OUTSIDE:
        for pattern in patterns:
            for path in folder.rglob(pattern) if pattern.startswith("*") else [folder / pattern]:
                if path.is_file() and (folder != ROOT / "bench" or path.parent == folder):
                    found[path.resolve()] = f"{site}/{path.relative_to(folder).as_posix()}"
    return found


def on_files(files: Files, config) -> Files:
    for path, uri in _outside_files().items():
        src_dir = str(path)[: -len(uri)].rstrip("/")  # the folder that makes src_dir/uri this real path
        files.append(File(uri, src_dir, config["site_dir"], config["use_directory_urls"]))
    return files


def _real_path(page_file) -> Path:
    return Path(page_file.abs_src_path).resolve()


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Point a page's links to kept-in-place files at their place in the site; fill in the config reference."""
    outside = _outside_files()
    real = _real_path(page.file)

    def relink(m: re.Match) -> str:
        href = m.group(2)
        if "://" in href or href.startswith("mailto:"):
            return m.group(0)
        target = (real.parent / href).resolve()
        if target not in outside or target == real:
            return m.group(0)
        site_rel = os.path.relpath(outside[target], Path(page.file.src_uri).parent.as_posix() or ".")
        return f"{m.group(1)}{Path(site_rel).as_posix()}{m.group(3) or ''}{m.group(4)}"

    out, fenced = [], False
    for line in markdown.split("\n"):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        out.append(line if fenced else _LINK.sub(relink, line))
    markdown = "\n".join(out)
    if page.file.src_uri == CONFIG_PAGE:
        markdown = markdown.rstrip("\n") + "\n\n" + config_reference()
    return markdown


def config_keys():
    """Every config key, in the models' order: (section, name, type, default, allowed, description) as text."""
    sys.path.insert(0, str(ROOT))
    from pydantic import BaseModel

    from nnlib.config import Config

    def walk(model, section):
        for name, field in model.model_fields.items():
            kind = field.annotation
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                yield from walk(kind, name)
            else:
                yield section, name, field

    for section, name, field in walk(Config, ""):
        yield section, name, _type(field.annotation), _default(field), _allowed(field), field.description or ""


def _type(kind) -> str:
    if get_origin(kind) is Literal:
        return "choice"
    args = [a for a in get_args(kind) if a is not type(None)]
    if get_origin(kind) in (Union, UnionType) and len(args) == 1:
        return _type(args[0]) + " or null"
    if get_origin(kind) in (Union, UnionType):
        return " or ".join(_type(a) for a in args)
    if get_origin(kind) is list:
        return f"list of {_type(args[0])}" if args else "list"
    if get_origin(kind) is dict:
        return "mapping"
    return getattr(kind, "__name__", str(kind)).replace("NoneType", "null")


def _default(field) -> str:
    value = field.default_factory() if field.default_factory is not None else field.default
    return f"`{_yaml_text(value)}`"


def _yaml_text(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml_text(v)}" for k, v in value.items()) + "}"
    return str(value)


def _allowed(field) -> str:
    kind = field.annotation
    literal = [a for a in (kind, *get_args(kind)) if get_origin(a) is Literal]
    if literal:
        return ", ".join(f"`{v}`" for v in get_args(literal[0]))
    bounds = []
    for meta in field.metadata:
        for attr, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            if getattr(meta, attr, None) is not None:
                bounds.append(f"{sign} {getattr(meta, attr)}")
    return ", ".join(bounds)


def config_reference() -> str:
    """Markdown: one table per config section, one row per key (section.key): type, default, allowed, meaning."""
    out, current = [], None
    for section, name, kind, default, allowed, description in config_keys():
        if section != current or not out:
            current = section
            out += ["", f"## `{section}`" if section else "## Top-level keys", ""]
            out += ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
        key = f"{section}.{name}" if section else name
        cells = [f"`{key}`", kind, default, allowed, description]
        out.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(out).lstrip("\n") + "\n"


# A docstring's Sphinx cross-reference role (:class:`Model`, :meth:`load`), which mkdocstrings' sphinx
# style leaves as text before the name's code span: the role goes, the name stays in code.
_ROLE = re.compile(r":(?:class|meth|attr|data|func|mod|exc|obj|py:\w+):(<code>)")


def on_page_content(html: str, page, config, files) -> str:
    """Drop the Sphinx roles left in the API reference's rendered docstrings."""
    return _ROLE.sub(r"\1", html)
