"""Issue 26: variants of DualDA against the linear datamodeling score (LDS), MNIST-MLP and digits.

Run from the repository root (the MNIST part needs the trained models of ``mnist_lds.py``, the
digits part those of ``lds.py``; both are cached and trained on first use)::

    python benchmarks/lds_variants.py --setting mlp --out benchmarks/results/lds_variants_mlp.json
    python benchmarks/lds_variants.py --setting digits --out benchmarks/results/lds_variants_digits.json
    python benchmarks/lds_variants.py --setting mlp --part extra      # whitened richer features, C=1e-4 ensembles
    python benchmarks/lds_variants.py --setting mlp --part extra2 --n-half 10   # all three layers' inputs
    python benchmarks/lds_variants.py --setting mlp --part extra3 --n-half 10   # ... at larger ratios
    python benchmarks/lds_variants.py --setting mlp --part timing     # the package's whiten= against plain DualDA
    python benchmarks/lds_variants.py --setting mlp --part layers     # the package's feature_layers= (+ whiten=)

Every variant is computed here from the features of the network (the inputs of its last layers)
and :func:`captum_dualxda.solver.fit_crammer_singer` with DualDA's settings (C = 1e-3, intercept,
tol 1e-4), so that the reference row ``plain C=1e-3`` reproduces ``DualDA(...).influence`` (checked:
the script asserts equal score matrices for the single model). Variants (issue 26's hypotheses):

1. ``whiten r=...``: fit and score in ``phi W`` with ``W = (G + lambda I)^{-1/2}``, ``G = Phi^T Phi / n``
   (uncentred), ``lambda = r tr(G) / d``; ``phi W`` is rescaled so that its mean squared norm is
   that of ``phi`` (C keeps its meaning).
2. ensembles: the mean of per-model score matrices after per-model normalisation: ``mean`` (none,
   what ``DualDA(checkpoints=...)`` does), ``std`` (each matrix divided by its overall standard
   deviation), ``rowstd`` (each row by its standard deviation), over sets of models: TRAK's
   half-data models (``half xk``, MNIST only), the full models (``seeds xk``), one run's epoch
   states (``epochs x3``).
3. richer features: the inputs of the last two or three layers concatenated, each block scaled to
   the mean squared norm of ``phi``; the per-sample gradient of TRAK's output function
   ``log(p / (1 - p))`` with respect to the last layer(s) (``grad``), with the SVM on top.
4. output function: ``class`` (DualDA: ``a_i^y phi_i . phi``), ``loss`` (the attribution to the
   cross-entropy's negative gradient direction: ``sum_c (e_y - p)_c a_i^c phi_i . phi`` with the
   network's softmax ``p``), ``margin`` (``a_i^y - sum_{c != y} w_c a_i^c`` with ``w`` the network's
   softmax over the other classes), ``runner-up`` (``a_i^y - a_i^r``, ``r`` the network's runner-up),
   ``sign`` (``sign(a_i^y) phi_i . phi``).

Reference rows (not DualDA): ``last-layer TRAK (exact)``: TRAK's formula on the final layer's
exact gradients ``g_i = (e_{y_i} - p_i) / (1 - p_{i,y_i}) (x) [phi_i, 1]`` without projection,
``g_t^T (G^T G + 1e-6 tr I)^{-1} g_i (1 - p_{i,y_i})``.

Columns: LDS (mean over test samples; MNIST: negative loss of the retrained models, digits: their
correct-class margin), paired difference to ``plain C=1e-3`` with its SE, surrogate agreement
(argmax of the SVM's logits equals the network's on the test samples; the mean over members for
ensembles), sparsity (fraction of exact zeros of the score matrix), fit seconds (feature
extraction, transform and solve, summed over members), explain ms per test sample (the score
matrix of all test samples).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _path in (HERE, ROOT):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from captum_dualxda.metrics import lds  # noqa: E402
from captum_dualxda.solver import fit_crammer_singer  # noqa: E402
from captum_dualxda.solver.sparse_dual import dual_to_dense  # noqa: E402

C_REF = 1e-3


# ------------------------------------------------------------------------------------------ features
def layer_inputs(net: nn.Module, layers: Sequence[nn.Module], x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """Inputs of ``layers`` (flattened, float64) on ``x`` in eval mode, and the logits."""
    captured: Dict[int, torch.Tensor] = {}
    hooks = [
        layer.register_forward_hook(lambda m, inp, out, j=j: captured.__setitem__(j, inp[0].detach()))
        for j, layer in enumerate(layers)
    ]
    try:
        with torch.no_grad():
            logits = net.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return tuple(captured[j].reshape(len(x), -1).double() for j in range(len(layers))) + (logits.double(),)


class Model:
    """One network's features: ``blocks`` (last layer's input first) for train and test, logits."""

    def __init__(self, net: nn.Module, layers: Sequence[nn.Module], data: Tuple[torch.Tensor, ...], seconds_extra=0.0):
        x_train, y_train, x_test, y_test = data
        t0 = time.perf_counter()
        *train, self.logits_train = layer_inputs(net, layers, x_train)
        self.extract_s = time.perf_counter() - t0 + seconds_extra
        *test, self.logits_test = layer_inputs(net, layers, x_test)
        self.train, self.test = [t.numpy() for t in train], [t.numpy() for t in test]
        self.y_train, self.y_test = y_train.numpy(), y_test.numpy()
        self.net = net


# ------------------------------------------------------------------------------------------ transforms
def whiten(train: np.ndarray, test: np.ndarray, r: float) -> Tuple[np.ndarray, np.ndarray]:
    """``phi (G + r tr(G)/d I)^{-1/2}``, rescaled to the mean squared norm of ``phi``."""
    g = train.T @ train / len(train)
    d = g.shape[0]
    evals, evecs = np.linalg.eigh(g)
    lam = r * np.trace(g) / d
    w = (evecs / np.sqrt(np.clip(evals, 0, None) + lam)) @ evecs.T
    tw, sw = train @ w, test @ w
    scale = np.sqrt(np.trace(g) / np.mean(np.sum(tw * tw, 1)))
    return tw * scale, sw * scale


def concat(blocks_train: Sequence[np.ndarray], blocks_test: Sequence[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """Blocks side by side, each scaled to the mean squared norm of the first block."""
    ref = np.mean(np.sum(blocks_train[0] ** 2, 1))
    tr, te = [], []
    for a, b in zip(blocks_train, blocks_test):
        s = np.sqrt(ref / max(np.mean(np.sum(a * a, 1)), 1e-300))
        tr.append(a * s)
        te.append(b * s)
    return np.concatenate(tr, 1), np.concatenate(te, 1)


def trak_logit_grad(logits: np.ndarray, y: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``d f / d logits`` of ``f = log(p_y / (1 - p_y))``: ``(e_y - p) / (1 - p_y)``, and ``1 - p_y``."""
    p = _softmax(logits)
    e = np.eye(p.shape[1])[y]
    q = np.clip(1 - p[np.arange(len(y)), y], 1e-12, None)
    return (e - p) / q[:, None], q


