#!/usr/bin/env bash
# Release checks, one per subcommand; `.ci/run` calls each after the test suites. Each prints its
# wall time. Run one by hand from the repository root, e.g. `bash ci/release.sh wheel`.
#
#   docs             build the documentation with warnings as errors (docs extra into .venv)
#   wheel            python -m build (sdist + wheel), twine check, install the wheel into a fresh
#                    virtual environment outside the repository and run the demo and the core
#                    tests there against the installed wheel
#   python VERSION   the core tests on another Python from pyenv (e.g. 3.10.13, 3.13.0)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV_PYTHON=${VENV_PYTHON:-$ROOT/.venv/bin/python}   # the main environment (`.ci/run` makes it)
CORE_TESTS=(tests/test_dualda.py tests/test_solver.py tests/test_xda.py)

step_docs() {
    local start=$SECONDS out
    "$VENV_PYTHON" -m pip install --quiet -e ".[docs]"
    out=$(mktemp -d)
    "$VENV_PYTHON" -m sphinx -W --keep-going -q -b html docs "$out/html"
    test -f "$out/html/index.html" && test -f "$out/html/api/attribute.html"
    rm -rf "$out"
    echo "docs build (-W): $((SECONDS - start)) s"
}

step_wheel() {
    local start=$SECONDS work
    work=$(mktemp -d)
    rm -rf dist
    "$VENV_PYTHON" -m pip install --quiet build twine
    "$VENV_PYTHON" -m build --outdir dist . > "$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
    ls -l dist
    "$VENV_PYTHON" -m twine check --strict dist/*
    # Both carry the type marker and the licence (grep reads all input: no SIGPIPE under pipefail).
    tar -tzf dist/captum_dualxda-*.tar.gz | grep -E "captum_dualxda/py.typed|/LICENSE$" | wc -l | grep -qx 2
    "$VENV_PYTHON" -m zipfile -l dist/captum_dualxda-*.whl | grep -E "captum_dualxda/py.typed|/LICENSE " | wc -l | grep -qx 2
    echo "build + twine check: $((SECONDS - start)) s"

    python3 -m venv "$work/venv"
    "$work/venv/bin/python" -m pip install --quiet --upgrade pip
    "$work/venv/bin/python" -m pip install --quiet "$(ls "$ROOT"/dist/captum_dualxda-*.whl)" pytest
    # From outside the repository, so the installed wheel is what is imported.
    cd "$work"
    "$work/venv/bin/python" - <<'EOF'
import pathlib
import sysconfig

import captum_dualxda

site = pathlib.Path(sysconfig.get_paths()["purelib"]).resolve()
where = pathlib.Path(captum_dualxda.__file__).resolve()
assert where.is_relative_to(site), f"{where} is not the installed wheel (site-packages: {site})"
print("captum_dualxda", captum_dualxda.__version__, "from", where.parent)
EOF
    "$work/venv/bin/python" -m captum_dualxda demo --out "$work/demo" --no-progress --n-train 300 --epochs 2
    test -f "$work/demo/explanation_0.png" && test -f "$work/demo/self_influence.csv"
    "$work/venv/bin/dualxda" --help > /dev/null   # the console script
    # The core tests, copied out of the repository with their helpers.
    mkdir "$work/tests"
    cp "$ROOT"/tests/conftest.py "${CORE_TESTS[@]/#/$ROOT/}" "$work/tests/"
    "$work/venv/bin/python" -m pytest -q -p no:cacheprovider --rootdir "$work/tests" "$work/tests"
    cd "$ROOT"
    rm -rf "$work"
    echo "wheel: build, check, fresh install, demo, core tests: $((SECONDS - start)) s"
}

step_python() {  # step_python VERSION: the core tests on that pyenv Python
    local version=$1 start=$SECONDS dir interpreter
    interpreter=$(PYENV_VERSION=$version pyenv which python 2> /dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}/versions/$version/bin/python")
    dir=$(mktemp -d)/venv
    "$interpreter" -m venv "$dir"
    "$dir/bin/python" -m pip install --quiet --upgrade pip
    # Plain PyPI (pip's cache is shared with the other environments): the CUDA build of torch.
    "$dir/bin/python" -m pip install --quiet -e . pytest torchvision
    "$dir/bin/python" -c "import sys, torch, captum, zennit; print('Python', sys.version.split()[0], 'torch', torch.__version__, 'captum', captum.__version__)"
    echo "Python $version environment: $((SECONDS - start)) s"
    "$dir/bin/python" -m pytest -q -p no:cacheprovider "${CORE_TESTS[@]}"
    rm -rf "$(dirname "$dir")"
    echo "Python $version: environment + core tests: $((SECONDS - start)) s"
}

case ${1:-} in
    docs) step_docs ;;
    wheel) step_wheel ;;
    python) step_python "$2" ;;
    *) echo "usage: $0 docs | wheel | python VERSION" >&2; exit 2 ;;
esac
