"""Counterfactual quality: the linear datamodeling score (LDS) of DualDA and its peers on digits.

Run from the repository root::

    python benchmarks/lds.py                      # first run ~20 min on 2 busy cores, reruns ~5-8 min
    python benchmarks/lds.py --out lds.json       # also write every number (per-sample LDS too) as JSON
    python benchmarks/lds.py --n-subsets 8 --n-second 4 --skip-dattri   # smoke run (2-3 min)

The first run trains 137 small CNNs (about 5 s each on one core) and caches them; reruns only
recompute the attributions, of which dattri's RPS fine-tuning and TRAK take most of the time
(``--skip-dattri``: about 2 minutes).

What it does
------------
1. Data and model: the demo's digits (:func:`captum_dualxda.demo.load_digits_data` with
   ``flip_rate=0``, i.e. clean labels, ``seed=0``: 1,348 training and 449 test images; the first
   200 test images are explained) and the demo CNN (:class:`~captum_dualxda.demo.DigitsCNN`,
   :func:`~captum_dualxda.demo.train_cnn`, 12 epochs, Adam with cosine decay). The full model is
   trained on all 1,348 images with seed 0, saving its state after every epoch; four more full
   models are trained with seeds 1-4 (independently trained, for the seed ensembles).
2. Retraining: ``--n-subsets`` (M = 100) subsets of half the training set (674 images), drawn
   uniformly without replacement with ``numpy.random.default_rng(--subset-seed)``; model ``m``
   is trained on subset ``m`` with seed ``1000 + m``. The first ``--n-second`` (32) subsets are
   trained a second time with seed ``2000 + m``. Each retrained model's output on a test sample
   is its correct-class margin, ``logit_y - max_{c != y} logit_c`` with the true label ``y``.
3. Scores of every method, computed on the full model(s) for the 200 test samples and their TRUE
   labels (the margin is the correct-class margin, so the class to explain is the true class),
   and :func:`captum_dualxda.metrics.lds` of each score matrix against the M margins.

Steps 1-2 are cached under ``benchmarks/.cache/lds/<key>/`` (``key`` hashes the data seed,
epochs, subset size and seed, test count, the torch version and the source of the data, model
and training functions; one file per trained model, so an interrupted run resumes and a larger
``--n-subsets`` only trains the extra models). Delete the directory to retrain.

Methods
-------
* ``DualDA C=...``: ``DualDA(model, "fc", train_set, C=C)``, ``influence((x_test, y_test))``.
* ``DualDA margin C=...`` (ensemble table, "margin split"): the surrogate's margin split over
  the training samples, ``tau(x, x_i; y) - tau(x, x_i; r)`` with ``r`` the surrogate's runner-up
  class on ``x`` (two ``influence`` calls); it sums to ``s_y(x) - s_r(x)`` without intercepts,
  the surrogate's version of the margin that LDS predicts.
* ``DualDA <ensemble> C=...``: the mean of the DualDA score matrices of several models, each
  with its own fit: ``ckpts x3`` / ``ckpts x5`` = the first full model's states after epochs
  4, 8, 12 / 4, 6, 8, 10, 12 of one run; ``seeds x3`` / ``seeds x5`` = the final states of
  independently trained full models (seeds 0-2 / 0-4). Times are the sums over the members.
* ``TracInCPFast``: Captum, final layer ``fc``, ``CrossEntropyLoss(reduction="sum")``, on the
  final state or on ``ckpts x3``.
* ``similarity (label-signed ...)``: ``s(x, x_i) = +phi(x_i).phi(x)`` if ``y_i`` is the explained
  class, ``-phi(x_i).phi(x)`` otherwise (final model's features); ``cosine`` uses
  ``phi(x_i).phi(x) / (|phi(x_i)| |phi(x)|)`` instead.
* ``random``: independent standard normal scores.
* ``dattri TRAK`` / ``dattri RPS`` (only when ``dattri`` 0.3 is installed, ``pip install
  "dattri==0.3.*"``; a benchmark extra, not a dependency of the package): TRAK on all parameters
  with output function ``log(p / (1 - p))`` (computed as ``logit_y - logsumexp(other logits)``),
  512 projection dimensions, on the final state, ``ckpts x3``, ``ckpts x5`` or ``seeds x3``;
  representer points (``RPSAttributor``, dattri's defaults ``l2_strength=0.003``, up to 3000
  fine-tuning epochs) on the final model. With dattri installed the script also checks that
  dattri's ``lds`` gives the same per-sample values as ours.

Columns
-------
* ``LDS``: mean over test samples of the per-sample Spearman correlation; ``SE``: its standard
  error over the test samples.
* ``diff vs DualDA C=1e-3``: mean of the per-test-sample differences to single-model DualDA
  C=1e-3 ± the standard error of that mean (paired SE); ``|diff| > 2 SE`` is a significant
  difference on these test samples. The ensemble table gives the same against the single model
  at the same C, and against TRAK on the same models.
* ``precompute [s]``: everything before the first explanation (DualDA: feature extraction and
  SVM fit; TRAK: training gradients, projections and the kernel inverse; RPS: fine-tuning).
* ``ms / test``: explaining all test samples (full score matrices) divided by their number;
  DualDA's is the median of 5 repeats (one call takes milliseconds).
* ``CPU``: the same in CPU seconds of this process (``time.process_time``), which other jobs on
  a shared machine distort less than wall-clock time.

Seed-noise ceiling: retraining the same subset with another seed changes the margins, so no
predictor of the margin from the subset alone reaches LDS 1. With margins ``y_A, y_B`` of two
seeds on the same subsets, ``rho = corr(y_A, y_B)`` estimates the share of the margin's variance
that the subset determines, and ``sqrt(rho)`` the correlation of the best possible subset-only
predictor ``E[y | S]`` with ``y``. Both are reported, averaged over test samples (Spearman
correlations over the ``--n-second`` subsets).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import inspect
import json
import os
import platform
import statistics
import sys
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run from a checkout without installing

from captum_dualxda import DualDA  # noqa: E402
from captum_dualxda.demo import DEFAULT_EPOCHS, DigitsCNN, load_digits_data, train_cnn  # noqa: E402
from captum_dualxda.metrics import lds  # noqa: E402

CACHE_ROOT = os.path.join(HERE, ".cache", "lds")
CS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
REFERENCE = "DualDA C=0.001"
CHECKPOINT_EPOCHS = (4, 8, 12)
CHECKPOINT_EPOCHS_5 = (4, 6, 8, 10, 12)
ENSEMBLE_SEEDS = (0, 1, 2, 3, 4)


# --------------------------------------------------------------------------------------------
# Retraining (cached)
# --------------------------------------------------------------------------------------------
def settings_key(settings: Dict[str, Any]) -> str:
    """Short hash of what determines every trained model (not how many there are).

    The settings, the torch version and the source code of the data, model and training
    functions: editing any of them starts a new cache.
    """
    keep = {k: settings[k] for k in ("data_seed", "epochs", "fraction", "subset_seed", "n_test")}
    code = "".join(
        inspect.getsource(f) for f in (load_digits_data, DigitsCNN, train_cnn, draw_subsets, correct_class_margin)
    )
    text = json.dumps({**keep, "torch": torch.__version__, "code": code}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def correct_class_margin(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """``(n,)`` float64 ``logit_y - max_{c != y} logit_c`` of ``net`` (eval mode, no grad)."""
    with torch.no_grad():
        logits = net(x).double()
    correct = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return (correct - others.max(1).values).numpy()


def draw_subsets(n_train: int, n_subsets: int, fraction: float, seed: int) -> np.ndarray:
    """``(n_subsets, n_train)`` bool masks, each of ``round(fraction * n_train)`` samples.

    Subset ``m`` does not depend on ``n_subsets`` (the generator is consumed in order).
    """
    rng = np.random.default_rng(seed)
    size = int(round(fraction * n_train))
    masks = np.zeros((n_subsets, n_train), dtype=bool)
    for m in range(n_subsets):
        masks[m, rng.choice(n_train, size, replace=False)] = True
    return masks


def prepare(settings: Dict[str, Any], show_progress: bool) -> Dict[str, Any]:
    """Train (or load) the full models and the retrained models; return data, subsets, margins."""
    key = settings_key(settings)
    cache = os.path.join(CACHE_ROOT, key)
    os.makedirs(os.path.join(cache, "models"), exist_ok=True)
    os.makedirs(os.path.join(cache, "margins"), exist_ok=True)

    data = load_digits_data(0.0, settings["data_seed"])
    x_train, y_train = data.x_train, data.y_train
    x_test, y_test = data.x_test[: settings["n_test"]], data.y_test[: settings["n_test"]]
    epochs = settings["epochs"]
    subsets = draw_subsets(len(y_train), settings["n_subsets"], settings["fraction"], settings["subset_seed"])

    # (seed, subset index or None for the full model, file)
    jobs: List[Tuple[int, Optional[int], str]] = []
    for seed in settings["ensemble_seeds"]:
        jobs.append((seed, None, checkpoint_path(cache, seed, epochs)))
    jobs += [
        (1000 + m, m, os.path.join(cache, "margins", f"seed{1000 + m}-subset{m}.pt"))
        for m in range(settings["n_subsets"])
    ]
    jobs += [
        (2000 + m, m, os.path.join(cache, "margins", f"seed{2000 + m}-subset{m}.pt"))
        for m in range(settings["n_second"])
    ]
    todo = [job for job in jobs if not os.path.exists(job[2])]
    for seed, m, path in tqdm(
        todo, desc="training models", unit="model", file=sys.stderr, disable=not show_progress or not todo
    ):
        if m is None:  # a full model, its state after every epoch (the first seed's checkpoints are used)
            paths = [checkpoint_path(cache, seed, e) for e in range(1, epochs + 1)]
            tmp = [f"{p}.tmp{os.getpid()}" for p in paths]
            train_cnn(x_train, y_train, epochs=epochs, seed=seed, checkpoint_paths=tmp)
            for t, p in zip(tmp, paths):  # the final state last: its file marks the model as done
                os.replace(t, p)
            continue
        idx = np.flatnonzero(subsets[m])
        start = time.perf_counter()
        net = train_cnn(x_train[torch.from_numpy(idx)], y_train[torch.from_numpy(idx)], epochs=epochs, seed=seed)
        elapsed = time.perf_counter() - start
        tmp = f"{path}.tmp{os.getpid()}"
        torch.save(
            {
                "margin": torch.from_numpy(correct_class_margin(net, x_test, y_test)),
                "seconds": elapsed,
                "subset": torch.from_numpy(idx),
            },
            tmp,
        )
        os.replace(tmp, path)

    margins: Dict[Tuple[int, int], np.ndarray] = {}
    seconds = []
    for seed, m, path in jobs:
        if m is None:
            continue
        saved = torch.load(path)
        if not np.array_equal(saved["subset"].numpy(), np.flatnonzero(subsets[m])):
            raise RuntimeError(
                f"{path} was trained on another subset than this run draws (numpy changed?); delete {cache} to retrain."
            )
        margins[seed, m] = saved["margin"].numpy().astype(np.float64)
        seconds.append(float(saved["seconds"]))
    first = np.stack([margins[1000 + m, m] for m in range(settings["n_subsets"])])
    second = np.stack([margins[2000 + m, m] for m in range(settings["n_second"])]) if settings["n_second"] else None
    return dict(
        cache=cache,
        key=key,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        subsets=subsets,
        margins=first,
        margins_second=second,
        retrain_seconds=float(np.median(seconds)),
        n_trained_now=len(todo),
    )


def load_model(cache: str, seed: int, epoch: int) -> DigitsCNN:
    net = DigitsCNN()
    net.load_state_dict(torch.load(os.path.join(cache, "models", f"full-seed{seed}-epoch{epoch}.pt")))
    return net.eval()


def checkpoint_path(cache: str, seed: int, epoch: int) -> str:
    return os.path.join(cache, "models", f"full-seed{seed}-epoch{epoch}.pt")


# --------------------------------------------------------------------------------------------
# Methods: each returns (scores (n_test, n_train) float64, precompute Timing, explain Timing)
# --------------------------------------------------------------------------------------------
class Timing:
    """Wall-clock and CPU seconds of a block.

    CPU seconds (``time.process_time``: this process, all its threads) are what other jobs on a
    shared machine inflate least; wall seconds are what a user waits.
    """

    def __init__(self, wall: float = 0.0, cpu: float = 0.0) -> None:
        self.wall, self.cpu = wall, cpu

    def __enter__(self) -> Timing:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall, self.cpu = time.perf_counter() - self._wall, time.process_time() - self._cpu

    def __add__(self, other: Timing) -> Timing:
        return Timing(self.wall + other.wall, self.cpu + other.cpu)


def _median_timing(fn: Callable[[], Any], repeats: int) -> Tuple[Any, Timing]:
    """Run ``fn`` ``repeats`` times; its last result and the median wall and CPU seconds."""
    timings, out = [], None
    for _ in range(repeats):
        with Timing() as timing:
            out = fn()
        timings.append(timing)
    return out, Timing(statistics.median(t.wall for t in timings), statistics.median(t.cpu for t in timings))


def _surrogate_logits(dualda: DualDA, x: torch.Tensor) -> torch.Tensor:
    from captum_dualxda._core.features import batch_features

    phi = batch_features(dualda.model, dualda.final_fc_layer, (x,)).double()
    return phi @ dualda.weight.double().T + dualda.intercept.double()


class DualDARuns:
    """DualDA fits per (seed, epoch, C), kept so that the ensembles reuse the single-model fits."""

    def __init__(self, ctx: Dict[str, Any]) -> None:
        self.ctx = ctx
        self.train_set = TensorDataset(ctx["x_train"], ctx["y_train"])
        self.runs: Dict[Tuple[int, int, float], Dict[str, Any]] = {}

    def get(self, seed: int, epoch: int, C: float) -> Dict[str, Any]:
        key = (seed, epoch, C)
        if key in self.runs:
            return self.runs[key]
        ctx = self.ctx
        net = load_model(ctx["cache"], seed, epoch)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence is recorded below
            with Timing() as precompute:
                dualda = DualDA(net, "fc", self.train_set, C=C, batch_size=256)
        scores, explain = _median_timing(lambda: dualda.influence((ctx["x_test"], ctx["y_test"])), 5)
        # The surrogate's margin s_y(x) - s_r(x), r its runner-up class, split over training samples.
        surrogate = _surrogate_logits(dualda, ctx["x_test"])
        runner_up = surrogate.scatter(1, ctx["y_test"][:, None], float("-inf")).argmax(1)
        other, explain_other = _median_timing(lambda: dualda.influence((ctx["x_test"], runner_up)), 5)
        self.runs[key] = dict(
            scores=scores.double().numpy(),
            margin_scores=(scores.double() - other.double()).numpy(),
            precompute=precompute,
            explain=explain,
            explain_margin=explain + explain_other,
            n_support=int(dualda.support_indices.numel()),
            converged=bool(dualda.fit_stats["converged"]),
        )
        return self.runs[key]


def features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input of ``net.fc``, ``(N, 64)`` float64."""
    with torch.no_grad():
        return net.head(net.features(x)).double()