def grad_features(m: Model, n_blocks: int) -> Tuple[np.ndarray, np.ndarray]:
    """Exact per-sample gradients of TRAK's output (true labels) w.r.t. the last layer's weights and bias
    (``n_blocks=1``), flattened; ``n_blocks=2`` adds the previous layer (MLP only, via ``fc3``'s weight)."""
    out = []
    for phi, logits, y, blocks in (
        (m.train[0], m.logits_train.numpy(), m.y_train, m.train),
        (m.test[0], m.logits_test.numpy(), m.y_test, m.test),
    ):
        dz, _ = trak_logit_grad(logits, y)
        aug = np.concatenate([phi, np.ones((len(phi), 1))], 1)
        g = [(dz[:, :, None] * aug[:, None, :]).reshape(len(phi), -1)]
        if n_blocks >= 2:
            w3 = m.net.fc3.weight.detach().double().numpy()  # (K, d)
            dh = (dz @ w3) * (phi > 0)  # through the ReLU (dropout off)
            prev = np.concatenate([blocks[1], np.ones((len(phi), 1))], 1)
            g.append((dh[:, :, None] * prev[:, None, :]).reshape(len(phi), -1))
        out.append(g)
    return concat(out[0], out[1])


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


# ------------------------------------------------------------------------------------------ DualDA by hand
class Fit:
    """Crammer-Singer fit on given features, DualDA's settings; ``alpha`` ``(n, K)`` as DualDA's coefficients."""

    def __init__(self, train: np.ndarray, y: np.ndarray, C: float, test: np.ndarray, n_classes: int = 10) -> None:
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = fit_crammer_singer(
                torch.from_numpy(train).float(), torch.from_numpy(y).long(), C=C, n_classes=n_classes
            )
        self.solve_s = time.perf_counter() - t0
        self.alpha = dual_to_dense(res.alpha).double().numpy()
        self.train, self.test = train.astype(np.float32), test.astype(np.float32)
        self.weight, self.intercept = res.weight.double().numpy(), res.intercept.double().numpy()
        self.converged = bool(res.converged)

    def kernel(self) -> np.ndarray:
        return (self.test @ self.train.T).astype(np.float64)

    def surrogate_logits(self) -> np.ndarray:
        return self.test.astype(np.float64) @ self.weight.T + self.intercept


