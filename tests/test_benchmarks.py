"""The GPU benchmark runs at toy sizes on a CPU, so it is ready whenever a GPU is."""

import importlib.util
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", os.path.join(ROOT, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory):
    gpu = _load("gpu")
    out = tmp_path_factory.mktemp("gpu") / "gpu.md"
    rows = gpu.main(
        [
            "--tiny",
            "--device",
            "cpu",
            "--Cs",
            "1e-3",
            "--fit-budget",
            "0.5",
            "--cpu-budget",
            "120",
            "--cpu-parallel",
            "2",
            "--out",
            str(out),
        ]
    )
    return gpu, rows, out.read_text()


def test_gpu_benchmark_every_section_reports(gpu_run):
    gpu, rows, text = gpu_run
    sections = {row.section for row in rows}
    assert sections == {"solver", "imagenet", "e2e"}
    assert not [row for row in rows if row.note.startswith("error")], [row.note for row in rows]
    # the markdown file holds every row, one table line each
    assert text.count("\n| ") == len(rows) + 1
    methods = {row.method for row in rows if row.section == "e2e"}
    assert {"plain forward pass (floor)", "DualDA(...) fit", "solve only (auto)"} <= methods


def test_gpu_benchmark_cpu_solvers_agree_with_liblinear(gpu_run):
    """Our sequential solver and LIBLINEAR reach the same primal objective on the same problem."""
    _, rows, _ = gpu_run
    primal = {}
    for row in rows:
        if row.section == "solver" and row.method.endswith("(CPU, 1 core)") and row.seconds is not None:
            primal[row.method.split()[0]] = float(re.search(r"primal ([0-9.e+-]+)", row.note).group(1))
    assert set(primal) == {"liblinear", "sequential"}
    assert primal["sequential"] == pytest.approx(primal["liblinear"], rel=1e-3)


def test_gpu_benchmark_end_to_end_fit_converges(gpu_run):
    _, rows, _ = gpu_run
    fit = [row for row in rows if row.method == "DualDA(...) fit"]
    assert len(fit) == 2 and all(row.converged for row in fit)
    dense = [row for row in rows if "dense scores" in row.method]
    assert all(re.search(r"\(8, (64|16)\) matrix", row.note) for row in dense)


def test_gpu_benchmark_refuses_unknown_section():
    gpu = _load("gpu")
    with pytest.raises(SystemExit):
        gpu.main(["--tiny", "--device", "cpu", "--sections", "solver,nope"])


def test_the_lds_variants_whitening_is_the_packages():
    """``benchmarks/lds_variants.py`` measures what ``DualDA(whiten=...)`` does: the same transform."""
    import numpy as np
    import torch

    from captum_dualxda._core.whitening import whitening_matrix

    variants = _load("lds_variants")
    rng = np.random.default_rng(0)
    train = rng.standard_normal((300, 6)) * np.array([0.1, 1, 1, 3, 10, 30])
    test = rng.standard_normal((5, 6))
    for ratio in (0.01, 1.0):
        t = whitening_matrix(torch.from_numpy(train), ratio).numpy()
        white_train, white_test = variants.whiten(train, test, ratio)
        np.testing.assert_allclose(white_train, train @ t, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(white_test, test @ t, rtol=1e-8, atol=1e-10)
        # the scores of the variant are TRAK's whitened kernel times the duals: a_i^y phi_i T T phi
        kernel = test @ t @ t @ train.T
        np.testing.assert_allclose(white_test @ white_train.T, kernel, rtol=1e-8, atol=1e-10)


def test_the_lds_variants_concatenation_is_the_packages_and_low_rank_keeps_the_kernel():
    """``concat`` scales blocks as ``DualDA(feature_layers=...)`` does (``block_scales``); ``whiten_lowrank``
    with threshold 0 has the full whitening's kernel, and dropping directions changes it little."""
    import numpy as np
    import torch

    from captum_dualxda._core.whitening import block_scales

    variants = _load("lds_variants")
    rng = np.random.default_rng(1)
    blocks = [rng.standard_normal((200, w)) * s for w, s in ((3, 1.0), (4, 10.0), (5, np.logspace(-3, 0, 5)))]
    tests = [rng.standard_normal((6, w)) for w in (3, 4, 5)]
    train, test = variants.concat(blocks, tests)
    scale = block_scales(torch.from_numpy(np.concatenate(blocks, 1)), [3, 4, 5]).numpy()
    np.testing.assert_allclose(train, np.concatenate(blocks, 1) * scale, rtol=1e-10)
    np.testing.assert_allclose(test, np.concatenate(tests, 1) * scale, rtol=1e-10)
    full_train, full_test = variants.whiten(train, test, 0.1)
    low_train, low_test = variants.whiten_lowrank(train, test, 0.1, 0.0)
    np.testing.assert_allclose(low_test @ low_train.T, full_test @ full_train.T, rtol=1e-8, atol=1e-10)
    cut_train, cut_test = variants.whiten_lowrank(train, test, 0.1, 0.5)
    assert cut_train.shape[1] < train.shape[1]