def similarity_scores(ctx: Dict[str, Any], cosine: bool) -> Tuple[np.ndarray, Timing, Timing]:
    """Label-signed feature similarity on the final full model (see the module docstring)."""
    net = load_model(ctx["cache"], ctx["settings"]["ensemble_seeds"][0], ctx["settings"]["epochs"])
    with Timing() as precompute:
        train_phi = features(net, ctx["x_train"])
        if cosine:
            train_phi = train_phi / train_phi.norm(dim=1, keepdim=True).clamp_min(1e-12)
    with Timing() as explain:
        test_phi = features(net, ctx["x_test"])
        if cosine:
            test_phi = test_phi / test_phi.norm(dim=1, keepdim=True).clamp_min(1e-12)
        sign = (ctx["y_train"][None, :] == ctx["y_test"][:, None]).double() * 2 - 1
        scores = (test_phi @ train_phi.T) * sign
    return scores.numpy(), precompute, explain


def tracin_scores(ctx: Dict[str, Any], epochs: Sequence[int]) -> Tuple[np.ndarray, Timing, Timing]:
    """Captum's TracInCPFast on the final layer over the first full model's given epochs."""
    from captum.influence import TracInCPFast

    seed = ctx["settings"]["ensemble_seeds"][0]
    net = load_model(ctx["cache"], seed, epochs[-1])
    train_set = TensorDataset(ctx["x_train"], ctx["y_train"])
    with Timing() as precompute:
        explainer = TracInCPFast(
            net,
            net.fc,
            train_set,
            [checkpoint_path(ctx["cache"], seed, e) for e in epochs],
            loss_fn=nn.CrossEntropyLoss(reduction="sum"),
            batch_size=256,
        )
    with Timing() as explain:
        scores = explainer.influence((ctx["x_test"], ctx["y_test"]))
    return scores.double().numpy(), precompute, explain