def output_coefficients(alpha: np.ndarray, y: np.ndarray, logits: np.ndarray, output: str) -> np.ndarray:
    """``(n_test, n_train)`` per-test coefficient of each training sample for an output function."""
    k = alpha.shape[1]
    e = np.eye(k)[y]
    if output == "class":
        return alpha[:, y].T
    if output == "sign":
        return np.sign(alpha[:, y].T)
    p = _softmax(logits)
    if output == "loss":
        v = e - p
    elif output == "margin":
        w = p * (1 - e)
        v = e - w / w.sum(1, keepdims=True)
    elif output == "runner-up":
        r = np.where(e > 0, -np.inf, logits).argmax(1)
        v = e - np.eye(k)[r]
    else:
        raise ValueError(output)
    return v @ alpha.T


def score_fit(f: Fit, m: Model, output: str = "class") -> Tuple[np.ndarray, float]:
    """Score matrix and explain seconds."""
    t0 = time.perf_counter()
    s = f.kernel() * output_coefficients(f.alpha, m.y_test, m.logits_test.numpy(), output)
    return s, time.perf_counter() - t0


# ------------------------------------------------------------------------------------------ runner
class Runner:
    def __init__(self, target: Callable[[np.ndarray], np.ndarray]) -> None:
        self.target = target  # scores -> per-sample LDS
        self.rows: List[Dict[str, Any]] = []
        self.ref: Optional[np.ndarray] = None

    def add(self, hypothesis: str, name: str, scores: np.ndarray, fit_s: float, explain_s: float, agree: float) -> None:
        per = self.target(scores)
        if self.ref is None:
            self.ref = per
        ok = ~np.isnan(per) & ~np.isnan(self.ref)
        d = per[ok] - self.ref[ok]
        row = dict(
            hypothesis=hypothesis,
            name=name,
            lds=float(np.nanmean(per)),
            se=float(np.nanstd(per, ddof=1) / np.sqrt(np.sum(~np.isnan(per)))),
            diff=float(d.mean()),
            diff_se=float(d.std(ddof=1) / np.sqrt(d.size)) if d.any() else 0.0,
            agreement=agree,
            sparsity=float(np.mean(scores == 0)),
            fit_s=fit_s,
            ms_per_test=1000 * explain_s / scores.shape[0],
            per_sample=np.round(per, 5).tolist(),
        )
        self.rows.append(row)
        print(
            f"{hypothesis:>9} | {name:<48} {row['lds']:.3f} {row['diff']:+.3f} ± {row['diff_se']:.3f} "
            f"agree {agree:.3f} zeros {row['sparsity']:.3f} fit {fit_s:.2f}s {row['ms_per_test']:.3f}ms",
            flush=True,
        )


def agreement(f: Fit, m: Model) -> float:
    return float(np.mean(f.surrogate_logits().argmax(1) == m.logits_test.numpy().argmax(1)))


def single(
    m: Model, transform: Callable[[Model], Tuple[np.ndarray, np.ndarray]], C: float = C_REF, output: str = "class"
) -> Tuple[np.ndarray, float, float, float, Fit]:
    t0 = time.perf_counter()
    tr, te = transform(m)
    t_transform = time.perf_counter() - t0
    f = Fit(tr, m.y_train, C, te)
    s, ex = score_fit(f, m, output)
    return s, m.extract_s + t_transform + f.solve_s, ex, agreement(f, m), f


def plain(m: Model) -> Tuple[np.ndarray, np.ndarray]:
    return m.train[0], m.test[0]


def whitened(r: float) -> Callable[[Model], Tuple[np.ndarray, np.ndarray]]:
    return lambda m: whiten(m.train[0], m.test[0], r)


def ensemble(
    models: Sequence[Model], transform, norms: Sequence[str], output: str = "class", C: float = C_REF
) -> Dict[str, Tuple[np.ndarray, float, float, float]]:
    """Per-model fits (once), then the mean of the normalised score matrices for each of ``norms``."""
    members = [single(m, transform, C, output)[:4] for m in models]
    fit_s = sum(x[1] for x in members)
    agree = float(np.mean([x[3] for x in members]))
    out = {}
    for norm in norms:
        t0 = time.perf_counter()
        total = np.zeros_like(members[0][0])
        for s, *_ in members:
            if norm == "std":
                s = s / s.std()
            elif norm == "rowstd":
                s = s / np.clip(s.std(1, keepdims=True), 1e-300, None)
            total += s
        ex_s = time.perf_counter() - t0 + sum(x[2] for x in members)
        out[norm] = (total / len(models), fit_s, ex_s, agree)
    return out


