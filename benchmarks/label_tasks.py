"""MNIST tasks for ``label_errors.py``: flipped labels, trained CNNs and cleanlab's cross-fitted probabilities.

Everything trained is cached under ``benchmarks/.cache/mnist/label_errors/`` (new keys only).

A *task* is one noisy training set and one training recipe (the paper's CNN, ``mnist_cnn.MNISTCNN``,
trained with ``mnist_cnn._train``: Adam, learning rate 2e-3, cosine decay) on a seeded subset of
the 60,000 training images (the first ``n_train`` of a permutation drawn from the seed), tested
on the 10,000 test images. Two regimes (:data:`REGIMES`), sized for 2 shared CPU cores:

* ``not memorised``: 20,000 images, 2 epochs, batches of 256 (the recipe of ``mnist_cnn.py``):
  the network predicts the true class of most flipped samples;
* ``memorised``: 3,000 images, 20 epochs, batches of 64: it fits most of its flipped labels.

The share of flipped labels the network fits is reported with every table.

Flips (:func:`flip_labels`): exactly ``round(rate * n_train)`` training samples, drawn without
replacement from the seed, get another label: ``uniform``, a uniformly drawn other class;
``pairs`` (class-conditional), the partner of their class in :data:`PAIRS`.

cleanlab's out-of-sample probabilities (:func:`cross_fitted`): ``StratifiedKFold(5, shuffle=True,
random_state=seed)`` on the noisy labels; the network is retrained with the same recipe on four
folds (seed ``seed + 1000 * (fold + 1)``) and predicts the fifth.

Prepare (train and cross-fit) tasks ahead of ``label_errors.py``::

    python benchmarks/label_tasks.py uniform 0.1 not_memorised 0
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from mnist_cnn import MNISTCNN, _train  # noqa: E402
from realdata import load_mnist  # noqa: E402

CACHE_ROOT = os.path.join(HERE, ".cache", "mnist", "label_errors")
PAIRS = ((1, 7), (4, 9), (3, 5), (2, 8), (0, 6))
REGIMES: Dict[str, Dict[str, int]] = {
    "not memorised": dict(n_train=20000, epochs=2, batch_size=256),
    "memorised": dict(n_train=3000, epochs=20, batch_size=64),
}
LR = 2e-3
FOLDS = 5
RECIPE_VERSION = 1


def flip_labels(labels: np.ndarray, rate: float, kind: str, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(noisy labels, flipped mask)``: ``round(rate * n)`` samples relabelled (module docstring)."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(labels), int(round(rate * len(labels))), replace=False)
    noisy = labels.copy()
    if kind == "uniform":
        noisy[idx] = (labels[idx] + rng.integers(1, 10, idx.size)) % 10
    elif kind == "pairs":
        partner = np.arange(10)
        for a, b in PAIRS:
            partner[a], partner[b] = b, a
        noisy[idx] = partner[labels[idx]]
    else:
        raise ValueError(f"unknown flip kind {kind!r}")
    flipped = noisy != labels
    assert flipped.sum() == idx.size
    return noisy, flipped


@dataclass
class Task:
    """One noisy MNIST training set and its recipe."""

    kind: str
    rate: float
    regime: str
    seed: int
    x_train: torch.Tensor  # (n, 1, 28, 28) float32
    y_noisy: torch.Tensor  # (n,) int64
    y_true: torch.Tensor
    flipped: np.ndarray  # (n,) bool
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def recipe(self) -> Dict[str, int]:
        return REGIMES[self.regime]

    @property
    def name(self) -> str:
        flips = "class-conditional" if self.kind == "pairs" else "uniform"
        return f"MNIST {len(self.y_noisy) // 1000}k, {self.rate:.0%} {flips}, {self.regime}"

    @property
    def key(self) -> str:
        return f"{self.kind}-{self.rate:g}-{self.regime.replace(' ', '_')}-s{self.seed}"


def make_task(kind: str, rate: float, regime: str, seed: int) -> Task:
    x_all, y_all = load_mnist("train")
    x_test, y_test = load_mnist("test")
    n = REGIMES[regime]["n_train"]
    idx = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(seed))[:n]
    y_true = y_all[idx]
    noisy, flipped = flip_labels(y_true.numpy(), rate, kind, seed)
    return Task(
        kind, rate, regime, seed, x_all[idx].contiguous(), torch.from_numpy(noisy), y_true, flipped, x_test, y_test
    )


def _digest(task: Task) -> str:
    """The recipe's part of a cache key; bump :data:`RECIPE_VERSION` when the training or the flips change."""
    text = json.dumps(dict(recipe=task.recipe, lr=LR, torch=torch.__version__, v=RECIPE_VERSION), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _path(task: Task, what: str) -> str:
    return os.path.join(CACHE_ROOT, f"{task.key}-{_digest(task)}-{what}.pt")


def _save(obj: Dict[str, Any], path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(obj, path + f".tmp{os.getpid()}")
    os.replace(path + f".tmp{os.getpid()}", path)


def train(task: Task, x: torch.Tensor, y: torch.Tensor, seed: int) -> nn.Module:
    """The CNN trained with the task's recipe on ``(x, y)``, in eval mode."""
    torch.manual_seed(seed)
    net = MNISTCNN(10)
    os.makedirs(CACHE_ROOT, exist_ok=True)
    scratch = os.path.join(CACHE_ROOT, f".scratch-{os.getpid()}.pt")
    r = task.recipe
    _train(net, x, y, r["epochs"], seed, r["batch_size"], LR, [scratch], False)
    os.remove(scratch)
    return net.eval()


def logits(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([net(x[b : b + 2000]) for b in range(0, len(x), 2000)])


def trained_network(
    task: Task, keep: Optional[np.ndarray] = None, tag: str = "net", labels: Optional[torch.Tensor] = None
) -> Tuple[nn.Module, float]:
    """The task's CNN trained (cached under ``tag``) on the samples ``keep`` (default all) with
    ``labels`` (default the noisy ones), and the seconds its training took."""
    path = _path(task, tag)
    net = MNISTCNN(10)
    if os.path.exists(path):
        data = torch.load(path)
        net.load_state_dict(data["state"])
        return net.eval(), data["seconds"]
    y = task.y_noisy if labels is None else labels
    x = task.x_train
    if keep is not None:
        k = torch.from_numpy(np.flatnonzero(keep))
        x, y = x[k].contiguous(), y[k]
    print(f"  training {task.name} seed {task.seed} [{tag}] on {len(y)} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    net = train(task, x, y, task.seed)
    seconds = time.perf_counter() - start
    _save({"state": net.state_dict(), "seconds": seconds}, path)
    return net, seconds


def cross_fitted(task: Task, folds: int = FOLDS) -> Dict[str, Any]:
    """cleanlab's out-of-sample probabilities: ``probs`` ``(n, 10)`` float64, ``seconds``."""
    path = _path(task, f"cv{folds}")
    if os.path.exists(path):
        return torch.load(path, weights_only=False)  # this benchmark's own file (NumPy arrays inside)
    labels = task.y_noisy.numpy()
    probs = np.zeros((len(labels), 10))
    seconds = 0.0
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=task.seed)
    for fold, (tr, held) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        print(f"  cleanlab fold {fold + 1}/{folds} of {task.name} seed {task.seed}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        t = torch.from_numpy(tr)
        net = train(task, task.x_train[t].contiguous(), task.y_noisy[t], task.seed + 1000 * (fold + 1))
        probs[held] = torch.softmax(logits(net, task.x_train[torch.from_numpy(held)]).double(), 1).numpy()
        seconds += time.perf_counter() - start
    result = {"probs": probs, "seconds": seconds}
    _save(result, path)
    return result


def network_stats(task: Task, net: nn.Module) -> Dict[str, float]:
    """Test accuracy, accuracy on the noisy training labels and the share of flipped labels fitted."""
    fitted = (logits(net, task.x_train).argmax(1) == task.y_noisy).numpy()
    test = float((logits(net, task.x_test).argmax(1) == task.y_test).float().mean())
    return {
        "test_accuracy": test,
        "noisy_train_accuracy": float(fitted.mean()),
        "flipped_fitted": float(fitted[task.flipped].mean()),
    }


if __name__ == "__main__":  # python label_tasks.py uniform 0.1 not_memorised 0 [--no-cv]
    kind, rate, regime = sys.argv[1], float(sys.argv[2]), sys.argv[3].replace("_", " ")
    torch.set_num_threads(1)
    for seed in [int(s) for s in sys.argv[4].split(",")]:
        task = make_task(kind, rate, regime, seed)
        net, seconds = trained_network(task)
        print(task.name, seed, f"trained in {seconds:.0f} s", network_stats(task, net), flush=True)
        if "--no-cv" not in sys.argv:
            cv = cross_fitted(task)
            print(task.name, seed, f"cross-fitted in {cv['seconds']:.0f} s", flush=True)
