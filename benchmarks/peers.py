"""DualDA next to Captum's influence methods: speed, memory and attribution quality, side by side.

Run from the repository root::

    python benchmarks/peers.py               # the full benchmark (16 minutes on 2 cores)
    python benchmarks/peers.py --quick       # smoke run on small data (about 2 minutes)
    python benchmarks/peers.py --settings digits --budget 60 --out results.json

Settings
--------
* ``digits``: scikit-learn's 8x8 digits (1,500 training / 297 test images), 10 % of the training
  labels flipped to another class, a small CNN (two conv layers, a 64-d feature layer, ``fc``)
  trained 40 epochs on the noisy labels. Checkpoints after epochs 14, 27 and 40.
* ``large``: 20,000 generated 32x32 grey images in 10 classes (class templates of random
  low-frequency patterns, random shifts, contrast and pixel noise), 10 % flipped labels, a CNN
  with 134k parameters and a 128-d feature layer, trained 3 epochs (checkpoints after epochs 2
  and 3); 100 test images. This is where the speed and memory columns separate.

Methods (each in a FRESH Python subprocess, so its peak resident memory is its own)
-------------------------------------------------------------------------------------
* ``DualDA C=...``: :class:`captum_dualxda.DualDA` on the final checkpoint; precompute =
  feature extraction + SVM fit; self-influence in closed form.
* ``TracInCPFast``: Captum, final layer only, all checkpoints of the setting (3 / 2),
  ``CrossEntropyLoss(reduction="sum")``.
* ``TracInCP``: Captum, all parameters, the same checkpoints, sample-wise gradients per batch.
* ``Arnoldi IF``: Captum's ``ArnoldiInfluenceFunction`` (private import), all parameters, final
  checkpoint, Hessian-vector products on one batch of 300 / 500 training samples,
  ``arnoldi_dim=50``, ``projection_dim=20`` (captum's defaults are 200 and 50; fewer Arnoldi steps
  keep its precompute within the budget).
* ``Similarity``: Captum's ``SimilarityInfluence``, cosine similarity of the same 64/128-d
  features DualDA uses; it returns only the top-k, so no score matrix and no self-influence.

DualDA's subprocess loads its compiled solver from numba's disk cache before the baseline is
taken (like the imports, a one-off cost per installation, not per fit).

Columns
-------
* ``precompute [s]``: constructor (everything before the first explanation).
* ``ms / test``: ``influence((x_test, predictions))`` for the whole test set (full score matrix;
  top-5 for Similarity), divided by the number of test samples. Includes the test forward pass.
* ``self-inf. [s]``: ``self_influence()`` over the whole training set.
* ``peak RSS +MB``: growth of the subprocess' peak resident set size (``ru_maxrss``) over its
  value after imports, data and model were loaded, i.e. the method's own peak memory
  (torch allocations included).
* ``mislabel AUC``: ROC AUC of self-influence for finding the flipped training labels
  (:func:`captum_dualxda.metrics.mislabel_auc`; 0.5 = random).
* ``class det. top-5``: fraction of the top-5 proponents whose (training) label is the
  network's predicted class (:func:`captum_dualxda.metrics.class_detection`).
* ``zero scores`` / ``Hoyer``: mean fraction of exactly-zero scores per test sample and mean
  Hoyer sparsity (:func:`~captum_dualxda.metrics.zero_fraction`, :func:`~captum_dualxda.metrics.hoyer_sparsity`).

Baseline rows: ``random order`` (AUC 0.5; class detection = the exact expectation, the class
frequency) and ``network loss`` (the network's cross-entropy on its own, possibly flipped,
training label, as the mislabel score). A second table compares DualDA's self-influence with its
surrogate hinge loss as the mislabel score.

A phase that does not finish within ``--budget`` seconds (per method, wall clock) is reported
as ``> budget``; what finished before it is kept. Other processes on the machine share the
CPU: compare ratios within one run, not absolute times across runs.
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
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

DUALDA_CS = (1e-4, 1e-3, 1e-2, 1e-1)
PEERS = ("TracInCPFast", "TracInCP", "Arnoldi IF", "Similarity")


# ---------------------------------------------------------------------------- models and data
class DigitsNet(nn.Module):
    """8x8 grey digits -> 10 classes; ``fc`` is the final linear layer (64-d input)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.flat = nn.Flatten()
        self.lin = nn.Linear(32 * 4 * 4, 64)
        self.relu1, self.relu2, self.relu3 = nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu2(self.conv2(self.relu1(self.conv1(x)))))
        return self.fc(self.relu3(self.lin(self.flat(x))))