def trak_last_layer(m: Model) -> Tuple[np.ndarray, float, float]:
    """TRAK's formula on the exact final-layer gradients (no projection), one model."""
    t0 = time.perf_counter()
    dz_tr, q_tr = trak_logit_grad(m.logits_train.numpy(), m.y_train)
    aug_tr = np.concatenate([m.train[0], np.ones((len(m.y_train), 1))], 1)
    g_tr = (dz_tr[:, :, None] * aug_tr[:, None, :]).reshape(len(m.y_train), -1)
    gram = g_tr.T @ g_tr
    inv = np.linalg.inv(gram + 1e-6 * np.trace(gram) / len(gram) * np.eye(len(gram)))
    fit_s = time.perf_counter() - t0 + m.extract_s
    t1 = time.perf_counter()
    dz_te, _ = trak_logit_grad(m.logits_test.numpy(), m.y_test)
    aug_te = np.concatenate([m.test[0], np.ones((len(m.y_test), 1))], 1)
    g_te = (dz_te[:, :, None] * aug_te[:, None, :]).reshape(len(m.y_test), -1)
    s = (g_te @ inv @ g_tr.T) * q_tr[None, :]
    return s, fit_s, time.perf_counter() - t1


def run_variants(
    runner: Runner,
    m0: Model,
    groups: Dict[str, List[Model]],
    richer: Dict[str, Callable[[Model], Tuple[np.ndarray, np.ndarray]]],
) -> None:
    """Every variant on model 0 (single) and the ensembles in ``groups``."""
    s, f_s, e_s, a, _ = single(m0, plain)
    runner.add("reference", "plain C=1e-3", s, f_s, e_s, a)
    for C in (1e-4, 1e-2):
        s, f_s, e_s, a, _ = single(m0, plain, C)
        runner.add("reference", f"plain C={C:g}", s, f_s, e_s, a)
    # 1. whitening
    for r in (1e-3, 1e-2, 1e-1, 1.0):
        for C in (1e-4, 1e-3, 1e-2):
            s, f_s, e_s, a, _ = single(m0, whitened(r), C)
            runner.add("1 whiten", f"whiten r={r:g} C={C:g}", s, f_s, e_s, a)
    # 4. output function (plain and whitened)
    for output in ("loss", "margin", "runner-up", "sign"):
        s, f_s, e_s, a, _ = single(m0, plain, C_REF, output)
        runner.add("4 output", f"plain, output={output}", s, f_s, e_s, a)
    for output in ("loss", "margin"):
        s, f_s, e_s, a, _ = single(m0, whitened(0.1), C_REF, output)
        runner.add("4 output", f"whiten r=0.1, output={output}", s, f_s, e_s, a)
    # 3. richer features
    for name, transform in richer.items():
        for C in (1e-4, 1e-3):
            s, f_s, e_s, a, _ = single(m0, transform, C)
            runner.add("3 richer", f"{name} C={C:g}", s, f_s, e_s, a)
    # reference: TRAK's formula on the last layer
    s, f_s, e_s = trak_last_layer(m0)
    runner.add("reference", "last-layer TRAK (exact, no SVM), model 0", s, f_s, e_s, float("nan"))
    # 2. ensembles
    for gname, models in groups.items():
        for norm, (s, f_s, e_s, a) in ensemble(models, plain, ("mean", "std", "rowstd")).items():
            runner.add("2 ensemble", f"{gname} norm={norm}", s, f_s, e_s, a)
        for norm, (s, f_s, e_s, a) in ensemble(models, plain, ("rowstd",), "loss").items():
            runner.add("2+4", f"{gname} norm={norm} output=loss", s, f_s, e_s, a)
        for r in (0.01, 0.1):
            for norm, (s, f_s, e_s, a) in ensemble(models, whitened(r), ("mean", "rowstd")).items():
                runner.add("2+1", f"{gname} whiten r={r:g} norm={norm}", s, f_s, e_s, a)
        t = [trak_last_layer(m) for m in models]
        runner.add(
            "reference",
            f"{gname} last-layer TRAK (exact, no SVM), mean",
            sum(x[0] for x in t) / len(t),
            sum(x[1] for x in t),
            sum(x[2] for x in t),
            float("nan"),
        )


def run_extra(
    runner: Runner,
    m0: Model,
    groups: Dict[str, List[Model]],
    richer_white: Dict[str, Callable[[float], Callable[[Model], Tuple[np.ndarray, np.ndarray]]]],
) -> None:
    """``--part extra``: the combinations the first part pointed to (whitening at C=1e-4, whitened
    richer features, in ensembles)."""
    s, f_s, e_s, a, _ = single(m0, plain)
    runner.add("reference", "plain C=1e-3", s, f_s, e_s, a)
    for name, make in richer_white.items():
        for r in (0.01, 0.1):
            for C in (1e-4, 1e-3):
                s, f_s, e_s, a, _ = single(m0, make(r), C)
                runner.add("3+1", f"{name}, whiten r={r:g} C={C:g}", s, f_s, e_s, a)
    for gname, models in groups.items():
        for r, C in ((0.01, 1e-4), (0.01, 1e-3)):
            s, f_s, e_s, a = ensemble(models, whitened(r), ("mean",), C=C)["mean"]
            runner.add("2+1", f"{gname} whiten r={r:g} C={C:g}", s, f_s, e_s, a)
        for name, make in richer_white.items():
            for r, C in ((0.01, 1e-4), (0.1, 1e-4)):
                s, f_s, e_s, a = ensemble(models, make(r), ("mean",), C=C)["mean"]
                runner.add("2+3+1", f"{gname} {name}, whiten r={r:g} C={C:g}", s, f_s, e_s, a)


