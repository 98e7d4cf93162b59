"""The API reference lists every public name, under the import path users write.

The pages in ``docs/api/`` are written by hand (grouped by task), so a name added to a public
module's ``__all__`` must be added there too; this test says which one is missing. It reads the
pages as text (Sphinx not needed); the docs build itself (``-W``) checks that each entry imports.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

import captum_dualxda

API = Path(__file__).resolve().parents[1] / "docs" / "api"
PUBLIC_MODULES = [
    "captum_dualxda.metrics",
    "captum_dualxda.solver",
    "captum_dualxda.choose_c",
    "captum_dualxda.visualization",
    "captum_dualxda.xda",
]
DIRECTIVE = re.compile(r"^\.\. auto(?:function|class|exception|data|method|attribute):: (\S+)", re.MULTILINE)


def documented() -> set:
    return {name for page in API.glob("*.rst") for name in DIRECTIVE.findall(page.read_text())}


def test_every_top_level_name_is_documented_at_the_top_level():
    missing = [name for name in captum_dualxda.__all__ if f"captum_dualxda.{name}" not in documented()]
    assert not missing, f"add to docs/api/*.rst: {missing}"


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_every_public_name_of_a_module_is_documented(module):
    names = documented()
    top_level = set(captum_dualxda.__all__)
    missing = [
        name
        for name in importlib.import_module(module).__all__
        if f"{module}.{name}" not in names and not (name in top_level and f"captum_dualxda.{name}" in names)
    ]
    assert not missing, f"add to docs/api/*.rst: {[f'{module}.{name}' for name in missing]}"


def test_the_quanda_adapter_is_documented():  # its module imports quanda, an optional extra
    assert "captum_dualxda.quanda.DualDAExplainer" in documented()


def test_every_documented_path_is_public():
    """Entries name public paths only: no module whose name starts with an underscore."""
    private = [name for name in documented() if any(part.startswith("_") for part in name.split("."))]
    assert not private, private
