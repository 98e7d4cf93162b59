"""The measurements behind DualDA's default ``C``: one table over C on the demo's digits CNN.

Run from the repository root::

    python benchmarks/default_C.py                # seeds 0, 1, 2 (a few minutes on 2 cores)
    python benchmarks/default_C.py --seeds 0 --Cs 1e-3,1e-2

For every seed the demo's data (scikit-learn digits in [0, 1], 10 % of the training labels
flipped) trains the demo CNN, then :func:`captum_dualxda.choose_c.sweep_C` fits DualDA's SVM for
each ``C`` on features extracted once and reports support vectors, agreement of the SVM surrogate
with the network on the test set, top-5 class detection, the mislabel ROC AUC of self-influence
and of the surrogate's hinge loss, solver passes and seconds. ``--raw`` trains on raw 0..16
pixels instead, to show how the pass count grows with the scale of the features. Printed: the
median over seeds of every column (markdown), and whether every fit converged within
``--max-iter`` passes.
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings

import numpy as np
import torch

from captum_dualxda.choose_c import sweep_C
from captum_dualxda.demo import load_digits_data, train_cnn
from captum_dualxda.solver import ConvergenceWarning

COLUMNS = ("n_support", "agreement", "class_detection", "auc_self_influence", "auc_hinge_loss", "n_iter", "fit_time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--Cs", default="1e-5,1e-4,1e-3,1e-2,3e-2,1e-1,1")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--max-iter", type=int, default=100_000)
    parser.add_argument("--raw", action="store_true", help="train and explain on raw 0..16 pixels")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    Cs = [float(c) for c in args.Cs.split(",")]
    table = {C: {name: [] for name in COLUMNS + ("converged",)} for C in Cs}
    start = time.perf_counter()
    for seed in seeds:
        data = load_digits_data(0.1, seed)
        scale = 16.0 if args.raw else 1.0
        net = train_cnn(data.x_train * scale, data.y_train, epochs=args.epochs, seed=seed, show_progress=False)
        train = torch.utils.data.TensorDataset(data.x_train * scale, data.y_train)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            rows = sweep_C(
                net,
                "fc",
                train,
                Cs=Cs,
                test_inputs=data.x_test * scale,
                flipped=data.flipped,
                max_iter=args.max_iter,
                seed=seed,
                baselines=False,
            )
        for row in rows:
            for name in COLUMNS:
                table[row.C][name].append(getattr(row, name))
            table[row.C]["converged"].append(row.n_iter < args.max_iter)
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()}, torch {torch.__version__} (1 thread), "
        f"seeds {seeds}, inputs {'raw 0..16' if args.raw else 'scaled to [0, 1]'}, max_iter {args.max_iter}, "
        f"{time.perf_counter() - start:.0f} s in all"
    )
    print()
    print(
        "| C | support vectors | agreement (test) | class det. top-5 | mislabel AUC self-inf. | "
        "mislabel AUC hinge | passes | fit [s] | converged |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for C in Cs:
        med = {name: float(np.median(table[C][name])) for name in COLUMNS}
        print(
            f"| {C:g} | {med['n_support']:.0f} | {100 * med['agreement']:.1f} % | {med['class_detection']:.3f} | "
            f"{med['auc_self_influence']:.3f} | {med['auc_hinge_loss']:.3f} | {med['n_iter']:.0f} | "
            f"{med['fit_time']:.2f} | {sum(table[C]['converged'])}/{len(seeds)} |"
        )


if __name__ == "__main__":
    main()