def package_timing(repeats: int = 7) -> List[Dict[str, Any]]:
    """``--part timing`` (MNIST-MLP, full model 0): ``DualDA(...)`` and ``influence`` on the 500 test images,
    plain and with ``whiten=0.01`` / ``0.1``, alternating, ``repeats`` times each; medians of wall and CPU seconds,
    and the LDS of the package's own scores (equal to the hand-made rows)."""
    import mnist_lds as H

    from captum_dualxda import DualDA

    s = H.SETTINGS["mlp"]
    data = H.load_data()
    gt = H.ground_truth(s, data, show_progress=False)
    net = H.load_model(s, H.full_model_paths(s, 1, data, show_progress=False)[0])
    train = torch.utils.data.TensorDataset(data[0], data[1])
    options: List[Optional[float]] = [None, 0.01, 0.1]
    times: Dict[Optional[float], List[Tuple[float, float, float, float]]] = {w: [] for w in options}
    scores: Dict[Optional[float], np.ndarray] = {}
    DualDA(net, s.final_layer, train, C=C_REF, batch_size=1000)  # warm-up
    for _ in range(repeats):
        for w in options:
            t0, c0 = time.perf_counter(), time.process_time()
            dualda = DualDA(net, s.final_layer, train, C=C_REF, batch_size=1000, whiten=w)
            t1, c1 = time.perf_counter(), time.process_time()
            out = dualda.influence((data[2], data[3]))
            times[w].append((t1 - t0, c1 - c0, time.perf_counter() - t1, time.process_time() - c1))
            scores[w] = out.double().numpy()
    rows = []
    for w in options:
        med = np.median(np.array(times[w]), 0)
        result = H.score(scores[w], gt)
        rows.append(
            dict(
                whiten=w,
                fit_s=float(med[0]),
                fit_cpu_s=float(med[1]),
                explain_ms_per_test=float(1000 * med[2] / len(data[3])),
                explain_cpu_ms_per_test=float(1000 * med[3] / len(data[3])),
                lds=result.mean,
                sparsity=float(np.mean(scores[w] == 0)),
            )
        )
        print(rows[-1], flush=True)
    return rows


def package_layers(n_half: int = 10, repeats: int = 1, ratios: Sequence[float] = ()) -> Tuple[Runner, Dict[str, Any]]:
    """``--part layers`` (MNIST-MLP): the PACKAGE's ``DualDA(feature_layers=["fc2", "fc1"], whiten=0.1)``
    (the inputs of all three layers) on full model 0 and over TRAK's ``n_half`` half-data checkpoints
    (``checkpoints=``), against plain ``DualDA()`` on the same models. Fit: the constructor (extraction,
    scaling, whitening, solve; wall seconds, all checkpoints); ms / test: ``influence`` on the 500 test
    images. Single-model rows are repeated ``repeats`` times, interleaved, and the median is taken.
    ``ratios``: further whitening ratios for the ``feature_layers`` fits (one model and the ensemble)."""
    import mnist_lds as H

    from captum_dualxda import DualDA
    from captum_dualxda.metrics import surrogate_fidelity

    s = H.SETTINGS["mlp"]
    data = H.load_data()
    gt = H.ground_truth(s, data, show_progress=False)
    net = H.load_model(s, H.full_model_paths(s, 1, data, show_progress=False)[0])
    train = torch.utils.data.TensorDataset(data[0], data[1])
    test = (data[2], data[3])
    runner = Runner(lambda scores: H.score(scores, gt).per_sample)
    layers = ["fc2", "fc1"]  # phi = input of fc3 first, then fc2's and fc1's inputs (784 pixels)

    def run(name: str, hypothesis: str, model: nn.Module, **options: Any) -> Dict[str, float]:
        fit, cpu, explain = [], [], []
        for _ in range(repeats if options.get("checkpoints") is None else 1):
            t0, c0 = time.perf_counter(), time.process_time()
            dualda = DualDA(model, s.final_layer, train, C=C_REF, batch_size=1000, **options)
            fit.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            t1 = time.perf_counter()
            scores = dualda.influence(test).double().numpy()
            explain.append(time.perf_counter() - t1)
        fit_s, explain_s = float(np.median(fit)), float(np.median(explain))
        if dualda.ensemble is not None:
            agree = float(np.mean(dualda.ensemble.over_checkpoints(lambda m: surrogate_fidelity(m, data[2]).agreement)))
        else:
            agree = surrogate_fidelity(dualda, data[2]).agreement
        runner.add(hypothesis, name, scores, fit_s, explain_s, agree)
        return dict(fit_cpu_s=float(np.median(cpu)), fit_s=fit_s)

    DualDA(net, s.final_layer, train, C=C_REF, batch_size=1000)  # warm-up
    extra: Dict[str, Any] = {}
    extra["plain"] = run("plain C=1e-3 (package)", "reference", net)
    extra["layers_white"] = run(
        "feature_layers=[fc2, fc1], whiten=0.1 (package)", "3+1", net, feature_layers=layers, whiten=0.1
    )
    extra["layers"] = run("feature_layers=[fc2, fc1] (package)", "3", net, feature_layers=layers)
    paths = gt.half_paths[:n_half]
    extra["half_plain"] = run(f"half x{n_half} plain (package, checkpoints=)", "2", net, checkpoints=paths)
    extra["half_layers_white"] = run(
        f"half x{n_half} feature_layers=[fc2, fc1], whiten=0.1 (package, checkpoints=)",
        "2+3+1",
        net,
        checkpoints=paths,
        feature_layers=layers,
        whiten=0.1,
    )
    for r in ratios:
        extra[f"layers_white_{r:g}"] = run(
            f"feature_layers=[fc2, fc1], whiten={r:g} (package)", "3+1", net, feature_layers=layers, whiten=r
        )
        extra[f"half_layers_white_{r:g}"] = run(
            f"half x{n_half} feature_layers=[fc2, fc1], whiten={r:g} (package, checkpoints=)",
            "2+3+1",
            net,
            checkpoints=paths,
            feature_layers=layers,
            whiten=r,
        )
    return runner, dict(target="minus the cross-entropy (dattri)", n_test=len(data[3]), cpu=extra)