def dattri_available() -> bool:
    """True if dattri's TRAK, RPS and lds import (dattri is an optional benchmark extra)."""
    try:
        from dattri.algorithm.rps import RPSAttributor  # noqa: F401
        from dattri.algorithm.trak import TRAKAttributor  # noqa: F401
        from dattri.metric import lds as _  # noqa: F401
        from dattri.task import AttributionTask  # noqa: F401
    except ImportError:
        return False
    return True


class _quiet_tqdm:
    """Silence dattri's own progress bars (it creates tqdm bars unconditionally)."""

    def __enter__(self) -> None:
        from functools import partialmethod

        self._old = tqdm.__init__
        tqdm.__init__ = partialmethod(tqdm.__init__, disable=True)  # type: ignore[method-assign]

    def __exit__(self, *exc: Any) -> None:
        tqdm.__init__ = self._old  # type: ignore[method-assign]


def trak_scores(
    ctx: Dict[str, Any], models: Sequence[Tuple[int, int]], proj_dim: int
) -> Tuple[np.ndarray, Timing, Timing]:
    """dattri's TRAK on all parameters over the given (seed, epoch) models."""
    from dattri.algorithm.trak import TRAKAttributor
    from dattri.task import AttributionTask

    net = DigitsCNN().eval()

    def output_fn(params: Dict[str, torch.Tensor], data: Tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        image, label = data  # one sample: dattri vmaps over the batch
        logits = torch.func.functional_call(net, params, image.unsqueeze(0))[0]
        is_label = torch.arange(logits.shape[0]) == label  # no data-dependent indexing under vmap
        others = logits.masked_fill(is_label, float("-inf"))
        return (logits * is_label).sum() - torch.logsumexp(others, 0)  # log(p / (1 - p)), stable

    def probability_fn(params: Dict[str, torch.Tensor], data: Tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        image, label = data
        logits = torch.func.functional_call(net, params, image.unsqueeze(0))[0]
        return (torch.softmax(logits, 0) * (torch.arange(logits.shape[0]) == label)).sum()

    def load(model: nn.Module, path: str) -> nn.Module:
        model.load_state_dict(torch.load(path))
        return model.eval()

    checkpoints = [checkpoint_path(ctx["cache"], s, e) for s, e in models]
    task = AttributionTask(loss_func=output_fn, model=net, checkpoints=checkpoints, checkpoints_load_func=load)
    attributor = TRAKAttributor(
        task=task,
        correct_probability_func=probability_fn,
        device="cpu",
        projector_kwargs={"proj_dim": proj_dim, "proj_max_batch_size": 32, "proj_seed": 0, "device": "cpu"},
    )
    train_loader = DataLoader(TensorDataset(ctx["x_train"], ctx["y_train"]), batch_size=128, shuffle=False)
    test_loader = DataLoader(TensorDataset(ctx["x_test"], ctx["y_test"]), batch_size=100, shuffle=False)
    with _quiet_tqdm(), Timing() as precompute:
        attributor.cache(train_loader)
    with _quiet_tqdm(), Timing() as explain:
        scores = attributor.attribute(test_loader)  # (n_train, n_test)
    return scores.T.double().numpy(), precompute, explain


def rps_scores(ctx: Dict[str, Any]) -> Tuple[np.ndarray, Timing, Timing]:
    """dattri's representer point selection on the final full model (dattri's defaults)."""
    from dattri.algorithm.rps import RPSAttributor
    from dattri.task import AttributionTask

    net = load_model(ctx["cache"], ctx["settings"]["ensemble_seeds"][0], ctx["settings"]["epochs"])

    def loss_fn(pre_activation: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(pre_activation, labels)

    task = AttributionTask(loss_func=loss_fn, model=net, checkpoints=net.state_dict())
    attributor = RPSAttributor(task=task, final_linear_layer_name="fc", device="cpu")
    train_loader = DataLoader(TensorDataset(ctx["x_train"], ctx["y_train"]), batch_size=256, shuffle=False)
    test_loader = DataLoader(TensorDataset(ctx["x_test"], ctx["y_test"]), batch_size=256, shuffle=False)
    with _quiet_tqdm(), Timing() as precompute:
        attributor.cache(train_loader)
    with Timing() as explain:
        scores = attributor.attribute(train_loader, test_loader)  # (n_train, n_test)
    return scores.T.double().numpy(), precompute, explain


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------
def ensembles(settings: Dict[str, Any]) -> Dict[str, List[Tuple[int, int]]]:
    """Ensemble label -> its (seed, epoch) members."""
    seed0, last, seeds = settings["ensemble_seeds"][0], settings["epochs"], settings["ensemble_seeds"]
    out = {}
    for epochs in (CHECKPOINT_EPOCHS, CHECKPOINT_EPOCHS_5):
        kept = [e for e in epochs if e <= last]
        out[f"ckpts x{len(kept)}"] = [(seed0, e) for e in kept]
    out["seeds x3"] = [(s, last) for s in seeds[:3]]
    out[f"seeds x{len(seeds)}"] = [(s, last) for s in seeds]
    return out


def evaluate(ctx: Dict[str, Any], include_dattri: bool, show_progress: bool) -> List[Dict[str, Any]]:
    """Every method's scores, LDS and times (the rows of the tables)."""
    settings = ctx["settings"]
    seed0, last = settings["ensemble_seeds"][0], settings["epochs"]
    groups = ensembles(settings)
    runs = DualDARuns(ctx)
    rows: List[Dict[str, Any]] = []

    def add(name: str, scores: np.ndarray, precompute: Timing, explain: Timing, **extra: Any) -> None:
        result = lds(scores, ctx["subsets"], ctx["margins"])
        n_test = len(ctx["y_test"])
        rows.append(
            dict(
                name=name,
                per_sample=result.per_sample,
                lds=result.mean,
                n_valid=result.n_valid,
                precompute_s=precompute.wall,
                precompute_cpu_s=precompute.cpu,
                ms_per_test=1000 * explain.wall / n_test,
                cpu_ms_per_test=1000 * explain.cpu / n_test,
                **extra,
            )
        )

    jobs: List[Callable[[], None]] = []
    for C in CS:

        def single(C: float = C) -> None:
            run = runs.get(seed0, last, C)
            add(
                f"DualDA C={C:g}",
                run["scores"],
                run["precompute"],
                run["explain"],
                n_support=run["n_support"],
                converged=run["converged"],
            )
            add(f"DualDA margin C={C:g}", run["margin_scores"], run["precompute"], run["explain_margin"])

        jobs.append(single)
    for label, models in groups.items():
        for C in CS:

            def ensemble(C: float = C, label: str = label, models: List[Tuple[int, int]] = models) -> None:
                member = [runs.get(s, e, C) for s, e in models]
                add(
                    f"DualDA {label} C={C:g}",
                    np.mean([r["scores"] for r in member], 0),
                    sum((r["precompute"] for r in member), Timing()),
                    sum((r["explain"] for r in member), Timing()),
                    members=len(models),
                    converged=all(r["converged"] for r in member),
                )

            jobs.append(ensemble)
    ckpts = [e for _, e in groups["ckpts x3"]]
    jobs.append(lambda: add("TracInCPFast (final ckpt)", *tracin_scores(ctx, [last])))
    jobs.append(lambda: add("TracInCPFast (ckpts x3)", *tracin_scores(ctx, ckpts)))
    jobs.append(lambda: add("similarity (label-signed dot)", *similarity_scores(ctx, False)))
    jobs.append(lambda: add("similarity (label-signed cosine)", *similarity_scores(ctx, True)))

    def random_scores() -> None:
        rng = np.random.default_rng(0)
        add("random", rng.standard_normal((len(ctx["y_test"]), len(ctx["y_train"]))), Timing(), Timing())

    jobs.append(random_scores)
    if include_dattri:
        proj = settings["trak_proj_dim"]
        jobs.append(lambda: add("dattri TRAK (final ckpt)", *trak_scores(ctx, [(seed0, last)], proj)))
        for label in ("ckpts x3", "ckpts x5", "seeds x3"):
            jobs.append(lambda label=label: add(f"dattri TRAK ({label})", *trak_scores(ctx, groups[label], proj)))
        jobs.append(lambda: add("dattri RPS (final model)", *rps_scores(ctx)))
    for job in tqdm(jobs, desc="attributions", unit="method", file=sys.stderr, disable=not show_progress):
        job()

    # The floor every method pays: the network's forward pass over the test images (median of 5).
    net = load_model(ctx["cache"], seed0, last)
    with torch.no_grad():
        _, ctx["forward"] = _median_timing(lambda: net(ctx["x_test"]), 5)

    if include_dattri:  # our metric against dattri's own lds on the same scores
        from dattri.metric import lds as dattri_lds

        indices = torch.from_numpy(np.stack([np.flatnonzero(mask) for mask in ctx["subsets"]]))
        theirs = dattri_lds(
            torch.from_numpy(runs.get(seed0, last, 1e-3)["scores"]).T, (torch.from_numpy(ctx["margins"]), indices)
        )[0].numpy()
        ours = next(r for r in rows if r["name"] == REFERENCE)["per_sample"]
        ctx["dattri_lds_max_diff"] = float(np.nanmax(np.abs(theirs - ours)))
    return rows


def paired(rows: Dict[str, Dict[str, Any]], name: str, reference: str) -> Tuple[float, float]:
    """Mean per-test-sample difference ``name - reference`` and its standard error."""
    a, b = rows[name]["per_sample"], rows[reference]["per_sample"]
    ok = ~np.isnan(a) & ~np.isnan(b)
    diff = a[ok] - b[ok]
    if diff.size < 2:
        return float("nan"), float("nan")
    return float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(diff.size))


def ceiling(ctx: Dict[str, Any]) -> Dict[str, float]:
    """Seed-noise ceiling from the subsets trained twice (see the module docstring)."""
    second = ctx["margins_second"]
    if second is None or second.shape[0] < 3:
        return {}
    first = ctx["margins"][: second.shape[0]]
    # lds with singleton "subsets" {m} and an identity score matrix: Spearman of first vs second per column
    rho = np.array(
        [
            lds(first[:, [t]].T, np.eye(len(first), dtype=bool), second[:, [t]]).per_sample[0]
            for t in range(first.shape[1])
        ]
    )
    rho = rho[~np.isnan(rho)]
    return dict(
        two_seed=float(rho.mean()),
        two_seed_se=float(rho.std(ddof=1) / np.sqrt(rho.size)),
        ceiling=float(np.sqrt(np.clip(rho, 0, None)).mean()),
        ceiling_of_mean=float(np.sqrt(max(rho.mean(), 0))),
        n_subsets=int(second.shape[0]),
    )


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------
def _num(value: Optional[float], spec: str) -> str:
    return "–" if value is None or (isinstance(value, float) and np.isnan(value)) else format(value, spec)


def _diff(rows: Dict[str, Dict[str, Any]], name: str, reference: str) -> str:
    if name not in rows or reference not in rows:
        return "–"
    d, se = paired(rows, name, reference)
    return f"{d:+.3f} ± {se:.3f}"


def main_table(rows: List[Dict[str, Any]], settings: Dict[str, Any]) -> str:
    by_name = {r["name"]: r for r in rows}
    shown_ensembles = {f"DualDA {label} C={C:g}" for label in ensembles(settings) for C in (1e-4, 1e-3)}
    lines = [
        "| method | LDS | SE | diff vs DualDA C=1e-3 (paired SE) | precompute [s] | ms / test | "
        "precompute CPU [s] | CPU ms / test |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        name = row["name"]
        if name.startswith("DualDA margin") or (
            name.startswith("DualDA ") and "x" in name.split("C=")[0] and name not in shown_ensembles
        ):
            continue
        values = row["per_sample"][~np.isnan(row["per_sample"])]
        se = values.std(ddof=1) / np.sqrt(values.size) if values.size > 1 else float("nan")
        label = name + (f" ({row['n_support']} SV)" if "n_support" in row else "")
        diff = "(reference)" if name == REFERENCE else _diff(by_name, name, REFERENCE)
        lines.append(
            f"| {label} | {row['lds']:.3f} | {se:.3f} | {diff} | {_num(row['precompute_s'], '.2f')} | "
            f"{_num(row['ms_per_test'], '.3g')} | {_num(row['precompute_cpu_s'], '.2f')} | "
            f"{_num(row['cpu_ms_per_test'], '.3g')} |"
        )
    return "\n".join(lines)


def ensemble_table(rows: List[Dict[str, Any]], settings: Dict[str, Any]) -> str:
    """LDS per C: single model, margin split, and each ensemble (paired difference to the single model)."""
    by_name = {r["name"]: r for r in rows}
    labels = list(ensembles(settings))
    trak = {
        "ckpts x3": "dattri TRAK (ckpts x3)",
        "ckpts x5": "dattri TRAK (ckpts x5)",
        "seeds x3": "dattri TRAK (seeds x3)",
    }
    header = ["C", "single model", "margin split"] + [f"ensemble {label}" for label in labels]
    header += [f"{label} vs TRAK {label}" for label in labels if label in trak]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for C in CS:
        single = f"DualDA C={C:g}"
        cells = [
            f"{C:g}",
            f"{by_name[single]['lds']:.3f}",
            f"{by_name[f'DualDA margin C={C:g}']['lds']:.3f} ({_diff(by_name, f'DualDA margin C={C:g}', single)})",
        ]
        for label in labels:
            name = f"DualDA {label} C={C:g}"
            cells.append(f"{by_name[name]['lds']:.3f} ({_diff(by_name, name, single)})")
        for label in labels:
            if label in trak:
                cells.append(_diff(by_name, f"DualDA {label} C={C:g}", trak[label]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def warm_up_solver() -> None:
    """Compile (or load from numba's disk cache) the SVM solver outside the timed fits."""
    from captum_dualxda import fit_crammer_singer

    rng = np.random.default_rng(0)
    fit_crammer_singer(
        torch.tensor(rng.random((50, 4)), dtype=torch.float32), torch.tensor(rng.integers(0, 3, 50)), C=0.1
    )


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-subsets", type=int, default=100, help="M, retrained models (default 100)")
    parser.add_argument("--n-second", type=int, default=32, help="subsets retrained with a second seed (default 32)")
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--subset-seed", type=int, default=2024)
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--trak-proj-dim", type=int, default=512)
    parser.add_argument("--skip-dattri", action="store_true", help="leave out dattri's TRAK and RPS even if installed")
    parser.add_argument("--out", default=None, help="write every number (per-sample LDS included) as JSON here")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if not args.n_subsets >= 2 or not 0 <= args.n_second <= args.n_subsets:
        parser.error("need --n-subsets >= 2 and 0 <= --n-second <= --n-subsets")
    torch.set_num_threads(1)  # fastest for this tiny CNN (see captum_dualxda.demo.run_demo)
    settings = dict(
        n_subsets=args.n_subsets,
        n_second=args.n_second,
        n_test=args.n_test,
        fraction=0.5,
        subset_seed=args.subset_seed,
        data_seed=0,
        epochs=args.epochs,
        ensemble_seeds=list(ENSEMBLE_SEEDS),
        trak_proj_dim=args.trak_proj_dim,
    )
    load_start = os.getloadavg()
    with Timing() as t_prepare:
        ctx = prepare(settings, not args.quiet)
    ctx["settings"] = settings
    include_dattri = not args.skip_dattri and dattri_available()
    warm_up_solver()
    with Timing() as t_eval:
        rows = evaluate(ctx, include_dattri, not args.quiet)
    ceil = ceiling(ctx)
    load_end = os.getloadavg()

    with torch.no_grad():
        net = load_model(ctx["cache"], settings["ensemble_seeds"][0], settings["epochs"])
        acc = float((net(ctx["x_test"]).argmax(1) == ctx["y_test"]).float().mean())
    header = (
        f"{datetime.datetime.now():%Y-%m-%d %H:%M}, {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}, torch {torch.__version__} (1 thread); load average "
        f"{load_start[0]:.1f} at start, {load_end[0]:.1f} at end. M = {args.n_subsets} subsets of "
        f"{int(ctx['subsets'][0].sum())} / {len(ctx['y_train'])} training images, {len(ctx['y_test'])} test images "
        f"(full model's test accuracy on them {acc:.3f}); retraining {ctx['retrain_seconds']:.1f} s per model "
        f"(median), {ctx['n_trained_now']} models trained in this run ({t_prepare.wall:.0f} s), attributions "
        f"{t_eval.wall:.0f} s; dattri {'included' if include_dattri else 'not run'}"
        + (f" (its lds agrees with ours to {ctx['dattri_lds_max_diff']:.1e})" if "dattri_lds_max_diff" in ctx else "")
        + f"; cache {os.path.relpath(ctx['cache'], os.path.dirname(HERE))}. The network's forward pass over the "
        f"test images alone takes {1000 * ctx['forward'].wall / len(ctx['y_test']):.3g} ms per test sample "
        f"({1000 * ctx['forward'].cpu / len(ctx['y_test']):.3g} ms CPU)."
    )
    tables = [main_table(rows, settings), ensemble_table(rows, settings)]
    lines = [
        header,
        "",
        tables[0],
        "",
        "DualDA ensembles: LDS (paired difference to the single final model at the same C ± SE); "
        "last columns: ensemble minus TRAK on the same models (± paired SE).",
        "",
        tables[1],
        "",
    ]
    if ceil:
        lines.append(
            f"Seed-noise ceiling ({ceil['n_subsets']} subsets trained with two seeds): Spearman correlation of the "
            f"two seeds' margins {ceil['two_seed']:.3f} (SE {ceil['two_seed_se']:.3f}); ceiling for a subset-only "
            f"predictor sqrt(rho) {ceil['ceiling']:.3f} (mean of per-sample values; sqrt of the mean "
            f"{ceil['ceiling_of_mean']:.3f})."
        )
    text = "\n".join(lines)
    print(text)
    if args.out:
        report = dict(
            header=header,
            settings=settings,
            ceiling=ceil,
            markdown=text,
            rows=[{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in r.items()} for r in rows],
        )
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
