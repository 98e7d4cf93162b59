"""The demo's run: train, fit, explain, measure, write the figures and the CSV (:func:`run_demo`)."""

from __future__ import annotations

import contextlib
import csv
import os
import sys
import time
from dataclasses import dataclass
from typing import Iterator, List, Optional

import numpy as np
import torch
from tqdm import tqdm

from .._core.cache import check_writable_dir
from .._utils.validation import check_flag, check_integer, check_positive, check_seed
from ..dualda import DualDA
from ..label_issues import LABEL_ISSUES_C, rank_label_issues
from ..metrics import surrogate_fidelity, training_loss
from ..solver import fit_crammer_singer
from ..solver.settings import DEFAULT_C
from ..visualization import explain_figure
from ..xda import XDA, xda_pairs
from .data import DigitsData, check_flip_rate, load_digits_data
from .figures import curve_figure, suspects_figure
from .model import DEFAULT_EPOCHS, train_cnn
from .outputs import OutputRecord, check_out_dir
from .report import DemoResult, auc_or_nan, found_in_top, share

__all__ = ["DEMO_SEED_RANGE", "check_demo_arguments", "run_demo"]


#: Seeds the demo accepts: it seeds NumPy (non-negative seeds only) and torch with them.
DEMO_SEED_RANGE = (0, 2**63 - 1)


def check_demo_arguments(
    flip_rate: float, C: float, k: int, n_explain: int, epochs: int, n_train: Optional[int], seed: int = 0
) -> None:
    """Validate :func:`run_demo` settings before any work; raise ValueError naming the bad one.

    ``seed`` must lie in ``0..2**63 - 1``; numbers may be NumPy scalars, booleans are refused.
    """
    check_flip_rate(flip_rate)
    check_positive(C, "C")
    check_integer(k, "k", low=1)
    check_integer(n_explain, "n_explain", low=0)
    check_integer(epochs, "epochs", low=1)
    check_integer(n_train, "n_train", low=20, optional=True)
    check_seed(seed, low=DEMO_SEED_RANGE[0], high=DEMO_SEED_RANGE[1])


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


def _warm_up_solver(show_progress: bool) -> float:
    """Compile (or load from numba's cache) the CPU solver on a tiny problem; return seconds.

    The first run on a machine compiles the numba kernels; later runs load them from the cache.
    Doing it up front keeps that one-off cost out of the measured fit time.
    """
    if show_progress:
        print("preparing the SVM solver (numba compiles it on the first run only) ...", file=sys.stderr)
    generator = torch.Generator().manual_seed(0)
    features = torch.rand(12, 3, generator=generator)
    labels = torch.arange(12) % 3
    start = time.perf_counter()
    fit_crammer_singer(features, labels, C=1.0)
    return time.perf_counter() - start


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
        this tiny CNN, by far on busy shared cores (``benchmarks/README.md``, *Numbers behind
        the docstrings*). None keeps the current setting.

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


def _run(
    out_dir: str,
    flip_rate: float,
    C: float,
    k: int,
    seed: int,
    n_explain: int,
    epochs: int,
    n_train: Optional[int],
    show_progress: bool,
    dpi: int,
) -> DemoResult:
    data = load_digits_data(flip_rate, seed, n_train)
    net = train_cnn(data.x_train, data.y_train, epochs=epochs, seed=seed, show_progress=show_progress)
    with torch.no_grad():
        test_pred = net(data.x_test).argmax(1)
        train_pred = net(data.x_train).argmax(1)
    train_loss = training_loss(net, data.train_dataset).numpy()  # the baseline: no attribution at all
    compile_time = _warm_up_solver(show_progress)
    dualda = DualDA(net, "fc", data.train_dataset, C=C, batch_size=256, seed=seed, show_progress=show_progress)
    explanation = _explain_test_set(dualda, data, test_pred, k, show_progress)
    rankings = _rank_training_labels(dualda, data.flipped.numpy(), train_loss, seed, show_progress)
    record = OutputRecord(out_dir)  # what this run wrote, so the next run may replace it
    explained = list(range(min(n_explain, len(test_pred))))
    xda_ms_per_pair = _write_explanations(record, dualda, net, data, test_pred, explained, k, C, dpi, show_progress)
    _write_rankings(record, data, rankings, dpi)
    return DemoResult(
        test_accuracy=float((test_pred == data.y_test).float().mean()),
        train_accuracy_noisy=float((train_pred == data.y_train).float().mean()),
        surrogate_agreement=surrogate_fidelity(dualda, data.x_test).agreement,
        n_support=int(dualda.support_indices.numel()),
        sparsity=float(dualda.sparsity),
        extraction_time=float(dualda.fit_stats["extraction_time"]),
        fit_time=float(dualda.fit_stats["time"]),
        compile_time=compile_time,
        ms_per_test_sample=explanation.ms_per_test_sample,
        xda_ms_per_pair=xda_ms_per_pair,
        auc=rankings.auc,
        found_top10=rankings.found_top10,
        random_auc=rankings.random_auc,
        flipped_in_proponents=explanation.flipped_in_proponents,
        flipped_in_opponents=explanation.flipped_in_opponents,
        hinge_auc=rankings.hinge_auc,
        hinge_found_top10=rankings.hinge_found_top10,
        loss_auc=rankings.loss_auc,
        loss_found_top10=rankings.loss_found_top10,
        self_influence=rankings.self_influence,
        label_issue_scores=rankings.hinge,
        label_issue_flags=rankings.issue_flags,
        flipped=rankings.flipped,
        explained=explained,
        files=dict(record.paths),
        n_train=len(data.y_train),
        n_test=len(data.y_test),
        n_flipped=int(rankings.flipped.sum()),
        C=float(C),
        flip_rate=float(flip_rate),
        k=int(k),
        seed=int(seed),
        epochs=int(epochs),
        solver_gap=float(dualda.fit_stats["gap"]),
        issues_C=LABEL_ISSUES_C,
        issues_precision=rankings.issues_precision,
        issues_recall=rankings.issues_recall,
    )