class ImageNet32(nn.Module):
    """32x32 grey images -> 10 classes; ``fc`` is the final linear layer (128-d input)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 5, stride=2, padding=2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.flat = nn.Flatten()
        self.lin = nn.Linear(16 * 8 * 8, 128)
        self.relu1, self.relu2, self.relu3 = nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.fc = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu2(self.conv2(self.relu1(self.conv1(x)))))
        return self.fc(self.relu3(self.lin(self.flat(x))))


SETTINGS: Dict[str, Dict[str, Any]] = {
    "digits": dict(
        net=DigitsNet,
        feature_layer="relu3",
        epochs=40,
        checkpoint_epochs=(14, 27, 40),
        lr=1e-2,
        train_batch=64,
        batch_size=100,
        n_test=297,
        tracin_batch=100,
        hessian_samples=300,
        arnoldi_dim=50,
        projection_dim=20,
    ),
    "large": dict(
        net=ImageNet32,
        feature_layer="relu3",
        n_train=20_000,
        n_test=100,
        epochs=3,
        checkpoint_epochs=(2, 3),
        lr=3e-3,
        train_batch=128,
        batch_size=500,
        tracin_batch=500,
        hessian_samples=500,
        arnoldi_dim=50,
        projection_dim=20,
    ),
}
QUICK = {
    "digits": dict(
        n_train=300,
        epochs=4,
        checkpoint_epochs=(2, 4),
        n_test=50,
        hessian_samples=100,
        arnoldi_dim=10,
        projection_dim=5,
    ),
    "large": dict(
        n_train=1_000,
        n_test=20,
        epochs=1,
        checkpoint_epochs=(1,),
        hessian_samples=100,
        arnoldi_dim=10,
        projection_dim=5,
    ),
}


def flip_labels(y: torch.Tensor, fraction: float, n_classes: int, seed: int):
    """Flip ``fraction`` of the labels to a different class chosen uniformly at random."""
    g = torch.Generator().manual_seed(seed)
    n = y.shape[0]
    idx = torch.randperm(n, generator=g)[: int(round(fraction * n))]
    noisy = y.clone()
    noisy[idx] = (y[idx] + torch.randint(1, n_classes, (idx.numel(),), generator=g)) % n_classes
    flipped = torch.zeros(n, dtype=torch.bool)
    flipped[idx] = True
    return noisy, flipped


def digits_data(n_train: Optional[int], n_test: int):
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    n_train = n_train or 1500
    return x[:n_train], y[:n_train], x[1500 : 1500 + n_test], y[1500 : 1500 + n_test]


def generated_images(n: int, seed: int, size: int = 32, n_classes: int = 10):
    """Class-template images: random low-frequency patterns, shifted, scaled and noised."""
    g = torch.Generator().manual_seed(1234)  # the same templates for train and test
    templates = nn.functional.interpolate(
        torch.randn(n_classes, 1, 6, 6, generator=g), size=(size, size), mode="bicubic", align_corners=False
    )
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, n_classes, (n,), generator=g)
    x = torch.empty(n, 1, size, size)
    shifts = torch.randint(-5, 6, (n, 2), generator=g)
    contrast = 0.6 + 0.8 * torch.rand(n, generator=g)
    for c in range(n_classes):
        for sx in range(-5, 6):
            for sy in range(-5, 6):
                sel = ((y == c) & (shifts[:, 0] == sx) & (shifts[:, 1] == sy)).nonzero().flatten()
                if sel.numel():
                    x[sel] = torch.roll(templates[c], shifts=(sx, sy), dims=(1, 2))
    x = x * contrast[:, None, None, None] + 0.9 * torch.randn(x.shape, generator=g)
    return x, y


def train(net: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: Dict[str, Any], workdir: str) -> List[str]:
    """Adam on the (noisy) labels; returns the checkpoint paths (plain state dicts)."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"])
    g = torch.Generator().manual_seed(1)
    paths = []
    net.train()
    for epoch in range(1, cfg["epochs"] + 1):
        for idx in torch.randperm(len(y), generator=g).split(cfg["train_batch"]):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
        if epoch in cfg["checkpoint_epochs"]:
            path = os.path.join(workdir, f"checkpoint-{epoch}.pt")
            torch.save(net.state_dict(), path)
            paths.append(path)
    net.eval()
    return paths


