"""Sphinx configuration: ``python -m sphinx -W --keep-going -b html docs docs/_build``.

The API reference is generated from the docstrings (numpy style, read by napoleon); the tutorials
are rendered from the notebooks in ``tutorials/`` with the outputs they were committed with (never
executed here); the Markdown pages in this folder are read by MyST.
"""

from __future__ import annotations

import re
import shutil
import sys
from importlib.metadata import version as _version
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

project = "captum_dualxda"
author = "The captum_dualxda developers"
copyright = "2026, the captum_dualxda developers"
release = _version("captum_dualxda")
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "myst_nb",
]

# MyST (Markdown pages) and myst-nb (notebooks, rendered with their committed outputs).
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
nb_execution_mode = "off"
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 4
suppress_warnings = ["mystnb.unknown_mime_type"]

# Docstrings: numpy style.
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_ivar = True
napoleon_preprocess_types = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_default_options = {"members": True, "show-inheritance": True}
autosummary_generate = False
# quanda is an optional extra with conflicting pins; its adapter is documented without it.
autodoc_mock_imports = ["quanda"]


templates_path: list = []
exclude_patterns = ["_build", "jupyter_execute", "Thumbs.db", ".DS_Store", "_tutorials/.ipynb_checkpoints"]

html_theme = "furo"
html_title = f"captum_dualxda {release}"


def _copy_tutorials() -> None:
    """Copy the notebooks from ``tutorials/`` into ``docs/_tutorials/`` (git-ignored) to render them."""
    target = HERE / "_tutorials"
    target.mkdir(exist_ok=True)
    for notebook in sorted((ROOT / "tutorials").glob("*.ipynb")):
        destination = target / notebook.name
        if not destination.exists() or destination.read_bytes() != notebook.read_bytes():
            shutil.copyfile(notebook, destination)


_copy_tutorials()

# Links that point out of docs/ on GitHub (to the benchmarks' README, the changelog, a notebook) point
# to the pages that render the same files here, from any depth of docs/.
_LINK = re.compile(r"\]\(((?:\.\./)+)(benchmarks/README\.md|CHANGELOG\.md|tutorials/([\w-]+)\.ipynb)(#[^)\s]*)?\)")


def _rewrite_links(app, docname, source) -> None:
    depth = docname.count("/")

    def target(match: re.Match) -> str:
        if len(match.group(1)) != 3 * (depth + 1):  # not a link out of docs/
            return match.group(0)
        page = {"benchmarks/README.md": "results.md", "CHANGELOG.md": "changelog.md"}.get(match.group(2))
        page = page or f"_tutorials/{match.group(3)}.ipynb"
        return f"]({'../' * depth}{page}{match.group(4) or ''})"

    source[0] = _LINK.sub(target, source[0])


def _close_heading_gaps(text: str) -> str:
    """Lower headings that skip a level (``##`` then ``####``) to one below the enclosing heading.

    The benchmark scripts write their tables under ``####`` headings straight below a ``##`` one,
    which GitHub shows as intended but MyST reports as a jump; code blocks are left alone.
    """
    lines, level, fence = text.split("\n"), 0, None
    for i, line in enumerate(lines):
        stripped = line.lstrip()
        if stripped.startswith(("```", "~~~")):
            marker = stripped[:3]
            fence = None if fence == marker else (fence or marker)
            continue
        if fence is None and line.startswith("#"):
            hashes = len(line) - len(line.lstrip("#"))
            if line[hashes : hashes + 1] == " ":
                if hashes > level + 1:
                    hashes = level + 1
                    lines[i] = "#" * hashes + line.lstrip("#")
                level = hashes
    return "\n".join(lines)


def _included(app, relative_path, parent_docname, content) -> None:
    if Path(relative_path).name == "README.md" and Path(relative_path).parent.name == "benchmarks":
        content[0] = _close_heading_gaps(content[0])


def setup(app):
    app.connect("source-read", _rewrite_links)
    app.connect("include-read", _included)
