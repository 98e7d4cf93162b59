"""``import captum_dualxda`` never imports quanda; ``captum_dualxda.quanda`` says how to install it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest


def test_package_import_does_not_import_quanda():
    code = "import sys, captum_dualxda, captum_dualxda.metrics; print('quanda' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(importlib.util.find_spec("quanda") is not None, reason="quanda is installed here")
def test_quanda_module_without_quanda_names_the_recipe():
    code = "import captum_dualxda.quanda"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode != 0
    assert "ImportError" in out.stderr and "pip install quanda" in out.stderr
    assert '"captum==0.9.0" "numpy>=2"' in out.stderr