def prepare(setting: str, quick: bool, workdir: str) -> Dict[str, Any]:
    """Data, noisy labels, trained network and checkpoints of one setting, saved in ``workdir``."""
    cfg = dict(SETTINGS[setting])
    if quick:
        cfg.update(QUICK[setting])
    start = time.perf_counter()
    if setting == "digits":
        x, y, xt, yt = digits_data(cfg.get("n_train"), cfg["n_test"])
    else:
        x, y = generated_images(cfg["n_train"], seed=0)
        xt, yt = generated_images(cfg["n_test"], seed=1)
    noisy, flipped = flip_labels(y, 0.10, 10, seed=2)
    net = cfg["net"]()
    checkpoints = train(net, x, noisy, cfg, workdir)
    with torch.no_grad():
        train_acc_noisy = float((net(x).argmax(1) == noisy).float().mean())
        train_acc_flipped = float((net(x[flipped]).argmax(1) == noisy[flipped]).float().mean())
        test_acc = float((net(xt).argmax(1) == yt).float().mean())
    torch.save(
        {"x": x, "y": noisy, "clean": y, "flipped": flipped, "xt": xt, "yt": yt}, os.path.join(workdir, "data.pt")
    )
    info = dict(
        setting=setting,
        n_train=int(len(y)),
        n_test=int(len(yt)),
        feature_dim=int(net.fc.in_features),
        n_params=int(sum(p.numel() for p in net.parameters())),
        n_flipped=int(flipped.sum()),
        train_acc_noisy_labels=train_acc_noisy,
        fits_flipped_labels=train_acc_flipped,
        test_acc=test_acc,
        train_time=time.perf_counter() - start,
        checkpoints=checkpoints,
        quick=quick,
        **{
            k: cfg[k]
            for k in (
                "batch_size",
                "tracin_batch",
                "hessian_samples",
                "feature_layer",
                "epochs",
                "arnoldi_dim",
                "projection_dim",
            )
        },
    )
    with open(os.path.join(workdir, "info.json"), "w") as f:
        json.dump(info, f)
    return info


# ---------------------------------------------------------------------------- one method, in a subprocess
def _status_mb(field: str) -> Optional[float]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return None


