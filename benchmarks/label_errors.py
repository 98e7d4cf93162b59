"""Finding flipped labels: ``rank_label_issues`` next to self-influence, the training loss and cleanlab.

Run from the repository root::

    python benchmarks/label_errors.py                 # seeds 0, 1, 2 (about 15 min on 2 busy cores)
    python benchmarks/label_errors.py --seeds 0       # one seed
    python benchmarks/label_errors.py --out label_errors.json
    python benchmarks/label_errors.py --data mnist --seeds 0 --clean   # MNIST (label_tasks.py; trains and caches)

``--data mnist`` runs the real-data tasks of ``label_tasks.py`` (MNIST, 10 % / 20 % flipped
labels, uniform / class-conditional, not memorised / memorised) with the current
``rank_label_issues`` (5-fold, count flag), its ``flag="disagree"``, ``folds=1`` and the previous
rule (in-sample hinge loss, flag ``hinge > 1``), ``layers=`` (:data:`MNIST_LAYERS`: the
convolutional features alone, the inputs of all three fully connected layers), self-influence,
the training loss, cleanlab and a random order; ``--clean`` adds the cleaning loop on the two
10 % uniform tasks (flagged samples removed, the CNN retrained). The rest of this docstring describes the digits run.

cleanlab is optional (``pip install "cleanlab==2.9.*"``); without it its rows read
"cleanlab not installed".

For every seed the demo's data (scikit-learn digits in [0, 1], 10 % of the training labels
flipped to another class, :func:`captum_dualxda.demo.load_digits_data`) trains the demo CNN in
two regimes: ``not memorising`` (the demo's 12 epochs; the network predicts the true class of
most flipped samples) and ``memorising`` (``--memorise-epochs``, 60 by default: the network fits
its flipped labels; the share fitted is printed). On each trained network:

- ``rank_label_issues``: :func:`captum_dualxda.rank_label_issues` on a DualDA fitted with the
  default ``C = 1e-3``, for every ``C`` in ``--Cs`` (the default 1e-4 refits the surrogate on
  re-extracted features; ``C = 1e-3`` reuses DualDA's own fit). Flag: ``is_issue``.
- DualDA self-influence ``a_i^{y_i} ||phi(x_i)||^2`` (the paper's score) of the same DualDA, and
  for every ``C`` from :func:`captum_dualxda.choose_c.sweep_C` (features extracted once).
- the network's own cross-entropy on its training labels
  (:func:`captum_dualxda.metrics.training_loss`); flag: the network predicts another class.
- cleanlab with ``--folds``-fold cross-fitted probabilities (the CNN retrained ``--folds`` times
  with the same recipe on the other folds, ``StratifiedKFold``): ranking by
  ``cleanlab.rank.get_label_quality_scores`` (self-confidence), flag by
  ``cleanlab.filter.find_label_issues`` (defaults). Also cleanlab on the trained network's own
  (in-sample) probabilities, which cleanlab's documentation warns against.
- a random order.

Columns: ROC AUC of the ranking against the flipped labels (:func:`captum_dualxda.metrics.mislabel_auc`),
the yes/no flag's size, precision and recall, and seconds from the trained network to the answer
(DualDA's feature extraction and fit included; cleanlab's extra trainings included). Printed, as
Markdown: medians over seeds (AUC with its min-max over seeds), except precision and recall,
which are pooled over seeds (all flagged samples that are flipped / all flagged, / all flipped).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
import warnings
from typing import Any, Dict, List, Optional

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # label_tasks, mnist_cnn, realdata
from sklearn.model_selection import StratifiedKFold

from captum_dualxda import DualDA
from captum_dualxda.choose_c import sweep_C
from captum_dualxda.demo import DEFAULT_EPOCHS, load_digits_data, train_cnn
from captum_dualxda.label_issues import LABEL_ISSUES_C, LABEL_ISSUES_FOLDS, rank_label_issues
from captum_dualxda.metrics import mislabel_auc, training_loss
from captum_dualxda.solver import ConvergenceWarning, fit_crammer_singer

try:
    import cleanlab
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
except ImportError:  # optional peer
    cleanlab = None

DUALDA_C = 1e-3
NOT_INSTALLED = "cleanlab not installed"


def flag_stats(flags: np.ndarray, flipped: np.ndarray) -> Dict[str, float]:
    """Size, hits, precision and recall of a boolean flag in dataset order (precision NaN if empty)."""
    n = int(flags.sum())
    hits = int((flags & flipped).sum())
    return {
        "flagged": n,
        "hits": hits,
        "n_flipped": int(flipped.sum()),
        "precision": hits / n if n else float("nan"),
        "recall": hits / int(flipped.sum()),
    }


def softmax_probabilities(net: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(net(x).double(), 1).numpy()


def cross_fitted_probabilities(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int, folds: int) -> np.ndarray:
    """Out-of-sample class probabilities: the CNN retrained ``folds`` times, each predicting its held-out fold."""
    probs = np.zeros((len(y), 10))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fold, (train_idx, held_idx) in enumerate(splitter.split(np.zeros(len(y)), y.numpy())):
        net = train_cnn(x[train_idx], y[train_idx], epochs=epochs, seed=seed + 1000 * (fold + 1))
        probs[held_idx] = softmax_probabilities(net, x[held_idx])
    return probs


def run_regime(seed: int, epochs: int, Cs: List[float], folds: int) -> Dict[str, Any]:
    """Every method on one trained network; returns the network's numbers and one dict per method."""
    data = load_digits_data(flip_rate=0.1, seed=seed)
    flipped = data.flipped.numpy()
    train_set = data.train_dataset
    start = time.perf_counter()
    net = train_cnn(data.x_train, data.y_train, epochs=epochs, seed=seed)
    train_seconds = time.perf_counter() - start
    with torch.no_grad():
        train_pred = net(data.x_train).argmax(1)
        test_pred = net(data.x_test).argmax(1)
    network = {
        "epochs": epochs,
        "train_seconds": train_seconds,
        "test_accuracy": float((test_pred == data.y_test).float().mean()),
        "noisy_train_accuracy": float((train_pred == data.y_train).float().mean()),
        "flipped_fitted": float((train_pred == data.y_train)[data.flipped].float().mean()),
    }
    methods: Dict[str, Dict[str, Any]] = {}

    start = time.perf_counter()
    dualda = DualDA(net, "fc", train_set, C=DUALDA_C, batch_size=256, seed=seed)
    dualda_seconds = time.perf_counter() - start

    def ranked(name: str, C: float, layers: Optional[List[str]] = None) -> None:
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            issues = rank_label_issues(dualda, C=C, layers=layers)
        call = time.perf_counter() - start
        flags = np.zeros(len(flipped), dtype=bool)
        flags[issues.indices.numpy()] = issues.is_issue.numpy()
        scores = np.empty(len(flipped), dtype=np.float32)
        scores[issues.indices.numpy()] = issues.scores.numpy()
        methods[name] = {
            "auc": mislabel_auc(scores, flipped),
            **flag_stats(flags, flipped),
            "seconds": dualda_seconds + call,
            "call_seconds": call,
            "C": C,
        }

    for C in Cs:
        ranked(f"rank_label_issues C={C:g}", C)
    # the input of the head's linear layer: the 512 convolutional features (DigitsCNN.head[1])
    ranked(f"rank_label_issues C={LABEL_ISSUES_C:g}, layers=[conv]", LABEL_ISSUES_C, ["head.1"])
    start = time.perf_counter()
    self_influence = dualda.self_influence().cpu().numpy()
    methods[f"DualDA self-influence C={DUALDA_C:g}"] = {
        "auc": mislabel_auc(self_influence, flipped),
        "seconds": dualda_seconds + time.perf_counter() - start,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sweep = sweep_C(net, "fc", train_set, Cs=Cs, flipped=data.flipped, batch_size=256, seed=seed, baselines=False)
    by_C = {
        row.C: {
            "self_influence_auc": row.auc_self_influence,
            "hinge_auc": row.auc_hinge_loss,
            "n_support": row.n_support,
        }
        for row in sweep
    }

    start = time.perf_counter()
    loss = training_loss(net, train_set).numpy()
    methods["network training loss"] = {
        "auc": mislabel_auc(loss, flipped),
        **flag_stats((train_pred != data.y_train).numpy(), flipped),
        "seconds": time.perf_counter() - start,
    }

    if cleanlab is not None:
        labels = data.y_train.numpy()
        start = time.perf_counter()
        probs = cross_fitted_probabilities(data.x_train, data.y_train, epochs, seed, folds)
        quality = get_label_quality_scores(labels, probs)
        flags = find_label_issues(labels, probs)
        methods[f"cleanlab, {folds}-fold cross-fitted"] = {
            "auc": mislabel_auc(-quality, flipped),
            **flag_stats(flags, flipped),
            "seconds": time.perf_counter() - start,
        }
        start = time.perf_counter()
        probs = softmax_probabilities(net, data.x_train)
        quality = get_label_quality_scores(labels, probs)
        flags = find_label_issues(labels, probs)
        methods["cleanlab, in-sample probabilities"] = {
            "auc": mislabel_auc(-quality, flipped),
            **flag_stats(flags, flipped),
            "seconds": time.perf_counter() - start,
        }
    random_scores = np.random.default_rng(seed).random(len(flipped))
    methods["random order"] = {"auc": mislabel_auc(random_scores, flipped)}
    return {"seed": seed, "network": network, "dualda_seconds": dualda_seconds, "methods": methods, "by_C": by_C}


def _median(values: List[Optional[float]]) -> float:
    finite = [v for v in values if v is not None and not np.isnan(v)]
    return float(np.median(finite)) if finite else float("nan")


def _fmt(value: float, spec: str) -> str:
    return "–" if np.isnan(value) else format(value, spec)


def flag_cells(rows: List[Dict[str, Any]]) -> List[str]:
    """Median flagged; precision and recall pooled over seeds (all hits / all flagged / all flipped)."""
    if "flagged" not in rows[0]:
        return ["–", "–", "–"]
    flagged, hits = sum(row["flagged"] for row in rows), sum(row["hits"] for row in rows)
    return [
        f"{_median([row['flagged'] for row in rows]):.0f}",
        _fmt(hits / flagged if flagged else float("nan"), ".3f"),
        f"{hits / sum(row['n_flipped'] for row in rows):.3f}",
    ]


def method_table(runs: List[Dict[str, Any]]) -> str:
    lines = ["| method | ROC AUC | flagged | precision | recall | time [s] |", "|---|---:|---:|---:|---:|---:|"]
    names = list(dict.fromkeys(name for run in runs for name in run["methods"]))  # every run's, in order
    if cleanlab is None:
        names.append(NOT_INSTALLED)
    for name in names:
        if name == NOT_INSTALLED:
            lines.append(f"| cleanlab | {NOT_INSTALLED} | | | | |")
            continue
        rows = [run["methods"][name] for run in runs if name in run["methods"]]
        aucs = [row["auc"] for row in rows]
        auc = f"{np.median(aucs):.3f}" + (f" ({min(aucs):.3f}-{max(aucs):.3f})" if len(aucs) > 1 else "")
        cells = flag_cells(rows) + [_fmt(_median([row.get("seconds") for row in rows]), ".2f")]
        label = name + (" (default)" if name == f"rank_label_issues C={LABEL_ISSUES_C:g}" else "")
        if len(rows) < len(runs):
            label += f" ({len(rows)} of {len(runs)} seeds)"
        lines.append(f"| {label} | {auc} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def c_table(runs: List[Dict[str, Any]], Cs: List[float]) -> str:
    lines = [
        "| C | support vectors | AUC hinge loss | flagged | precision | recall | AUC self-influence |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for C in Cs:
        ranked = [run["methods"][f"rank_label_issues C={C:g}"] for run in runs]
        swept = [run["by_C"][C] for run in runs]
        lines.append(
            f"| {C:g} | {_median([s['n_support'] for s in swept]):.0f} | {_median([r['auc'] for r in ranked]):.3f} | "
            + " | ".join(flag_cells(ranked))
            + f" | {_median([s['self_influence_auc'] for s in swept]):.3f} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ real data: MNIST
MNIST_TASKS = (
    ("uniform", 0.1, "not memorised"),
    ("pairs", 0.2, "not memorised"),
    ("uniform", 0.2, "not memorised"),
    ("pairs", 0.1, "not memorised"),
    ("uniform", 0.1, "memorised"),
    ("pairs", 0.2, "memorised"),
    ("uniform", 0.2, "memorised"),
    ("pairs", 0.1, "memorised"),
)
MNIST_LAYERS = (
    ("[conv]", ["features.7"], None, True),
    ("[conv], C=1e-3", ["features.7"], 1e-3, False),
    ("[conv, fc1, fc2]", ["features.7", "features.9", "classifier"], None, False),
    ("[conv, fc1, fc2], C=1e-3", ["features.7", "features.9", "classifier"], 1e-3, True),
)
"""``rank_label_issues(layers=..., C=...)`` rows on ``mnist_cnn.MNISTCNN`` (name, layers, C or the default,
whether a ``flag="disagree"`` row follows): ``features.7`` is the first fully connected layer (its input:
the 2,420 convolutional features), ``features.9`` the second (500 inputs), ``classifier`` the final layer
(``phi``, 100)."""


def _in_order(issues: Any, field: torch.Tensor) -> np.ndarray:
    out = np.empty(field.shape[0], dtype=field.numpy().dtype)
    out[issues.indices.numpy()] = field.numpy()
    return out


def run_mnist_task(
    kind: str, rate: float, regime: str, seed: int, clean: bool, train_missing: bool = True
) -> Dict[str, Any]:
    """Every method on one MNIST task (``label_tasks.py``); networks and cleanlab's probabilities from its cache
    (cleanlab's trained first unless ``train_missing`` is False: then its rows are left out)."""
    import label_tasks as lt
    from torch.utils.data import TensorDataset

    task = lt.make_task(kind, rate, regime, seed)
    flipped = task.flipped
    labels = task.y_noisy.numpy()
    net, train_seconds = lt.trained_network(task)
    network = {"train_seconds": train_seconds, **lt.network_stats(task, net)}
    train_set = TensorDataset(task.x_train, task.y_noisy)
    methods: Dict[str, Dict[str, Any]] = {}
    start = time.perf_counter()
    dualda = DualDA(net, "classifier", train_set, C=DUALDA_C, batch_size=256, seed=seed)
    dualda_seconds = time.perf_counter() - start

    def ours(
        name: str,
        folds: int,
        flag: str = "count",
        layers: Optional[List[str]] = None,
        C: Optional[float] = None,
        old_flag: bool = False,
    ) -> np.ndarray:
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            issues = rank_label_issues(dualda, folds=folds, flag=flag, layers=layers, C=C)
        call = time.perf_counter() - start
        scores = _in_order(issues, issues.scores)
        flags = scores > 0 if old_flag else _in_order(issues, issues.is_issue)
        ranked = np.maximum(1 + scores, 0) if old_flag else scores  # the old rule ranked by the hinge loss
        methods[name] = {
            "auc": mislabel_auc(ranked, flipped),
            **flag_stats(flags, flipped),
            "seconds": dualda_seconds + call,
            "call_seconds": call,
        }
        rankings[name] = scores
        return flags

    rankings: Dict[str, np.ndarray] = {}

    ours_flags = ours(f"rank_label_issues (new: {LABEL_ISSUES_FOLDS}-fold, count flag)", LABEL_ISSUES_FOLDS)
    ours(f"rank_label_issues, {LABEL_ISSUES_FOLDS}-fold, flag='disagree'", LABEL_ISSUES_FOLDS, flag="disagree")
    ours("rank_label_issues, folds=1 (in-sample), count flag", 1)
    ours("rank_label_issues, old rule (in-sample hinge, flag hinge > 1)", 1, old_flag=True)
    layer_flags = {}
    for name, layers, C, disagree in MNIST_LAYERS:
        layer_flags[name] = ours(f"rank_label_issues, layers={name}", LABEL_ISSUES_FOLDS, layers=layers, C=C)
        if disagree:
            ours(f"rank_label_issues, layers={name}, flag='disagree'", LABEL_ISSUES_FOLDS, "disagree", layers, C)
    start = time.perf_counter()
    self_influence = dualda.self_influence().cpu().numpy()
    methods[f"DualDA self-influence C={DUALDA_C:g}"] = {
        "auc": mislabel_auc(self_influence, flipped),
        "seconds": dualda_seconds + time.perf_counter() - start,
    }
    start = time.perf_counter()
    loss = training_loss(net, train_set).numpy()
    methods["network training loss (flag: predicts another class)"] = {
        "auc": mislabel_auc(loss, flipped),
        **flag_stats(lt.logits(net, task.x_train).argmax(1).numpy() != labels, flipped),
        "seconds": time.perf_counter() - start,
    }
    cleanlab_flags = None
    if cleanlab is not None and (train_missing or os.path.exists(lt._path(task, f"cv{lt.FOLDS}"))):
        cv = lt.cross_fitted(task)
        start = time.perf_counter()
        quality = get_label_quality_scores(labels, cv["probs"])
        cleanlab_flags = find_label_issues(labels, cv["probs"])
        methods[f"cleanlab, {lt.FOLDS}-fold cross-fitted"] = {
            "auc": mislabel_auc(-quality, flipped),
            **flag_stats(cleanlab_flags, flipped),
            "seconds": cv["seconds"] + time.perf_counter() - start,
        }
        # our rankings at cleanlab's operating point: the top N, N the size of cleanlab's flag
        for name, label in (
            (f"rank_label_issues (new: {LABEL_ISSUES_FOLDS}-fold, count flag)", "rank_label_issues (default)"),
            ("rank_label_issues, layers=[conv]", "rank_label_issues, layers=[conv]"),
        ):
            top = np.zeros(len(flipped), dtype=bool)
            top[np.argsort(-rankings[name], kind="stable")[: int(cleanlab_flags.sum())]] = True
            methods[f"{label}, top N at cleanlab's flag size"] = {
                "auc": methods[name]["auc"],
                **flag_stats(top, flipped),
                "seconds": methods[name]["seconds"],
            }
        start = time.perf_counter()
        probs = torch.softmax(lt.logits(net, task.x_train).double(), 1).numpy()
        methods["cleanlab, in-sample probabilities"] = {
            "auc": mislabel_auc(-get_label_quality_scores(labels, probs), flipped),
            **flag_stats(find_label_issues(labels, probs), flipped),
            "seconds": time.perf_counter() - start,
        }
    methods["random order"] = {"auc": mislabel_auc(np.random.default_rng(seed).random(len(flipped)), flipped)}
    cleaning: Dict[str, Any] = {}
    if clean:
        for tag, keep, y in (
            ("noisy labels (all samples)", None, None),
            ("true labels (all samples)", None, task.y_true),
            ("rank_label_issues' flagged removed", ~ours_flags, None),
            ("rank_label_issues(layers=[conv])' flagged removed", ~layer_flags["[conv]"], None),
            ("cleanlab's flagged removed", None if cleanlab_flags is None else ~cleanlab_flags, None),
        ):
            if tag.startswith("cleanlab") and cleanlab_flags is None:
                continue
            cache_tag = {"noisy labels (all samples)": "net", "true labels (all samples)": "clean"}.get(tag)
            if cache_tag is None:
                digest = hashlib.sha256(np.packbits(keep).tobytes()).hexdigest()[:10]
                cache_tag = f"keep-{digest}"
            cleaned, seconds = lt.trained_network(task, keep=keep, tag=cache_tag, labels=y)
            stats = lt.network_stats(task, cleaned)
            cleaning[tag] = {
                "n_train": int(len(labels) if keep is None else keep.sum()),
                "flipped_left": int(flipped.sum() if keep is None else (flipped & keep).sum()) if y is None else 0,
                "test_accuracy": stats["test_accuracy"],
                "train_seconds": seconds,
            }
    return {
        "task": task.name,
        "seed": seed,
        "network": network,
        "dualda_seconds": dualda_seconds,
        "methods": methods,
        "cleaning": cleaning,
    }


def mnist_main(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    tasks = [MNIST_TASKS[int(i)] for i in args.tasks.split(",")]
    fit_crammer_singer(torch.rand(12, 3), torch.arange(12) % 3, C=1.0)  # numba compiles (or loads) once, untimed
    load_before = os.getloadavg()
    start = time.perf_counter()
    results = []
    for kind, rate, regime in tasks:
        clean = args.clean and (kind, rate) == ("uniform", 0.1)
        runs = [
            run_mnist_task(kind, rate, regime, seed, clean and seed == seeds[0], not args.cached_cv) for seed in seeds
        ]
        results.append(runs)
        net = runs[0]["network"]
        print(
            f"\n#### {runs[0]['task']} (seeds {seeds})\n\nNetwork: test accuracy {net['test_accuracy']:.3f}, "
            f"accuracy on its noisy training labels {net['noisy_train_accuracy']:.3f}, flipped labels fitted "
            f"{net['flipped_fitted']:.1%}, trained in {net['train_seconds']:.0f} s; DualDA fit (C={DUALDA_C:g}) "
            f"{runs[0]['dualda_seconds']:.1f} s.\n",
            flush=True,
        )
        print(method_table(runs), flush=True)
        if runs[0]["cleaning"]:
            print("\nCleaning loop (the CNN retrained with the same recipe):\n")
            print("| training set | samples | flipped labels left | test accuracy |\n|---|---:|---:|---:|")
            for tag, row in runs[0]["cleaning"].items():
                print(f"| {tag} | {row['n_train']} | {row['flipped_left']} | {row['test_accuracy']:.4f} |")
    load_after = os.getloadavg()
    print(
        f"\n{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, torch {torch.__version__} (1 thread), "
        f"cleanlab {cleanlab.__version__ if cleanlab is not None else 'not installed'}, "
        f"{(time.perf_counter() - start) / 60:.1f} min; "
        f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after (1-min), {load_after[2]:.1f} (15-min)"
    )
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(
                {"settings": vars(args), "load": [load_before, load_after], "results": results},
                handle,
                indent=1,
                default=float,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--Cs", default="1e-5,1e-4,1e-3,1e-2,1e-1")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="epochs of the not-memorising network")
    parser.add_argument("--memorise-epochs", type=int, default=60, help="epochs of the memorising network")
    parser.add_argument("--folds", type=int, default=5, help="cleanlab's cross-fitting folds (= extra trainings)")
    parser.add_argument("--out", default=None, help="write every number as JSON")
    parser.add_argument("--data", default="digits", choices=["digits", "mnist"])
    parser.add_argument("--tasks", default="0,1,2,3,4,5,6,7", help="MNIST: which of MNIST_TASKS (indices)")
    parser.add_argument("--clean", action="store_true", help="MNIST: the cleaning loop on the first task")
    parser.add_argument("--cached-cv", action="store_true", help="MNIST: cleanlab only where its trainings are cached")
    args = parser.parse_args()
    if args.data == "mnist":
        return mnist_main(args)
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    Cs = sorted(float(c) for c in args.Cs.split(","))
    fit_crammer_singer(torch.rand(12, 3), torch.arange(12) % 3, C=1.0)  # numba compiles (or loads) once, untimed
    load_before = os.getloadavg()
    start = time.perf_counter()
    regimes = {"not memorising": args.epochs, "memorising": args.memorise_epochs}
    results: Dict[str, List[Dict[str, Any]]] = {name: [] for name in regimes}
    for seed in seeds:
        for name, epochs in regimes.items():
            results[name].append(run_regime(seed, epochs, Cs, args.folds))
    total = time.perf_counter() - start
    load_after = os.getloadavg()

    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"(1 thread), cleanlab {cleanlab.__version__ if cleanlab is not None else 'not installed'}, seeds {seeds}, "
        f"{total / 60:.1f} min in all; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after "
        f"(1-min), {load_after[2]:.1f} (15-min)"
    )
    for name, runs in results.items():
        nets = [run["network"] for run in runs]
        print(f"\n#### {name}: {nets[0]['epochs']} epochs\n")
        print(
            f"Network (median over seeds): test accuracy {_median([n['test_accuracy'] for n in nets]):.3f}, "
            f"accuracy on its noisy training labels {_median([n['noisy_train_accuracy'] for n in nets]):.3f}, "
            f"flipped labels fitted {_median([n['flipped_fitted'] for n in nets]):.1%} "
            f"(min {min(n['flipped_fitted'] for n in nets):.1%}), "
            f"training {_median([n['train_seconds'] for n in nets]):.1f} s; "
            f"DualDA fit (C={DUALDA_C:g}, features + solver) "
            f"{_median([run['dualda_seconds'] for run in runs]):.2f} s.\n"
        )
        print(method_table(runs))
        print("\nBy C (rank_label_issues' hinge loss and flag; DualDA self-influence from sweep_C):\n")
        print(c_table(runs, Cs))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(
                {
                    "settings": vars(args),
                    "load_before": load_before,
                    "load_after": load_after,
                    "seconds": total,
                    "results": results,
                },
                handle,
                indent=1,
                default=float,
            )


if __name__ == "__main__":
    main()