def whiten_lowrank(train: np.ndarray, test: np.ndarray, r: float, threshold: float) -> Tuple[np.ndarray, np.ndarray]:
    """Low-rank whitening: ``phi V_k diag(s / sqrt(ev_k + lambda))`` over the eigen-directions whose kernel
    weight ``ev / (ev + lambda)`` exceeds ``threshold`` (``threshold=0``: all, the full whitening up to a
    rotation, which leaves the kernel unchanged); ``s`` the full whitening's scale (C keeps its meaning)."""
    g = train.T @ train / len(train)
    d = g.shape[0]
    evals, evecs = np.linalg.eigh(g)
    evals = np.clip(evals, 0, None)
    lam = r * np.trace(g) / d
    scale = np.sqrt(np.trace(g) / np.sum(evals / (evals + lam)))
    keep = evals / (evals + lam) > threshold
    w = evecs[:, keep] * (scale / np.sqrt(evals[keep] + lam))
    return train @ w, test @ w


def lowrank(repeats: int = 3) -> Tuple[Runner, Dict[str, Any]]:
    """``--part lowrank`` (MNIST-MLP, issue 26's speed idea): the inputs of all three layers, whitened at
    ``r = 0.1``, ``C = 1e-3``, with the SVM in the ``k`` eigen-directions whose kernel weight ``ev/(ev+lambda)``
    exceeds a threshold, against the full whitening (threshold 0); full model 0 (``repeats`` interleaved runs,
    median fit seconds: transform and solve) and TRAK's 10 half-data models (once)."""
    import mnist_lds as H

    s = H.SETTINGS["mlp"]
    data = H.load_data()
    gt = H.ground_truth(s, data, show_progress=False)
    full = H.full_model_paths(s, 1, data, show_progress=False)
    runner = Runner(lambda scores: H.score(scores, gt).per_sample)

    def model(path: str) -> Model:
        net = H.load_model(s, path)
        return Model(net, [net.fc3, net.fc2, net.fc1], data)

    def make(threshold: float) -> Callable[[Model], Tuple[np.ndarray, np.ndarray]]:
        return lambda m: whiten_lowrank(*concat(m.train[:3], m.test[:3]), 0.1, threshold)

    m0 = model(full[0])
    thresholds = (0.0, 0.01, 0.03, 0.1)
    transform = {t: make(t) for t in thresholds}
    dims = {t: transform[t](m0)[0].shape[1] for t in thresholds}
    results: Dict[float, List[Tuple[np.ndarray, float, float, float]]] = {t: [] for t in thresholds}
    solve: Dict[float, List[float]] = {t: [] for t in thresholds}
    for _ in range(repeats):
        for t in thresholds:
            *row, fit = single(m0, transform[t], C_REF)
            results[t].append(tuple(row))  # type: ignore[arg-type]
            solve[t].append(fit.solve_s)
    for t in thresholds:
        fit_s = float(np.median([x[1] - m0.extract_s for x in results[t]]))
        s0, _, e_s, a = results[t][0]
        runner.add(
            "speed",
            f"model 0, 3 layers whiten r=0.1, ev/(ev+l) > {t:g}: k={dims[t]}, solve {np.median(solve[t]):.2f}s",
            s0,
            fit_s,
            e_s,
            a,
        )
    halves = [model(p) for p in gt.half_paths[:10]]
    for t in thresholds:
        s0, f_s, e_s, a = ensemble(halves, transform[t], ("mean",), C=C_REF)["mean"]
        f_s -= sum(m.extract_s for m in halves)
        runner.add("speed", f"half x10, 3 layers whiten r=0.1, ev/(ev+l) > {t:g}", s0, f_s, e_s, a)
    solve_s = {t: float(np.median(v)) for t, v in solve.items()}
    return runner, dict(target="minus the cross-entropy (dattri)", n_test=len(data[3]), dims=dims, solve_s=solve_s)