def _reset_peak() -> float:
    """Reset the peak-RSS mark to the current RSS (Linux >= 4.0); return the current RSS in MB."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    current = _status_mb("VmRSS")
    return current if current is not None else _rss_mb()


def _rss_mb() -> float:
    """Peak resident set size of this process in MB (VmHWM, else ru_maxrss)."""
    peak = _status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(setting: str, method: str, workdir: str, result_path: str) -> None:
    """Run one method; write the result JSON after every phase (a killed run keeps what it had)."""
    from captum_dualxda.metrics import class_detection, hoyer_sparsity, mislabel_auc, zero_fraction

    with open(os.path.join(workdir, "info.json")) as f:
        info = json.load(f)
    data = torch.load(os.path.join(workdir, "data.pt"))
    x, y, flipped, xt = data["x"], data["y"], data["flipped"], data["xt"]
    net = SETTINGS[setting]["net"]()
    net.load_state_dict(torch.load(info["checkpoints"][-1]))
    net.eval()
    train_set = TensorDataset(x, y)
    with torch.no_grad():
        pred = net(xt).argmax(1)
    result: Dict[str, Any] = {"method": method, "setting": setting, "n_test": int(len(xt))}

    def save() -> None:
        result["peak_rss_mb"] = _rss_mb()
        result["rss_growth_mb"] = result["peak_rss_mb"] - result["baseline_rss_mb"]
        tmp = result_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f)
        os.replace(tmp, result_path)

    loss_sum = nn.CrossEntropyLoss(reduction="sum")
    tracin_batch = info["tracin_batch"]
    import captum  # noqa: F401  (import cost outside the measured phases)

    from captum_dualxda import DualDA

    if method.startswith("DualDA"):
        warm_up_jit()  # load the compiled solver from numba's disk cache outside the timed phases
    result["baseline_rss_mb"] = _reset_peak()
    save()

    # -- precompute
    start = time.perf_counter()
    if method.startswith("DualDA"):
        C = float(method.split("=")[1])
        explainer = DualDA(net, "fc", train_set, C=C, batch_size=info["batch_size"])
        result.update(
            n_support=int(explainer.support_indices.numel()),
            sparsity=explainer.sparsity,
            fit_time=explainer.fit_stats["time"],
            extraction_time=explainer.fit_stats["extraction_time"],
        )
    elif method == "TracInCPFast":
        from captum.influence import TracInCPFast

        explainer = TracInCPFast(net, net.fc, train_set, info["checkpoints"], loss_fn=loss_sum, batch_size=tracin_batch)
    elif method == "TracInCP":
        from captum.influence import TracInCP

        explainer = TracInCP(
            net,
            train_set,
            info["checkpoints"],
            loss_fn=loss_sum,
            batch_size=tracin_batch,
            sample_wise_grads_per_batch=True,
        )
    elif method == "Arnoldi IF":
        try:
            from captum.influence._core.arnoldi_influence_function import ArnoldiInfluenceFunction
        except ImportError:  # older captum layout
            from captum.influence._core.influence_function import ArnoldiInfluenceFunction  # type: ignore

        g = torch.Generator().manual_seed(0)
        hess = torch.randperm(len(y), generator=g)[: info["hessian_samples"]]
        # the Hessian-vector products run over ONE batch holding all `hessian_samples`
        hessian = torch.utils.data.DataLoader(TensorDataset(x[hess], y[hess]), batch_size=len(hess))
        explainer = ArnoldiInfluenceFunction(
            net,
            train_set,
            info["checkpoints"][-1],
            loss_fn=loss_sum,
            batch_size=tracin_batch,
            hessian_dataset=hessian,
            sample_wise_grads_per_batch=True,
            projection_dim=info["projection_dim"],
            arnoldi_dim=info["arnoldi_dim"],
            seed=0,
        )
    elif method == "Similarity":
        from captum.influence import SimilarityInfluence

        # captum 0.9 fails with a single layer ('list' object has no attribute 'view'), so the
        # 10-d logits layer rides along; only the feature layer's result is used.
        explainer = SimilarityInfluence(
            net,
            [info["feature_layer"], "fc"],
            train_set,
            os.path.join(workdir, "similarity-av"),
            model_id=f"sim-{os.getpid()}",
            batch_size=tracin_batch,
        )
    else:
        raise ValueError(method)
    result["precompute_s"] = time.perf_counter() - start
    save()

    # -- explain the test set
    start = time.perf_counter()
    if method == "Similarity":
        out = explainer.influence(xt, top_k=5)
        top = out[info["feature_layer"]][0]
        result["influence_s"] = time.perf_counter() - start
        result["class_detection"] = class_detection_top(top, y, pred)
    else:
        scores = explainer.influence((xt, pred))
        result["influence_s"] = time.perf_counter() - start
        result["class_detection"] = class_detection(scores, y, pred, k=5)
        result["zero_fraction"] = float(zero_fraction(scores).mean())
        result["hoyer"] = float(hoyer_sparsity(scores).mean())
        del scores
    result["ms_per_test"] = 1000.0 * result["influence_s"] / len(xt)
    save()

    # -- self-influence (mislabel detection)
    if method != "Similarity":
        start = time.perf_counter()
        self_inf = explainer.self_influence()
        result["self_influence_s"] = time.perf_counter() - start
        result["mislabel_auc"] = mislabel_auc(self_inf, flipped)
        if method.startswith("DualDA"):
            result["mislabel_auc_hinge"] = mislabel_auc(explainer.train_hinge_loss, flipped)
        save()
    result["done"] = True
    save()


def class_detection_top(indices: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor) -> float:
    from captum_dualxda.metrics import class_detection_from_indices

    return float(class_detection_from_indices(indices, labels, classes))


def run_method(setting: str, method: str, workdir: str, budget: float, setup_limit: float = 300.0) -> Dict[str, Any]:
    """Run ``worker`` in a fresh interpreter; return what it wrote.

    The ``budget`` (wall-clock seconds) starts when the worker has finished its imports and
    loaded data and model (it then writes its first result file), so interpreter start-up under
    a loaded machine is not charged to the method. ``setup_limit`` caps that start-up.
    """
    path = os.path.join(workdir, f"result-{method.replace(' ', '_').replace('=', '')}.json")
    if os.path.exists(path):
        os.remove(path)
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        method,
        "--setting",
        setting,
        "--workdir",
        workdir,
        "--result",
        path,
    ]
    start = time.perf_counter()
    ready = None
    timed_out = False
    with tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, text=True)
        while proc.poll() is None:
            time.sleep(0.1)
            now = time.perf_counter()
            if ready is None and os.path.exists(path):
                ready = now
            if (ready is not None and now - ready > budget) or (ready is None and now - start > setup_limit):
                proc.kill()  # only this child: the worker starts no processes of its own
                proc.wait()
                timed_out = True
                break
        err.seek(0)
        lines = err.read().strip().splitlines()
    error = lines[-1] if proc.returncode not in (0, None) and not timed_out and lines else None
    result: Dict[str, Any] = {"method": method, "setting": setting}
    if os.path.exists(path):
        with open(path) as f:
            result = json.load(f)
    result["wall_s"] = time.perf_counter() - start
    result["measured_s"] = time.perf_counter() - ready if ready is not None else None
    result["timed_out"] = timed_out
    if error:
        result["error"] = error
    return result


# ---------------------------------------------------------------------------- tables
def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.{digits}f}"


def _phase(result: Dict[str, Any], key: str, digits: int = 2) -> str:
    """The value of a timed phase, or why it is missing (phases after a timeout never ran)."""
    if key in result:
        return _fmt(result[key], digits)
    if result.get("timed_out"):
        return "> budget"
    if result.get("error"):
        return "failed"
    return "–"


def quality_table(results: List[Dict[str, Any]], info: Dict[str, Any], baselines: Dict[str, Any], budget: float) -> str:
    ref = next((r for r in results if r["method"] == "DualDA C=0.001" and "ms_per_test" in r), None)
    head = (
        "| method | precompute [s] | ms / test | × DualDA 1e-3 | self-inf. [s] | peak RSS +MB | "
        "mislabel AUC | class det. top-5 | zero scores | Hoyer |"
    )
    lines = [head, "|---|" + "---:|" * 9]
    for r in results:
        inf_done = "ms_per_test" in r
        ratio = "–"
        if ref is not None and inf_done:
            ratio = f"{r['ms_per_test'] / ref['ms_per_test']:,.1f}" if r is not ref else "1"
        elif not inf_done and r.get("timed_out"):
            ratio = f"> {1000 * budget / r.get('n_test', 1) / ref['ms_per_test']:,.0f}" if ref else "–"
        self_inf = _phase(r, "self_influence_s") if r["method"] != "Similarity" else "n/a"
        auc = (
            _fmt(r.get("mislabel_auc"))
            if "mislabel_auc" in r
            else ("n/a" if r["method"] == "Similarity" else self_inf if self_inf in ("> budget", "failed") else "–")
        )
        name = r["method"]
        if "n_support" in r:
            name += f" ({r['n_support']:,} SV)"
        rss = _fmt(r.get("rss_growth_mb"), 0) if "rss_growth_mb" in r else "–"
        if r.get("timed_out"):
            rss = f"≥ {rss}" if rss != "–" else rss
        lines.append(
            f"| {name} | {_phase(r, 'precompute_s')} | {_phase(r, 'ms_per_test')} | {ratio} "
            f"| {self_inf} | {rss} | {auc} | {_fmt(r.get('class_detection'))} "
            f"| {_fmt(r.get('zero_fraction')) if r['method'] != 'Similarity' else 'n/a'} "
            f"| {_fmt(r.get('hoyer')) if r['method'] != 'Similarity' else 'n/a'} |"
        )
    lines.append(
        f"| random order (expected) | – | – | – | – | – | 0.500 | {_fmt(baselines['random_class_detection'])} | – | – |"
    )
    lines.append(f"| network loss (one forward pass) | – | – | – | – | – | {_fmt(baselines['loss_auc'])} | – | – | – |")
    return "\n".join(lines)


def mislabel_table(results: List[Dict[str, Any]], baselines: Dict[str, Any]) -> str:
    lines = ["| score | " + " | ".join(r["method"] for r in results if r["method"].startswith("DualDA")) + " |"]
    dual = [r for r in results if r["method"].startswith("DualDA")]
    lines.append("|---|" + "---:|" * len(dual))
    lines.append("| self-influence (paper) | " + " | ".join(_fmt(r.get("mislabel_auc")) for r in dual) + " |")
    lines.append("| surrogate hinge loss | " + " | ".join(_fmt(r.get("mislabel_auc_hinge")) for r in dual) + " |")
    lines.append("| network loss (baseline) | " + " | ".join(_fmt(baselines["loss_auc"]) for _ in dual) + " |")
    return "\n".join(lines)


def baselines_for(workdir: str, setting: str) -> Dict[str, Any]:
    from captum_dualxda.metrics import mislabel_auc, random_class_detection, training_loss

    with open(os.path.join(workdir, "info.json")) as f:
        info = json.load(f)
    data = torch.load(os.path.join(workdir, "data.pt"))
    net = SETTINGS[setting]["net"]()
    net.load_state_dict(torch.load(info["checkpoints"][-1]))
    net.eval()
    with torch.no_grad():
        pred = net(data["xt"]).argmax(1)
    loss = training_loss(net, TensorDataset(data["x"], data["y"]), batch_size=1000)
    return {
        "loss_auc": mislabel_auc(loss, data["flipped"]),
        "random_class_detection": random_class_detection(data["y"], pred),
    }


def warm_up_jit() -> None:
    """Compile (and cache on disk) the numba solver once, so no subprocess pays the JIT."""
    from captum_dualxda import fit_crammer_singer

    rng = np.random.default_rng(0)
    fit_crammer_singer(
        torch.tensor(rng.random((50, 4)), dtype=torch.float32), torch.tensor(rng.integers(0, 3, 50)), C=0.1
    )


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small data, smoke run (1-2 minutes)")
    parser.add_argument("--settings", default="digits,large")
    parser.add_argument("--methods", default=None, help="comma-separated subset, e.g. 'DualDA C=0.001,TracInCPFast'")
    parser.add_argument(
        "--budget", type=float, default=None, help="seconds per method (default 120 digits / 150 large; quick 60)"
    )
    parser.add_argument("--out", default=None, help="write all results as JSON here")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--setting", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.setting, args.worker, args.workdir, args.result)
        return 0

    t0 = time.perf_counter()
    warm_up_jit()
    methods = [f"DualDA C={c:g}" for c in DUALDA_CS] + list(PEERS)
    if args.quick:
        methods = ["DualDA C=0.001"] + list(PEERS)
    if args.methods:
        methods = [m.strip() for m in args.methods.split(",")]
    root = args.workdir or tempfile.mkdtemp(prefix="dualda-peers-")
    report: Dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "quick": args.quick,
        "settings": {},
    }
    import captum

    report["captum"] = captum.__version__
    out_lines = [
        f"DualDA vs Captum influence methods — {report['date']}, {report['machine']}, "
        f"torch {report['torch']}, captum {report['captum']}{' (QUICK run)' if args.quick else ''}",
        "",
    ]
    for setting in [s.strip() for s in args.settings.split(",") if s.strip()]:
        workdir = os.path.join(root, setting)
        os.makedirs(workdir, exist_ok=True)
        info = prepare(setting, args.quick, workdir)
        budget = args.budget or (10.0 if args.quick else (120.0 if setting == "digits" else 180.0))
        print(
            f"[{setting}] n_train={info['n_train']:,}, test acc {info['test_acc']:.3f}, "
            f"trained in {info['train_time']:.0f} s; budget {budget:.0f} s per method",
            file=sys.stderr,
            flush=True,
        )
        results = []
        for method in methods:
            r = run_method(setting, method, workdir, budget)
            status = "timed out" if r.get("timed_out") else ("failed: " + r["error"] if r.get("error") else "ok")
            print(f"[{setting}] {method}: {r['wall_s']:.0f} s, {status}", file=sys.stderr, flush=True)
            results.append(r)
        baselines = baselines_for(workdir, setting)
        report["settings"][setting] = {"info": info, "budget": budget, "results": results, "baselines": baselines}
        title = {
            "digits": (
                f"### digits: {info['n_train']:,} training images (8x8), {info['n_flipped']} flipped labels, "
                f"{info['n_test']} test images, CNN with {info['n_params']:,} parameters, "
                f"{info['feature_dim']}-d features"
            ),
            "large": (
                f"### large: {info['n_train']:,} generated 32x32 images, {info['n_flipped']:,} flipped labels, "
                f"{info['n_test']} test images, CNN with {info['n_params']:,} parameters, "
                f"{info['feature_dim']}-d features"
            ),
        }[setting]
        out_lines += [
            title,
            "",
            f"Network: test accuracy {info['test_acc']:.3f}; training accuracy on its noisy labels "
            f"{info['train_acc_noisy_labels']:.3f} (it fits {info['fits_flipped_labels']:.0%} of the flipped ones). "
            f"Budget {budget:.0f} s per method.",
            "",
            quality_table(results, info, baselines, budget),
            "",
            "Mislabel detection (ROC AUC) with DualDA's two per-sample scores:",
            "",
            mislabel_table(results, baselines),
            "",
        ]
    total = time.perf_counter() - t0
    out_lines.append(f"Total wall time: {total / 60:.1f} min.")
    report["wall_s"] = total
    text = "\n".join(out_lines)
    print(text)
    if args.out:
        report["markdown"] = text
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
