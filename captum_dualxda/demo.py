"""The main job: DualXDA end to end on scikit-learn's digits, with nothing to download.

``python -m captum_dualxda demo --out DIR`` (see :mod:`captum_dualxda.__main__`) calls
:func:`run_demo`, which

1. loads scikit-learn's 8x8 digits (bundled with scikit-learn), scales them to ``[0, 1]``, splits
   them into training and test data and flips a fraction of the TRAINING labels (deterministic
   for the seed; every flipped label really changes);
2. trains a small CNN (conv + batch norm) on the noisy labels;
3. fits :class:`~captum_dualxda.dualda.DualDA` on its penultimate features (the input of the
   final ``nn.Linear``);
4. explains the predictions on the whole test set (top proponents and opponents) and, for a few
   test samples, computes XDA heatmaps and writes one figure each;
5. ranks the training samples by DualDA self-influence (the paper's choice) and with
   :func:`~captum_dualxda.rank_label_issues` (the hinge loss of a small-``C`` SVM surrogate, with
   a yes/no flag), and measures how well each finds the flipped labels (ROC AUC, share found in
   the top 10 %, the flag's precision and recall, a detection curve figure).

The pieces (:func:`load_digits_data`, :class:`DigitsCNN`, :func:`train_cnn`) are public so the
tutorials and tests can reuse them; the mislabel metrics are :mod:`captum_dualxda.metrics`'
:func:`~captum_dualxda.metrics.mislabel_auc` and
:func:`~captum_dualxda.metrics.mislabel_detection_curve`. With ``flip_rate=0`` nothing is
flipped: the mislabel rows of the summary read "n/a" and no detection curve is drawn.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn
from torch.utils.data import TensorDataset
from tqdm import tqdm

from ._utils.validation import SEED_RANGE, check_flag, check_integer, check_positive, check_real, check_seed
from ._core.cache import check_writable_dir
from .dualda import DEFAULT_C, DualDA
from .label_issues import LABEL_ISSUES_C, rank_label_issues
from .metrics import mislabel_auc, mislabel_detection_curve, surrogate_fidelity, training_loss
from .solver import fit_crammer_singer
from .visualization import explain_figure, image_for_display
from .xda import XDA, xda_pairs

__all__ = [
    "DigitsData",
    "DigitsCNN",
    "DemoResult",
    "load_digits_data",
    "train_cnn",
    "run_demo",
    "check_demo_arguments",
    "check_out_dir",
    "DEFAULT_C",
    "DEFAULT_EPOCHS",
]

#: Default number of training epochs of the demo CNN.
DEFAULT_EPOCHS = 12



# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
@dataclass
class DigitsData:
    """scikit-learn's digits, scaled to [0, 1] and split, with flipped training labels.

    Attributes
    ----------
    x_train : torch.Tensor
        ``(n_train, 1, 8, 8)`` float32 pixels scaled to ``[0, 1]`` (``x / 16``), standardised to
        ``(x / 16 - mean) / std`` if requested.
    y_train : torch.Tensor
        ``(n_train,)`` int64 training labels AS USED FOR TRAINING (flipped where ``flipped``).
    y_train_clean : torch.Tensor
        ``(n_train,)`` int64 original training labels.
    flipped : torch.Tensor
        ``(n_train,)`` bool, True where the label was flipped (``y_train != y_train_clean``).
    x_test : torch.Tensor
        ``(n_test, 1, 8, 8)`` float32, scaled like ``x_train``.
    y_test : torch.Tensor
        ``(n_test,)`` int64 true test labels (never flipped).
    mean : float
        Pixel mean subtracted (0 unless standardised; for display: ``x * std + mean``).
    std : float
        Pixel standard deviation divided by (1 unless standardised).
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    y_train_clean: torch.Tensor
    flipped: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: float
    std: float

    @property
    def train_dataset(self) -> TensorDataset:
        """``TensorDataset(x_train, y_train)``: the (noisy) training set the network saw."""
        return TensorDataset(self.x_train, self.y_train)

    @property
    def denormalize(self) -> Tuple[float, float]:
        """``(mean, std)`` for :func:`~captum_dualxda.visualization.explain_figure`."""
        return (self.mean, self.std)