# ------------------------------------------------------------------------------------------ settings
def mlp(args: argparse.Namespace) -> Tuple[Runner, Dict[str, Any]]:
    import mnist_lds as H

    s = H.SETTINGS["mlp"]
    data = H.load_data()
    gt = H.ground_truth(s, data, show_progress=False)
    full = H.full_model_paths(s, H.N_FULL, data, show_progress=False)
    runner = Runner(lambda scores: H.score(scores, gt).per_sample)

    def model(path: str) -> Model:
        t0 = time.perf_counter()
        net = H.load_model(s, path)
        return Model(net, [net.fc3, net.fc2, net.fc1], data, seconds_extra=time.perf_counter() - t0)

    m0 = model(full[0])
    # the hand-made fit reproduces DualDA's influence
    ref = H.dualda_scores(s, full[:1], C_REF, data).scores
    mine = single(m0, plain)[0]
    assert np.allclose(mine, ref, rtol=1e-3, atol=1e-6 * np.abs(ref).max()), np.abs(mine - ref).max()
    halves = [model(p) for p in gt.half_paths[: args.n_half]]
    fulls = [model(p) for p in full]
    epochs = [model(p) for p in H.epoch_checkpoint_paths(s)]
    groups = {
        "half x10": halves[:10],
        f"half x{args.n_half}": halves,
        "seeds x5": fulls,
        "epochs x3": epochs,
        "seeds x5 + epochs x2": fulls + epochs[:2],
    }
    if args.part == "extra":
        richer_white = {
            "concat fc3+fc2 inputs": lambda r: lambda m: whiten(*concat(m.train[:2], m.test[:2]), r),
        }
        run_extra(runner, m0, {"half x10": halves[:10], f"half x{args.n_half}": halves}, richer_white)
        return runner, dict(ceiling=H.seed_ceiling(gt), target="minus the cross-entropy (dattri)", n_test=len(data[3]))
    if args.part == "extra2":  # the inputs of all three layers, whitened
        three = lambda r: lambda m: whiten(*concat(m.train[:3], m.test[:3]), r)  # noqa: E731
        s0, f_s, e_s, a, _ = single(m0, plain)
        runner.add("reference", "plain C=1e-3", s0, f_s, e_s, a)
        for r in (0.01, 0.1):
            for C in (1e-4, 1e-3):
                s0, f_s, e_s, a, _ = single(m0, three(r), C)
                runner.add("3+1", f"concat fc3+fc2+fc1 inputs, whiten r={r:g} C={C:g}", s0, f_s, e_s, a)
        s0, f_s, e_s, a = ensemble(halves[:10], three(0.01), ("mean",), C=1e-3)["mean"]
        runner.add("2+3+1", "half x10 concat fc3+fc2+fc1 inputs, whiten r=0.01 C=0.001", s0, f_s, e_s, a)
        return runner, dict(ceiling=H.seed_ceiling(gt), target="minus the cross-entropy (dattri)", n_test=len(data[3]))
    if args.part == "extra3":  # all three layers' inputs at the ratio extra2 found best, and larger ratios
        three = lambda r: lambda m: whiten(*concat(m.train[:3], m.test[:3]), r)  # noqa: E731
        s0, f_s, e_s, a, _ = single(m0, plain)
        runner.add("reference", "plain C=1e-3", s0, f_s, e_s, a)
        for r in (0.3, 1.0):
            s0, f_s, e_s, a, _ = single(m0, three(r), 1e-3)
            runner.add("3+1", f"concat fc3+fc2+fc1 inputs, whiten r={r:g} C=0.001", s0, f_s, e_s, a)
        s0, f_s, e_s, a = ensemble(halves[:10], three(0.1), ("mean",), C=1e-3)["mean"]
        runner.add("2+3+1", "half x10 concat fc3+fc2+fc1 inputs, whiten r=0.1 C=0.001", s0, f_s, e_s, a)
        return runner, dict(ceiling=H.seed_ceiling(gt), target="minus the cross-entropy (dattri)", n_test=len(data[3]))
    richer = {
        "concat fc3+fc2 inputs": lambda m: concat(m.train[:2], m.test[:2]),
        "concat fc3+fc2+fc1 inputs": lambda m: concat(m.train[:3], m.test[:3]),
        "concat fc3+fc2 inputs, whiten r=0.1": lambda m: whiten(*concat(m.train[:2], m.test[:2]), 0.1),
        "grad fc3 (TRAK output)": lambda m: grad_features(m, 1),
        "grad fc3+fc2 (TRAK output)": lambda m: grad_features(m, 2),
    }
    run_variants(runner, m0, groups, richer)
    return runner, dict(ceiling=H.seed_ceiling(gt), target="minus the cross-entropy (dattri)", n_test=len(data[3]))