@dataclass
class _Explanation:
    """Speed and content of DualDA's top-k proponents and opponents over the whole test set."""

    ms_per_test_sample: float
    flipped_in_proponents: float
    flipped_in_opponents: float


def _explain_test_set(
    dualda: DualDA, data: DigitsData, test_pred: torch.Tensor, k: int, show_progress: bool
) -> _Explanation:
    """Top-k proponents and opponents of every test prediction: time per sample, share of flipped labels."""
    test_batch = (data.x_test, test_pred)
    start = time.perf_counter()
    top_pro = dualda.influence(test_batch, k=k, proponents=True, show_progress=show_progress)
    top_opp = dualda.influence(test_batch, k=k, proponents=False, show_progress=show_progress)
    ms_per_test = 1000 * (time.perf_counter() - start) / len(test_pred)
    pro_keep, opp_keep = top_pro.influence_scores > 0, top_opp.influence_scores < 0
    return _Explanation(
        ms_per_test,
        share(data.flipped[top_pro.indices.cpu()][pro_keep.cpu()]),
        share(data.flipped[top_opp.indices.cpu()][opp_keep.cpu()]),
    )


@dataclass
class _Rankings:
    """The training samples ranked three ways (and at random), and how well each finds the flipped labels."""

    flipped: np.ndarray
    self_influence: np.ndarray
    hinge: np.ndarray
    issue_flags: np.ndarray
    train_loss: np.ndarray
    random_scores: np.ndarray
    auc: float
    found_top10: float
    random_auc: float
    hinge_auc: float
    hinge_found_top10: float
    loss_auc: float
    loss_found_top10: float
    issues_precision: float
    issues_recall: float


def _rank_training_labels(
    dualda: DualDA, flipped: np.ndarray, train_loss: np.ndarray, seed: int, show_progress: bool
) -> _Rankings:
    """Self-influence, ``rank_label_issues`` (a small-C surrogate's held-out margin), training loss, random order."""
    self_inf = dualda.self_influence().cpu().numpy()
    random_scores = np.random.default_rng(seed).random(len(self_inf))
    issues = rank_label_issues(dualda, show_progress=show_progress)  # cross-fitted on the kept features
    hinge = np.empty(len(flipped), dtype=np.float32)
    hinge[issues.indices.numpy()] = issues.scores.numpy()
    issue_flags = np.zeros(len(flipped), dtype=bool)
    issue_flags[issues.indices.numpy()] = issues.is_issue.numpy()
    hits = int((issue_flags & flipped).sum())
    return _Rankings(
        flipped=flipped,
        self_influence=self_inf,
        hinge=hinge,
        issue_flags=issue_flags,
        train_loss=train_loss,
        random_scores=random_scores,
        auc=auc_or_nan(self_inf, flipped),
        found_top10=found_in_top(self_inf, flipped, 0.10),
        random_auc=auc_or_nan(random_scores, flipped),
        hinge_auc=auc_or_nan(hinge, flipped),
        hinge_found_top10=found_in_top(hinge, flipped, 0.10),
        loss_auc=auc_or_nan(train_loss, flipped),
        loss_found_top10=found_in_top(train_loss, flipped, 0.10),
        issues_precision=hits / int(issue_flags.sum()) if issue_flags.any() else float("nan"),
        issues_recall=hits / int(flipped.sum()) if flipped.any() else float("nan"),
    )