def load_digits_data(
    flip_rate: float = 0.1,
    seed: int = 0,
    n_train: Optional[int] = None,
    test_fraction: float = 0.25,
    standardize: bool = False,
) -> DigitsData:
    """Load scikit-learn's digits (no download), scale them to [0, 1], split, flip training labels.

    Parameters
    ----------
    flip_rate : float
        Fraction of training labels replaced by a different, uniformly drawn class; in ``[0, 1)``.
        ``round(flip_rate * n_train)`` labels are flipped.
    seed : int
        Seeds the split and the flips.
    n_train : int, optional
        Keep only the first ``n_train`` training samples (default: all, 1348 of 1797).
    test_fraction : float
        Fraction of the 1797 digits held out as test data.
    standardize : bool
        Also standardise with the training pixels' mean and std. Off by default: pixels in
        ``[0, 1]`` with a zero background give LRP heatmaps that follow the strokes (relevance of
        a zero pixel is zero under the z+ rule).

    Returns
    -------
    DigitsData
    """
    from sklearn.datasets import load_digits

    _check_rate(flip_rate)
    seed = check_seed(seed)
    test_fraction = check_real(test_fraction, "test_fraction", low=0.0, high=1.0, low_inclusive=False,
                               high_inclusive=False)
    standardize = check_flag(standardize, "standardize")
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8)
    labels = torch.tensor(digits.target, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)
    n_test = int(round(test_fraction * len(labels)))
    test_idx, train_idx = order[:n_test], order[n_test:]
    if n_train is not None:
        n_train = check_integer(n_train, "n_train", low=2)
        if n_train > len(train_idx):
            warnings.warn(
                f"`n_train`={n_train} exceeds the {len(train_idx)} training samples available; using all "
                f"{len(train_idx)}.",
                UserWarning,
                stacklevel=2,
            )
        train_idx = train_idx[:n_train]
    x_train, y_clean = images[train_idx], labels[train_idx]
    mean, std = (float(x_train.mean()), float(x_train.std())) if standardize else (0.0, 1.0)
    x_train = (x_train - mean) / std
    x_test = (images[test_idx] - mean) / std

    n_flip = int(round(flip_rate * len(y_clean)))
    flipped = torch.zeros(len(y_clean), dtype=torch.bool)
    flipped[torch.randperm(len(y_clean), generator=generator)[:n_flip]] = True
    shift = torch.randint(1, 10, (len(y_clean),), generator=generator)
    y_train = torch.where(flipped, (y_clean + shift) % 10, y_clean)
    return DigitsData(x_train, y_train, y_clean, flipped, x_test, labels[test_idx], mean, std)


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
class DigitsCNN(nn.Module):
    """A small CNN for 8x8 digits: conv + batch norm, a 64-d feature layer, ``fc`` (64 -> 10).

    ``phi(x)`` (the input of ``fc``) is the output of a ReLU, so it is non-negative.
    """

    def __init__(self, n_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU())
        self.fc = nn.Linear(64, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, 8, 8)`` float -> ``(N, n_classes)`` logits."""
        return self.fc(self.head(self.features(x)))


def train_cnn(
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
    lr: float = 3e-3,
    batch_size: int = 64,
    show_progress: bool = False,
    checkpoint_paths: Optional[List[str]] = None,
) -> DigitsCNN:
    """Train a :class:`DigitsCNN` with Adam on ``(x, y)``, deterministically for the seed.

    Parameters
    ----------
    x : torch.Tensor
        ``(n, 1, 8, 8)`` float32 inputs.
    y : torch.Tensor
        ``(n,)`` int64 labels.
    epochs : int
        Passes over the data, ``>= 1``.
    seed : int
        Seeds the initialisation and the batch order.
    lr : float
        Adam learning rate.
    batch_size : int
    show_progress : bool
        A tqdm bar over the epochs, on stderr.
    checkpoint_paths : list of str, optional
        If given, the ``state_dict`` after the last ``len(checkpoint_paths)`` epochs is saved to
        these paths in order (for Captum's TracIn methods, which need checkpoints).

    Returns
    -------
    DigitsCNN
        In eval mode.
    """
    epochs = check_integer(epochs, "epochs", low=1)
    seed = check_seed(seed, high=SEED_RANGE[1] - 1)  # seed + 1 seeds the batch order
    lr = check_positive(lr, "lr")
    batch_size = check_integer(batch_size, "batch_size", low=1)
    show_progress = check_flag(show_progress, "show_progress")
    torch.manual_seed(seed)
    net = DigitsCNN()
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    # Cosine decay to zero: the last epochs settle instead of jumping between noisy-label fits.
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    generator = torch.Generator().manual_seed(seed + 1)
    checkpoint_paths = list(checkpoint_paths or [])
    first_saved = epochs - len(checkpoint_paths)
    bar = tqdm(range(epochs), desc="training CNN", unit="epoch", file=sys.stderr,
               disable=not show_progress, leave=False)
    for epoch in bar:
        net.train()
        total, n = 0.0, 0
        for idx in torch.randperm(len(y), generator=generator).split(batch_size):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            total, n = total + float(loss.detach()) * len(idx), n + len(idx)
        scheduler.step()
        bar.set_postfix(loss=f"{total / n:.3f}")
        if epoch >= first_saved:
            torch.save(net.state_dict(), checkpoint_paths[epoch - first_saved])
    net.eval()
    return net


# --------------------------------------------------------------------------------------------
# Mislabel detection: captum_dualxda.metrics, with "undefined" as NaN ("n/a" in the summary)
# --------------------------------------------------------------------------------------------
def _auc_or_nan(scores: np.ndarray, flipped: np.ndarray) -> float:
    """:func:`~captum_dualxda.metrics.mislabel_auc`, or NaN where no label or every label is flipped.

    The AUC is undefined then (``mislabel_auc`` raises); the demo reports it as "n/a".
    """
    if not flipped.any() or flipped.all():
        return float("nan")
    return mislabel_auc(scores, flipped)


def _found_in_top(scores: np.ndarray, flipped: np.ndarray, fraction: float) -> float:
    """Share of the flipped labels among the ``ceil(fraction * n)`` highest scores (NaN if none flipped).

    The point ``ceil(fraction * n) / n`` of :func:`~captum_dualxda.metrics.mislabel_detection_curve`.
    """
    if not flipped.any():
        return float("nan")
    _, found = mislabel_detection_curve(scores, flipped)
    return float(found[int(math.ceil(fraction * flipped.size))])


# --------------------------------------------------------------------------------------------
# The result
# --------------------------------------------------------------------------------------------
@dataclass
class DemoResult:
    """Everything :func:`run_demo` measured and wrote.

    Attributes
    ----------
    test_accuracy : float
        Network accuracy on the (clean) test labels.
    train_accuracy_noisy : float
        Network accuracy on the training labels it was trained with (flipped ones included).
    surrogate_agreement : float
        Share of test samples where the SVM surrogate ``argmax(W phi(x) + b)`` predicts the same
        class as the network.
    n_support : int
        Support vectors (training samples with a non-zero DualDA coefficient row).
    sparsity : float
        ``1 - n_support / n_train``.
    extraction_time : float
        Seconds to compute the training features.
    fit_time : float
        Seconds the SVM solver took.
    compile_time : float
        Seconds to compile the numba solver on a tiny problem before the fit (about 10 s on a
        machine's first run, a fraction of a second once numba's cache holds it).
    ms_per_test_sample : float
        Milliseconds per test sample to find its top-``k`` proponents and opponents with DualDA
        (features included, XDA excluded), over the whole test set.
    xda_ms_per_pair : float
        Milliseconds per XDA (test, training) pair, both heatmaps, measured on the explained test
        samples and their top-``k`` proponents (NaN if nothing was explained).
    auc : float
        ROC AUC of DualDA self-influence for finding the flipped labels (NaN if none flipped).
    found_top10 : float
        Share of the flipped labels among the 10 % of training samples with the highest
        self-influence (NaN if none flipped).
    random_auc : float
        The same AUC for a random order (about 0.5).
    flipped_in_proponents : float
        Share of flipped-label training samples among the top-``k`` proponents (score > 0) of all
        test predictions (compare with ``flip_rate``).
    flipped_in_opponents : float
        The same among the top-``k`` opponents (score < 0): opponents of a correct prediction are
        often training samples of the predicted class that carry a wrong label.
    hinge_auc : float
        The same AUC for :func:`~captum_dualxda.rank_label_issues`' ranking: the hinge loss of
        the SVM surrogate fitted with ``C = issues_C`` on each training sample.
    hinge_found_top10 : float
        ``found_top10`` for that ranking.
    loss_auc : float
        The same AUC when ranking by the network's cross-entropy on its (noisy) training labels,
        a simple baseline that needs no attribution method at all.
    loss_found_top10 : float
        ``found_top10`` for the training-loss ranking.
    self_influence : numpy.ndarray
        ``(n_train,)`` float32 DualDA self-influence ``a_i^{y_i} ||phi(x_i)||^2``.
    label_issue_scores : numpy.ndarray
        ``(n_train,)`` float32 :func:`~captum_dualxda.rank_label_issues` score of each training
        sample (dataset order).
    label_issue_flags : numpy.ndarray
        ``(n_train,)`` bool, its ``is_issue`` flag (the surrogate classifies the sample against
        its label), dataset order.
    flipped : numpy.ndarray
        ``(n_train,)`` bool, which training labels were flipped.
    explained : list of int
        Test indices explained with figures.
    files : dict
        ``name -> absolute path`` of every file written (``explanation_<i>``, ``mislabel_detection``,
        ``mislabel_suspects``, ``self_influence``).
    n_train, n_test, n_flipped : int
    C, flip_rate : float
    k, seed, epochs : int
        The settings of the run.
    solver_gap : float
        Relative duality gap of the SVM fit (``(P + D) / P``, 0 at the optimum).
    issues_C : float
        ``C`` of the surrogate behind ``rank_label_issues`` (its default,
        :data:`~captum_dualxda.label_issues.LABEL_ISSUES_C`).
    issues_precision, issues_recall : float
        Share of the flagged samples whose label was flipped (NaN if none flagged), and share of
        the flipped labels flagged (NaN if none flipped).
    """

    test_accuracy: float
    train_accuracy_noisy: float
    surrogate_agreement: float
    n_support: int
    sparsity: float
    extraction_time: float
    fit_time: float
    compile_time: float
    ms_per_test_sample: float
    xda_ms_per_pair: float
    auc: float
    found_top10: float
    random_auc: float
    flipped_in_proponents: float
    flipped_in_opponents: float
    hinge_auc: float
    hinge_found_top10: float
    loss_auc: float
    loss_found_top10: float
    self_influence: np.ndarray
    label_issue_scores: np.ndarray
    label_issue_flags: np.ndarray
    flipped: np.ndarray
    explained: List[int]
    files: Dict[str, str]
    n_train: int
    n_test: int
    n_flipped: int
    C: float
    flip_rate: float
    k: int
    seed: int
    epochs: int
    solver_gap: float = float("nan")
    issues_C: float = LABEL_ISSUES_C
    issues_precision: float = float("nan")
    issues_recall: float = float("nan")

    def summary(self) -> str:
        """The printed summary table (plain text, one metric per line)."""
        def pct(v: float) -> str:
            return "n/a" if math.isnan(v) else f"{100 * v:.1f} %"

        def num(v: float, fmt: str) -> str:
            return "n/a" if math.isnan(v) else format(v, fmt)

        rows = [
            ("training samples / test samples", f"{self.n_train} / {self.n_test}"),
            ("flipped training labels", f"{self.n_flipped} ({pct(self.flip_rate)})"),
            ("CNN test accuracy", pct(self.test_accuracy)),
            ("CNN accuracy on its noisy training labels", pct(self.train_accuracy_noisy)),
            (f"SVM surrogate agrees with CNN (test, C={self.C:g})", pct(self.surrogate_agreement)),
            ("support vectors", f"{self.n_support} of {self.n_train}"),
            ("sparsity (training samples scoring 0)", pct(self.sparsity)),
            ("fit time: features + SVM solver", f"{self.extraction_time:.2f} s + {self.fit_time:.2f} s"),
            ("  (solver compile/load before the fit, once)", f"{self.compile_time:.2f} s"),
            (f"DualDA ms per test sample (top-{self.k} both signs)", num(self.ms_per_test_sample, ".3f")),
            ("XDA ms per (test, train) pair", num(self.xda_ms_per_pair, ".1f")),
            ("mislabel detection ROC AUC (self-influence)", num(self.auc, ".3f")),
            ("flipped labels found in top 10 % of ranking", pct(self.found_top10)),
            (f"  rank_label_issues (hinge loss, C={self.issues_C:g}), AUC / top 10 %",
             f"{num(self.hinge_auc, '.3f')} / {pct(self.hinge_found_top10)}"),
            ("  rank_label_issues: flagged, precision / recall",
             f"{int(self.label_issue_flags.sum())}, {pct(self.issues_precision)} / {pct(self.issues_recall)}"),
            ("  baseline: rank by training loss, AUC / top 10 %",
             f"{num(self.loss_auc, '.3f')} / {pct(self.loss_found_top10)}"),
            ("  random order, AUC", num(self.random_auc, ".3f")),
            (f"flipped labels among top-{self.k} proponents / opponents",
             f"{pct(self.flipped_in_proponents)} / {pct(self.flipped_in_opponents)}"),
        ]
        width = max(len(name) for name, _ in rows)
        line = "-" * (width + 2 + max(len(value) for _, value in rows))
        body = [f"{name:<{width}}  {value}" for name, value in rows]
        return "\n".join(["DualXDA demo: digits CNN", line, *body, line])


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------
def _curve_figure(flipped: np.ndarray,
                  rankings: List[Tuple[str, np.ndarray, float, Dict[str, object]]]) -> Figure:
    """Detection curves of ``(name, scores, auc, plot style)`` rankings; needs a flipped label."""
    fig = Figure(figsize=(5.2, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for name, scores, auc, style in rankings:
        ax.plot(*mislabel_detection_curve(scores, flipped), **style,
                label=f"{name} (AUC {'n/a' if math.isnan(auc) else format(auc, '.3f')})")
    ax.plot([0, 1], [0, 1], color="0.6", ls="--", lw=1, label="expected for random order")
    rate = float(flipped.mean())
    ax.plot([0, rate, 1], [0, 1, 1], color="#2166ac", ls=":", lw=1, label="perfect ranking")
    ax.axvline(0.1, color="0.85", lw=0.8, zorder=0)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("fraction of training data inspected (highest score first)")
    ax.set_ylabel("fraction of flipped labels found")
    ax.set_title("Finding flipped labels with DualDA", fontsize=11)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _suspects_figure(data: DigitsData, rankings: List[Tuple[str, np.ndarray]], n: int = 8) -> Figure:
    """One row per ``(name, scores)`` ranking: its ``n`` highest-scoring training images."""
    cols = n
    fig = Figure(figsize=(cols * 1.1, len(rankings) * 1.45 + 0.4))
    for r, (name, scores) in enumerate(rankings):
        for m, j in enumerate(np.argsort(-scores, kind="stable")[:n]):
            ax = fig.add_subplot(len(rankings), cols, r * cols + m + 1)
            ax.imshow(image_for_display(data.x_train[j], data.denormalize), cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if m == 0:
                ax.set_ylabel(name, fontsize=7)
            given, true = int(data.y_train[j]), int(data.y_train_clean[j])
            flipped = given != true
            ax.set_title(f"#{j}: label {given}" + (f"\n(was {true})" if flipped else "\n(correct)"),
                         fontsize=7, color="#b2182b" if flipped else "0.3")
    fig.suptitle("Most suspicious training labels, per ranking (red = really flipped)", fontsize=9)
    fig.tight_layout()
    return fig


def _share(mask: torch.Tensor) -> float:
    """Mean of a bool tensor (NaN if empty)."""
    return float(mask.float().mean()) if mask.numel() else float("nan")


def _warm_up_solver(show_progress: bool) -> float:
    """Compile (or load from numba's cache) the CPU solver on a tiny problem; return seconds.

    The first run on a machine compiles the numba kernels (about 10 s); later runs load them from
    the cache. Doing it up front keeps that one-off cost out of the measured fit time.
    """
    if show_progress:
        print("preparing the SVM solver (numba compiles it on the first run only) ...", file=sys.stderr)
    generator = torch.Generator().manual_seed(0)
    features = torch.rand(12, 3, generator=generator)
    labels = torch.arange(12) % 3
    start = time.perf_counter()
    fit_crammer_singer(features, labels, C=1.0)
    return time.perf_counter() - start


# --------------------------------------------------------------------------------------------
# Validation and the run
# --------------------------------------------------------------------------------------------
def _check_rate(flip_rate: float) -> float:
    return check_real(flip_rate, "flip_rate", low=0.0, high=1.0, high_inclusive=False)


#: Seeds the demo accepts: it seeds NumPy (non-negative seeds only) and torch with them.
DEMO_SEED_RANGE = (0, 2**63 - 1)


def check_demo_arguments(flip_rate: float, C: float, k: int, n_explain: int, epochs: int,
                         n_train: Optional[int], seed: int = 0) -> None:
    """Validate :func:`run_demo` settings before any work; raise ValueError naming the bad one.

    ``seed`` must lie in ``0..2**63 - 1``; numbers may be NumPy scalars, booleans are refused.
    """
    _check_rate(flip_rate)
    check_positive(C, "C")
    check_integer(k, "k", low=1)
    check_integer(n_explain, "n_explain", low=0)
    check_integer(epochs, "epochs", low=1)
    check_integer(n_train, "n_train", low=20, optional=True)
    check_seed(seed, low=DEMO_SEED_RANGE[0], high=DEMO_SEED_RANGE[1])


#: The file in which the demo records the outputs it wrote into its directory (name -> SHA-256).
OUTPUT_MANIFEST = ".captum_dualxda_demo.json"
# Files the operating system puts into folders one opens; the demo leaves them alone.
_SYSTEM_FILES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _recorded_outputs(directory: str) -> Dict[str, str]:
    """``name -> sha256`` of the files an earlier run recorded in ``directory`` ({} if none)."""
    try:
        with open(os.path.join(directory, OUTPUT_MANIFEST)) as handle:
            recorded = json.load(handle).get("files", {})
    except (OSError, ValueError, AttributeError):
        return {}
    if not isinstance(recorded, dict):
        return {}
    return {str(name): str(digest) for name, digest in recorded.items()}


def check_out_dir(out_dir: str, argument: str = "out_dir") -> List[str]:
    """Check that ``out_dir`` holds nothing but an earlier demo run's outputs; return those.

    The demo writes its figures and ``self_influence.csv`` under fixed names and records each
    file it wrote (with its SHA-256) in ``OUTPUT_MANIFEST``. A directory that is missing or
    empty is fine. Otherwise every entry must be an output recorded there and unchanged since;
    anything else (a file of the user's, even one named like an output, an output the user
    edited, a subfolder, a link) is refused, so the demo never overwrites or deletes it. Files
    the operating system adds (``.DS_Store``, ``Thumbs.db``, ``desktop.ini``) are ignored.

    Parameters
    ----------
    out_dir : str
        The output directory.
    argument : str
        Its name in the error message.

    Returns
    -------
    list of str
        Paths of the earlier run's outputs (and the record), which :func:`run_demo` removes so
        that the directory holds only the new run's files.

    Raises
    ------
    ValueError
        ``out_dir`` holds something the demo did not write; the message lists it.
    """
    directory = os.path.abspath(out_dir)
    if not os.path.isdir(directory):
        return []
    names = sorted(name for name in os.listdir(directory) if name not in _SYSTEM_FILES)
    recorded = _recorded_outputs(directory)
    foreign, changed = [], []
    for name in names:
        path = os.path.join(directory, name)
        plain_file = os.path.isfile(path) and not os.path.islink(path)
        if name == OUTPUT_MANIFEST or (name.startswith(OUTPUT_MANIFEST + ".") and name.endswith(".tmp")):
            if not plain_file:  # the record (or an interrupted write of it) is a plain file
                foreign.append(name)
        elif name not in recorded or not plain_file:
            foreign.append(name)
        elif _sha256(path) != recorded[name]:
            changed.append(name)
    if foreign or changed:
        def listed(items: List[str]) -> str:
            return ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")

        found = [f"files the demo did not write ({listed(foreign)})"] if foreign else []
        found += [f"outputs changed since the demo wrote them ({listed(changed)})"] if changed else []
        raise ValueError(
            f"`{argument}` = {directory!r} holds {' and '.join(found)}; the demo writes its figures and "
            "self_influence.csv there and never overwrites, deletes or mixes with other files. Pass an "
            "empty or new directory, or move those files."
        )
    return [os.path.join(directory, name) for name in names]


class _OutputRecord:
    """Records every file the run writes in ``OUTPUT_MANIFEST`` (rewritten after each file)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.files: Dict[str, str] = {}

    def add(self, path: str) -> None:
        self.files[os.path.basename(path)] = _sha256(path)
        target = os.path.join(self.directory, OUTPUT_MANIFEST)
        partial = f"{target}.{os.getpid()}.tmp"
        with open(partial, "w") as handle:
            json.dump({"written_by": "python -m captum_dualxda demo", "files": self.files}, handle, indent=1)
        os.replace(partial, target)


@contextlib.contextmanager
def _torch_threads(n: Optional[int]) -> Iterator[None]:
    """Temporarily set ``torch.set_num_threads(n)`` (no change for None)."""
    if n is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_demo(
    out_dir: str,
    flip_rate: float = 0.1,
    C: float = DEFAULT_C,
    k: int = 4,
    seed: int = 0,
    n_explain: int = 3,
    epochs: int = DEFAULT_EPOCHS,
    n_train: Optional[int] = None,
    show_progress: bool = True,
    dpi: int = 110,
    num_threads: Optional[int] = 1,
) -> DemoResult:
    """Train a digits CNN on partly flipped labels, explain it with DualXDA, find the flips.

    Parameters
    ----------
    out_dir : str
        Directory for the PNG figures and ``self_influence.csv`` (created if missing; must be
        writable, checked before any training). It must be empty or hold only an earlier demo
        run's outputs (:func:`check_out_dir`), which are removed first, so the directory ends
        up with this run's files alone (and ``OUTPUT_MANIFEST``, the record of them).
    flip_rate : float
        Fraction of training labels flipped to another class, in ``[0, 1)``.
    C : float
        DualDA's SVM regularisation, ``> 0`` (default: DualDA's own default, 1e-3).
    k : int
        Proponents and opponents (each) per explained test sample, ``>= 1``.
    seed : int
        Seeds the split, the flips, the network and the solver: same seed, same numbers (timings
        aside). In ``0..2**63 - 1``.
    n_explain : int
        Test samples explained with an XDA figure (the first ``n_explain`` of the test set).
    epochs : int
        Training epochs of the CNN.
    n_train : int, optional
        Use only the first ``n_train`` training samples (for quick tests).
    show_progress : bool
        tqdm bars on stderr for training, feature extraction, the solver and the explanations.
    dpi : int
        Resolution of the PNG figures.
    num_threads : int, optional
        PyTorch threads during the run (restored afterwards). The default 1 is the fastest for
        this tiny CNN: with 2 threads on 2 busy shared cores training took 57 s instead of 4 s.
        None keeps the current setting.

    Returns
    -------
    DemoResult

    Raises
    ------
    ValueError
        Invalid settings, ``out_dir`` is not a writable directory, or it holds files the demo
        did not write.
    """
    check_demo_arguments(flip_rate, C, k, n_explain, epochs, n_train, seed)
    show_progress = check_flag(show_progress, "show_progress")
    check_positive(dpi, "dpi")
    num_threads = check_integer(num_threads, "num_threads", low=1, optional=True)
    stale = check_out_dir(out_dir, "out_dir")
    out_dir = check_writable_dir(out_dir, "out_dir")
    for path in stale:  # the earlier run's outputs: gone before this run writes its own
        os.remove(path)
    with _torch_threads(num_threads):
        return _run(out_dir, flip_rate, C, k, seed, n_explain, epochs, n_train, show_progress, dpi)


def _run(out_dir: str, flip_rate: float, C: float, k: int, seed: int, n_explain: int, epochs: int,
         n_train: Optional[int], show_progress: bool, dpi: int) -> DemoResult:
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import EpsilonPlus

    data = load_digits_data(flip_rate, seed, n_train)
    net = train_cnn(data.x_train, data.y_train, epochs=epochs, seed=seed, show_progress=show_progress)
    with torch.no_grad():
        test_pred = net(data.x_test).argmax(1)
        train_pred = net(data.x_train).argmax(1)
    train_loss = training_loss(net, data.train_dataset).numpy()  # the baseline: no attribution at all
    test_accuracy = float((test_pred == data.y_test).float().mean())
    train_accuracy = float((train_pred == data.y_train).float().mean())

    compile_time = _warm_up_solver(show_progress)
    dualda = DualDA(net, "fc", data.train_dataset, C=C, batch_size=256, seed=seed,
                    show_progress=show_progress)

    # Surrogate agreement: the SVM's own prediction on the test features vs the network's.
    agreement = surrogate_fidelity(dualda, data.x_test).agreement

    # Explanation speed: top-k proponents and opponents of every test prediction.
    test_batch = (data.x_test, test_pred)
    start = time.perf_counter()
    top_pro = dualda.influence(test_batch, k=k, proponents=True, show_progress=show_progress)
    top_opp = dualda.influence(test_batch, k=k, proponents=False, show_progress=show_progress)
    ms_per_test = 1000 * (time.perf_counter() - start) / len(test_pred)
    flipped_t = data.flipped
    pro_keep, opp_keep = top_pro.influence_scores > 0, top_opp.influence_scores < 0
    flipped_in_proponents = _share(flipped_t[top_pro.indices.cpu()][pro_keep.cpu()])
    flipped_in_opponents = _share(flipped_t[top_opp.indices.cpu()][opp_keep.cpu()])

    # Self-influence ranking for mislabel detection.
    self_inf = dualda.self_influence().cpu().numpy()
    flipped = data.flipped.numpy()
    auc = _auc_or_nan(self_inf, flipped)
    found_top10 = _found_in_top(self_inf, flipped, 0.10)
    random_scores = np.random.default_rng(seed).random(len(self_inf))
    random_auc = _auc_or_nan(random_scores, flipped)
    # Label issues: the hinge loss of a small-C surrogate (refitted on the features unless C matches).
    issues = rank_label_issues(dualda, show_progress=show_progress)
    hinge = np.empty(len(flipped), dtype=np.float32)
    hinge[issues.indices.numpy()] = issues.scores.numpy()
    issue_flags = np.zeros(len(flipped), dtype=bool)
    issue_flags[issues.indices.numpy()] = issues.is_issue.numpy()
    hits = int((issue_flags & flipped).sum())
    issues_precision = hits / int(issue_flags.sum()) if issue_flags.any() else float("nan")
    issues_recall = hits / int(flipped.sum()) if flipped.any() else float("nan")
    hinge_auc = _auc_or_nan(hinge, flipped)
    hinge_found_top10 = _found_in_top(hinge, flipped, 0.10)
    loss_auc = _auc_or_nan(train_loss, flipped)
    loss_found_top10 = _found_in_top(train_loss, flipped, 0.10)

    files: Dict[str, str] = {}
    record = _OutputRecord(out_dir)  # what this run wrote, so the next run may replace it
    explained = list(range(min(n_explain, len(test_pred))))
    # EpsilonPlus (z+ on the conv layers, the first one included): on 8x8 inputs in [0, 1] its
    # heatmaps follow the strokes. EpsilonPlusFlat's flat rule on the first layer spreads relevance
    # evenly over each 3x3 window whatever the pixels, so every heatmap looks like the same blob
    # (tutorials/xda_heatmaps.ipynb compares the composites; benchmarks/xda_faithfulness.py measures
    # EpsilonPlus as the most faithful by pixel flipping).
    xda = XDA(net, "fc", EpsilonPlus(zero_params="bias", canonizers=[SequentialMergeBatchNorm()]))
    if explained:
        # XDA speed: both heatmaps for each explained sample and its top-k proponents.
        x_explained = data.x_test[explained]
        partners = dualda.influence((x_explained, test_pred[explained]), k=k).indices
        start = time.perf_counter()
        xda_pairs(dualda, xda, x_explained, test_pred[explained], partners)
        xda_ms_per_pair = 1000 * (time.perf_counter() - start) / partners.numel()
    else:
        xda_ms_per_pair = float("nan")
    def was_label(j: int) -> str:
        """The original label of a flipped training sample, for the figure's panel titles."""
        return f" (was {int(data.y_train_clean[j])})" if bool(data.flipped[j]) else ""

    for i in tqdm(explained, desc="XDA explanations", unit="sample", file=sys.stderr,
                  disable=not show_progress, leave=False):
        fig = explain_figure(
            dualda, data.x_test[i], int(test_pred[i]), k=k, xda=xda, test_label=int(data.y_test[i]),
            denormalize=data.denormalize, annotate=was_label,
            title=f"Test sample {i}: why does the CNN predict {int(test_pred[i])}? (DualDA + XDA, C={C:g}; "
                  "'was c' marks a flipped training label)",
        )
        path = os.path.join(out_dir, f"explanation_{i}.png")
        fig.savefig(path, dpi=dpi)
        files[f"explanation_{i}"] = path
        record.add(path)

    if flipped.any():  # flip_rate=0: nothing to detect, no curve
        path = os.path.join(out_dir, "mislabel_detection.png")
        _curve_figure(flipped, [
            ("DualDA self-influence", self_inf, auc, dict(color="#b2182b", lw=2)),
            (f"rank_label_issues (hinge loss, C={LABEL_ISSUES_C:g})", hinge, hinge_auc,
             dict(color="#762a83", lw=1.5, ls="--")),
            ("baseline: training loss", train_loss, loss_auc, dict(color="#e08214", lw=1.2, ls="-.")),
            ("random order", random_scores, random_auc, dict(color="0.4", lw=1.2)),
        ]).savefig(path, dpi=dpi)
        files["mislabel_detection"] = path
        record.add(path)
    path = os.path.join(out_dir, "mislabel_suspects.png")
    _suspects_figure(data, [("DualDA\nself-influence", self_inf), ("rank_label_issues", hinge)]).savefig(path, dpi=dpi)
    files["mislabel_suspects"] = path
    record.add(path)

    path = os.path.join(out_dir, "self_influence.csv")
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["train_index", "given_label", "original_label", "flipped", "self_influence",
                         "label_issue_score", "label_issue_flag"])
        for j in np.argsort(-self_inf, kind="stable"):
            writer.writerow([int(j), int(data.y_train[j]), int(data.y_train_clean[j]), int(flipped[j]),
                             f"{float(self_inf[j]):.6g}", f"{float(hinge[j]):.6g}", int(issue_flags[j])])
    files["self_influence"] = path
    record.add(path)

    return DemoResult(
        test_accuracy=test_accuracy,
        train_accuracy_noisy=train_accuracy,
        surrogate_agreement=agreement,
        n_support=int(dualda.support_indices.numel()),
        sparsity=float(dualda.sparsity),
        extraction_time=float(dualda.fit_stats["extraction_time"]),
        fit_time=float(dualda.fit_stats["time"]),
        compile_time=compile_time,
        ms_per_test_sample=ms_per_test,
        xda_ms_per_pair=xda_ms_per_pair,
        auc=auc,
        found_top10=found_top10,
        random_auc=random_auc,
        flipped_in_proponents=flipped_in_proponents,
        flipped_in_opponents=flipped_in_opponents,
        hinge_auc=hinge_auc,
        hinge_found_top10=hinge_found_top10,
        loss_auc=loss_auc,
        loss_found_top10=loss_found_top10,
        self_influence=self_inf,
        label_issue_scores=hinge,
        label_issue_flags=issue_flags,
        flipped=flipped,
        explained=explained,
        files=files,
        n_train=len(data.y_train),
        n_test=len(data.y_test),
        n_flipped=int(flipped.sum()),
        C=float(C),
        flip_rate=float(flip_rate),
        k=int(k),
        seed=int(seed),
        epochs=int(epochs),
        solver_gap=float(dualda.fit_stats["gap"]),
        issues_C=LABEL_ISSUES_C,
        issues_precision=issues_precision,
        issues_recall=issues_recall,
    )