def digits(args: argparse.Namespace) -> Tuple[Runner, Dict[str, Any]]:
    import lds as D

    settings = dict(
        n_subsets=100,
        n_second=0,
        n_test=200,
        fraction=0.5,
        subset_seed=2024,
        data_seed=0,
        epochs=D.DEFAULT_EPOCHS,
        ensemble_seeds=list(D.ENSEMBLE_SEEDS),
        trak_proj_dim=512,
    )
    ctx = D.prepare(settings, False)
    data = (ctx["x_train"], ctx["y_train"], ctx["x_test"], ctx["y_test"])
    runner = Runner(lambda scores: lds(scores, ctx["subsets"], ctx["margins"]).per_sample)

    def model(seed: int, epoch: int) -> Model:
        t0 = time.perf_counter()
        net = D.load_model(ctx["cache"], seed, epoch)
        return Model(net, [net.fc, net.head[1]], data, seconds_extra=time.perf_counter() - t0)

    m0 = model(0, settings["epochs"])
    groups = {
        "ckpts x3": [model(0, e) for e in D.CHECKPOINT_EPOCHS],
        "seeds x3": [model(s, settings["epochs"]) for s in D.ENSEMBLE_SEEDS[:3]],
        "seeds x5": [model(s, settings["epochs"]) for s in D.ENSEMBLE_SEEDS],
    }
    if args.part == "extra":
        richer_white = {
            "concat fc+head inputs": lambda r: lambda m: whiten(*concat(m.train[:2], m.test[:2]), r),
        }
        run_extra(runner, m0, groups, richer_white)
        return runner, dict(target="correct-class margin (lds.py)", n_test=len(data[3]))
    richer = {
        "concat fc+head inputs": lambda m: concat(m.train[:2], m.test[:2]),
        "concat fc+head inputs, whiten r=0.1": lambda m: whiten(*concat(m.train[:2], m.test[:2]), 0.1),
        "grad fc (TRAK output)": lambda m: grad_features(m, 1),
    }
    run_variants(runner, m0, groups, richer)
    return runner, dict(target="correct-class margin (lds.py)", n_test=len(data[3]))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setting", choices=("mlp", "digits"), default="mlp")
    parser.add_argument("--n-half", type=int, default=50, help="half-data models for the largest MNIST ensemble")
    parser.add_argument(
        "--part", choices=("main", "extra", "extra2", "extra3", "timing", "layers", "lowrank"), default="main"
    )
    parser.add_argument("--repeats", type=int, default=3, help="--part layers / lowrank: interleaved repeats")
    parser.add_argument("--ratios", default="", help="--part layers: further whitening ratios, comma-separated")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    started = f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"
    if args.part == "timing":
        rows = package_timing()
        if args.out:
            with open(args.out, "w") as handle:
                report = dict(started=started, load_start=load0, load_end=os.getloadavg(), rows=rows)
                json.dump(report, handle, indent=1)
        return 0
    if args.part == "layers":
        ratios = [float(r) for r in args.ratios.split(",") if r]
        runner, extra = package_layers(min(args.n_half, 10) if args.n_half != 50 else 10, args.repeats, ratios)
    elif args.part == "lowrank":
        runner, extra = lowrank(args.repeats)
    else:
        runner, extra = (mlp if args.setting == "mlp" else digits)(args)
    report = dict(
        setting=args.setting,
        command=f"python benchmarks/lds_variants.py {' '.join(argv if argv is not None else sys.argv[1:])}",
        started=started,
        load_start=load0,
        load_end=os.getloadavg(),
        total_s=time.perf_counter() - t0,
        rows=runner.rows,
        **extra,
    )
    print(f"total {report['total_s']:.0f} s, load {load0[0]:.1f} -> {report['load_end'][0]:.1f}")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