def _write_explanations(
    record: OutputRecord,
    dualda: DualDA,
    net: torch.nn.Module,
    data: DigitsData,
    test_pred: torch.Tensor,
    explained: List[int],
    k: int,
    C: float,
    dpi: int,
    show_progress: bool,
) -> float:
    """One XDA figure per explained test sample; return milliseconds per (test, training) pair (NaN if none)."""
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import EpsilonPlus

    # EpsilonPlus (z+ on the conv layers, the first one included): on 8x8 inputs in [0, 1] its
    # heatmaps follow the strokes. EpsilonPlusFlat's flat rule on the first layer spreads relevance
    # evenly over each 3x3 window whatever the pixels, so every heatmap looks like the same blob
    # (tutorials/xda_heatmaps.ipynb compares the composites; benchmarks/xda_faithfulness.py measures
    # the composites' faithfulness by pixel flipping).
    xda = XDA(net, "fc", EpsilonPlus(zero_params="bias", canonizers=[SequentialMergeBatchNorm()]))
    if not explained:
        return float("nan")
    # XDA speed: both heatmaps for each explained sample and its top-k proponents.
    x_explained = data.x_test[explained]
    partners = dualda.influence((x_explained, test_pred[explained]), k=k).indices
    start = time.perf_counter()
    xda_pairs(dualda, xda, x_explained, test_pred[explained], partners)
    xda_ms_per_pair = 1000 * (time.perf_counter() - start) / partners.numel()

    def was_label(j: int) -> str:
        """The original label of a flipped training sample, for the figure's panel titles."""
        return f" (was {int(data.y_train_clean[j])})" if bool(data.flipped[j]) else ""

    for i in tqdm(
        explained, desc="XDA explanations", unit="sample", file=sys.stderr, disable=not show_progress, leave=False
    ):
        fig = explain_figure(
            dualda,
            data.x_test[i],
            int(test_pred[i]),
            k=k,
            xda=xda,
            test_label=int(data.y_test[i]),
            denormalize=data.denormalize,
            annotate=was_label,
            title=f"Test sample {i}: why does the CNN predict {int(test_pred[i])}? (DualDA + XDA, C={C:g}; "
            "'was c' marks a flipped training label)",
        )
        path = os.path.join(record.directory, f"explanation_{i}.png")
        fig.savefig(path, dpi=dpi)
        record.add(path, f"explanation_{i}")
    return xda_ms_per_pair


def _write_rankings(record: OutputRecord, data: DigitsData, rankings: _Rankings, dpi: int) -> None:
    """The detection curves (if a label is flipped), the most suspicious labels, and ``self_influence.csv``."""
    r = rankings
    if r.flipped.any():  # flip_rate=0: nothing to detect, no curve
        path = os.path.join(record.directory, "mislabel_detection.png")
        curve_figure(
            r.flipped,
            [
                ("DualDA self-influence", r.self_influence, r.auc, dict(color="#b2182b", lw=2)),
                (
                    f"rank_label_issues (held-out margin, C={LABEL_ISSUES_C:g})",
                    r.hinge,
                    r.hinge_auc,
                    dict(color="#762a83", lw=1.5, ls="--"),
                ),
                ("baseline: training loss", r.train_loss, r.loss_auc, dict(color="#e08214", lw=1.2, ls="-.")),
                ("random order", r.random_scores, r.random_auc, dict(color="0.4", lw=1.2)),
            ],
        ).savefig(path, dpi=dpi)
        record.add(path, "mislabel_detection")
    path = os.path.join(record.directory, "mislabel_suspects.png")
    suspects_figure(data, [("DualDA\nself-influence", r.self_influence), ("rank_label_issues", r.hinge)]).savefig(
        path, dpi=dpi
    )
    record.add(path, "mislabel_suspects")

    path = os.path.join(record.directory, "self_influence.csv")
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "train_index",
                "given_label",
                "original_label",
                "flipped",
                "self_influence",
                "label_issue_score",
                "label_issue_flag",
            ]
        )
        for j in np.argsort(-r.self_influence, kind="stable"):
            writer.writerow(
                [
                    int(j),
                    int(data.y_train[j]),
                    int(data.y_train_clean[j]),
                    int(r.flipped[j]),
                    f"{float(r.self_influence[j]):.6g}",
                    f"{float(r.hinge[j]):.6g}",
                    int(r.issue_flags[j]),
                ]
            )
    record.add(path, "self_influence")
