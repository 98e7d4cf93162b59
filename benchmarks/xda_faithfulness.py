"""XDA faithfulness: pixel flipping on both sides of DualDA pairs, per Zennit composite.

Conservation says that an XDA heatmap adds up to the DualDA score; it does not say that it points
at the pixels the score depends on. This benchmark measures that with pixel flipping. For a pair
(test image ``x``, training image ``x_j``, explained class ``c``) with score

    tau = a_j^c * phi(x_j) . phi(x)

* **training side**: order the pixels of ``x_j`` by their XDA relevance (most relevant first;
  for an opponent, ``tau < 0``, by ``-relevance``: the most negative first), replace them with a
  baseline value in 16 equal steps (all channels of a pixel together), recompute ``phi(x_j')``
  with the network and ``tau' = a_j^c * phi(x_j') . phi(x)`` with the dual coefficient fixed;
* **test side**: the same with the pixels of ``x`` ordered by the test-side heatmap,
  ``tau' = a_j^c * phi(x_j) . phi(x')``.

The score is the area under ``tau' / tau`` over the removed fraction (0 to 1, trapezoids over the
17 points): **lower is more faithful** (the heatmap found the pixels whose removal destroys the
score first). Ties (e.g. the zero relevance that the z+ rule gives a zero pixel) are broken at
random. Every curve starts at 1. Compared orders:

* XDA with ``EpsilonPlus``, ``EpsilonGammaBox`` (``low``/``high`` = the input bounds),
  ``EpsilonAlpha2Beta1`` and ``EpsilonPlusFlat``, all ``zero_params="bias"``, with
  ``SequentialMergeBatchNorm`` (digits CNN) or ``zennit.torchvision.ResNetCanonizer`` (ResNet);
* gradient x input: ``x * d tau / d x`` of the unmodified network (for the training side the
  gradient of ``tau`` with respect to ``x_j``, for the test side with respect to ``x``);
* a random order (the mean of 2 random permutations per pair).

Two baselines for a removed pixel: ``background`` (the value of a blank pixel, 0 in ``[0, 1]``
pixel space: removing ink) and ``mean`` (the training pixels' per-channel mean, 0 after
standardisation). Both are reported; the summary ranks by the mean area over both sides and both
baselines.

Models (sklearn's digits, nothing downloaded; 10 % of the training labels flipped, as in the demo):

* ``cnn``: the demo's :class:`~captum_dualxda.demo.DigitsCNN` (conv + batch norm, 8x8 inputs in
  ``[0, 1]``), :func:`~captum_dualxda.demo.train_cnn`, 12 epochs.
* ``resnet``: torchvision ``resnet18(weights=None, num_classes=10)`` trained here with Adam on
  the digits upsampled (bilinear) to 3x32x32 and standardised with the training pixels' mean and
  std (as ImageNet models see normalised inputs), 8 epochs.

DualDA with the default ``C`` on each. CNN: the first ``--n-test`` test samples (default 64), each
with its top ``--k`` (default 5) proponents (64 x 5 = 320 pairs) and, unless ``--no-opponents``,
its top ``--k`` opponents. ResNet: the first ``--resnet-n-test`` (default 32) test samples with
their top-5 proponents (160 pairs; opponents with ``--resnet-opponents``). The explained class
is the network's prediction. ``--seed`` changes the split, the flipped labels, the training and
the tie-breaks.

Run from the repository root::

    nice -n 10 python benchmarks/xda_faithfulness.py --out faithfulness.json   # both models, 16 min
    nice -n 10 python benchmarks/xda_faithfulness.py --models cnn              # digits CNN only, 1.5 min
    python benchmarks/xda_faithfulness.py --quick                              # smoke run, small sizes
    python benchmarks/xda_faithfulness.py --from-json faithfulness.json        # print the tables again

Times measured on 2 shared CPU cores at load average 8-14 (torch 2.14.1, 1 thread): the digits
CNN takes 1.5 min; the ResNet 14 min, of which training 5 min, the XDA heatmaps 5 min and the
flipping (17 forward passes per order, side and baseline) 4 min. On busy cores keep
``--threads 1``: a smoke run of the CNN took 385 s with 2 threads and 17 s with 1 (load 11-15). It
prints Markdown tables: per side
and baseline the mean area +- a standard error clustered by test sample, the paired difference
of each order to the best one, the median conservation error ``|heatmap sum - tau| / |tau|`` and
ms per pair for both heatmaps; then a summary over both sides and both baselines that names the
lowest order (and the lowest LRP composite when gradient x input is lower).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torchvision
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonAlpha2Beta1, EpsilonGammaBox, EpsilonPlus, EpsilonPlusFlat
from zennit.core import Composite
from zennit.torchvision import ResNetCanonizer

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from captum_dualxda import XDA, DualDA, xda_pairs  # noqa: E402
from captum_dualxda.demo import load_digits_data, train_cnn  # noqa: E402

GRAD_X_INPUT = "gradient x input"
RANDOM = "random order"
N_STEPS = 16  # pixels are removed in 16 equal steps: 17 points on the curve
N_RANDOM = 2  # random permutations per pair for the random order (areas averaged)


def log(message: str) -> None:
    """Progress on stderr, with the time."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------
def to_rgb32(x: torch.Tensor) -> torch.Tensor:
    """``(N, 1, 8, 8)`` digits in [0, 1] -> ``(N, 3, 32, 32)`` (bilinear, clamped to [0, 1])."""
    return F.interpolate(x, size=32, mode="bilinear", align_corners=False).clamp(0, 1).repeat(1, 3, 1, 1)


def train_resnet(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int = 0) -> nn.Module:
    """torchvision ResNet18 (random init, 10 classes) trained with Adam on ``(x, y)``; eval mode."""
    torch.manual_seed(seed)
    net = torchvision.models.resnet18(weights=None, num_classes=10)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    generator = torch.Generator().manual_seed(seed + 1)
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(y), generator=generator).split(64):
            optimizer.zero_grad()
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            optimizer.step()
        scheduler.step()
    return net.eval()


class Setting:
    """One architecture: model, data, input bounds, baselines and the composites to compare."""

    def __init__(
        self,
        name: str,
        net: nn.Module,
        x_train: torch.Tensor,
        y_train: torch.Tensor,
        x_test: torch.Tensor,
        y_test: torch.Tensor,
        low: torch.Tensor,
        high: torch.Tensor,
        baselines: Dict[str, torch.Tensor],
        canonizer: Callable[[], object],
        train_time: float,
    ) -> None:
        self.name, self.net = name, net
        self.x_train, self.y_train, self.x_test, self.y_test = x_train, y_train, x_test, y_test
        self.low, self.high, self.baselines = low, high, baselines
        self.canonizer, self.train_time = canonizer, train_time

    def composites(self) -> Dict[str, Optional[Callable[[], Composite]]]:
        """Name -> factory of a fresh composite (None: gradient x input, no composite)."""
        can = self.canonizer
        return {
            "EpsilonPlus": lambda: EpsilonPlus(zero_params="bias", canonizers=[can()]),
            "EpsilonGammaBox": lambda: EpsilonGammaBox(
                low=self.low, high=self.high, zero_params="bias", canonizers=[can()]
            ),
            "EpsilonAlpha2Beta1": lambda: EpsilonAlpha2Beta1(zero_params="bias", canonizers=[can()]),
            "EpsilonPlusFlat": lambda: EpsilonPlusFlat(zero_params="bias", canonizers=[can()]),
            GRAD_X_INPUT: None,
        }


def cnn_setting(data, epochs: int, seed: int) -> Setting:
    start = time.perf_counter()
    net = train_cnn(data.x_train, data.y_train, epochs=epochs, seed=seed)
    train_time = time.perf_counter() - start
    mean = data.x_train.mean()
    return Setting(
        "digits CNN (DigitsCNN, 1x8x8)",
        net,
        data.x_train,
        data.y_train,
        data.x_test,
        data.y_test,
        low=torch.tensor(0.0),
        high=torch.tensor(1.0),
        baselines={"background": torch.zeros(1, 1, 1, 1), "mean": mean.reshape(1, 1, 1, 1)},
        canonizer=SequentialMergeBatchNorm,
        train_time=train_time,
    )


def resnet_setting(data, epochs: int, seed: int) -> Setting:
    raw_train, raw_test = to_rgb32(data.x_train), to_rgb32(data.x_test)
    mean = raw_train.mean((0, 2, 3), keepdim=True)  # (1, 3, 1, 1)
    std = raw_train.std((0, 2, 3), keepdim=True)
    x_train, x_test = (raw_train - mean) / std, (raw_test - mean) / std
    start = time.perf_counter()
    net = train_resnet(x_train, data.y_train, epochs, seed)
    train_time = time.perf_counter() - start
    return Setting(
        "ResNet18 (torchvision, 3x32x32, standardised)",
        net,
        x_train,
        data.y_train,
        x_test,
        data.y_test,
        low=(0 - mean) / std,
        high=(1 - mean) / std,
        baselines={"background": (0 - mean) / std, "mean": torch.zeros(1, 3, 1, 1)},
        canonizer=ResNetCanonizer,
        train_time=train_time,
    )


# --------------------------------------------------------------------------------------------
# Heatmaps
# --------------------------------------------------------------------------------------------
def gradient_x_input(net: nn.Module, x: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """``x * d (phi(x) . direction) / d x`` per sample: gradient x input of the unmodified network.

    ``x`` ``(P, C, H, W)``, ``direction`` ``(P, d)`` (``a * phi(partner)``, so the product is tau).
    ``XDA`` without a composite propagates the constant output gradient ``direction`` as is.
    """
    _, grad = XDA(net, "fc")(x, direction)
    return x * grad


def heatmaps(
    setting: Setting,
    dualda: DualDA,
    make: Optional[Callable[[], Composite]],
    x: torch.Tensor,
    targets: torch.Tensor,
    idx: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Training- and test-side heatmaps ``(P, C, H, W)``, scores and coefficients ``(P,)``, ms per pair.

    ``P = n_test * k`` pairs in the order (test sample, partner).
    """
    n, k = idx.shape
    start = time.perf_counter()
    if make is not None:
        pairs = xda_pairs(dualda, XDA(setting.net, "fc", make()), x, targets, idx)
        train_rel = pairs.train_relevance.flatten(0, 1)
        test_rel = pairs.test_relevance.flatten(0, 1)
        scores, coef = pairs.scores.flatten(), pairs.coefficients.flatten()
    else:
        plain = XDA(setting.net, "fc")
        x_tr = setting.x_train[idx.flatten()]
        x_te = x.repeat_interleave(k, dim=0)
        phi_tr, phi_te = plain.features(x_tr), plain.features(x_te)
        coef = dualda.coefficients_at(idx, targets[:, None]).flatten()
        scores = coef * (phi_tr * phi_te).sum(1)
        train_rel = gradient_x_input(setting.net, x_tr, coef[:, None] * phi_te)
        test_rel = gradient_x_input(setting.net, x_te, coef[:, None] * phi_tr)
    ms = 1000 * (time.perf_counter() - start) / idx.numel()
    return train_rel, test_rel, scores, coef, ms


# --------------------------------------------------------------------------------------------
# Pixel flipping
# --------------------------------------------------------------------------------------------
def pixel_order(relevance: torch.Tensor, sign: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``(P, H*W)`` pixel indices, most relevant first (relevance summed over channels, times ``sign``).

    Ties are broken at random: the pixels are shuffled before a stable sort.
    """
    score = relevance.sum(1).flatten(1) * sign[:, None]  # (P, H*W)
    shuffle = torch.stack([torch.randperm(score.shape[1], generator=generator) for _ in range(score.shape[0])])
    ranked = torch.argsort(-torch.gather(score, 1, shuffle), dim=1, stable=True)
    return torch.gather(shuffle, 1, ranked)


def flip_curves(
    phi_of: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    order: torch.Tensor,
    baseline: torch.Tensor,
    partner: torch.Tensor,
    tau0: torch.Tensor,
) -> torch.Tensor:
    """``(P, N_STEPS + 1)`` ``tau'/tau0`` as ever more pixels (in ``order``) are set to ``baseline``.

    ``x`` ``(P, C, H, W)``; ``partner`` ``(P, d)`` is ``a * phi(other image)``, so
    ``tau' = phi(x') . partner``.
    """
    p, c, h, w = x.shape
    n_pix = h * w
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(n_pix).expand(p, n_pix).contiguous())  # rank of each pixel
    counts = torch.tensor([round(step * n_pix / N_STEPS) for step in range(N_STEPS + 1)])
    removed = (rank[:, None, :] < counts[None, :, None]).reshape(p, N_STEPS + 1, 1, h, w)
    x_flip = torch.where(removed, baseline.expand(1, 1, c, h, w), x[:, None])  # (P, S+1, C, H, W)
    phi = phi_of(x_flip.flatten(0, 1)).reshape(p, N_STEPS + 1, -1)  # one batched pass
    return (phi * partner[:, None, :]).sum(2) / tau0[:, None]


def area(curves: torch.Tensor) -> torch.Tensor:
    """``(P,)`` area under each curve over the removed fraction [0, 1] (trapezoids)."""
    return torch.trapezoid(curves, dx=1.0 / N_STEPS, dim=1)


# --------------------------------------------------------------------------------------------
# One architecture
# --------------------------------------------------------------------------------------------
def evaluate(setting: Setting, n_test: int, k: int, opponents: bool, seed: int = 0) -> Dict:
    net = setting.net
    with torch.no_grad():
        accuracy = float((net(setting.x_test).argmax(1) == setting.y_test).float().mean())
    start = time.perf_counter()
    dualda = DualDA(net, "fc", TensorDataset(setting.x_train, setting.y_train), batch_size=256, seed=seed)
    fit_time = time.perf_counter() - start
    log(f"{setting.name}: trained in {setting.train_time:.0f} s, test accuracy {accuracy:.3f}, DualDA fitted")
    x = setting.x_test[:n_test]
    with torch.no_grad():
        targets = net(x).argmax(1)
    plain = XDA(net, "fc")

    def phi_of(batch: torch.Tensor) -> torch.Tensor:
        return torch.cat([plain.features(part) for part in batch.split(1024)])

    phi_test = phi_of(x)
    result = {
        "name": setting.name,
        "test_accuracy": accuracy,
        "train_time_s": setting.train_time,
        "dualda_fit_s": fit_time,
        "n_support": int(dualda.support_indices.numel()),
        "n_train": len(setting.y_train),
        "kinds": {},
    }
    kinds = [("proponents", True)] + ([("opponents", False)] if opponents else [])
    for kind, pro in kinds:
        top = dualda.influence((x, targets), k=k, proponents=pro)
        keep = top.influence_scores != 0  # a zero score has no curve
        idx = top.indices
        x_tr = setting.x_train[idx.flatten()]
        x_te = x.repeat_interleave(k, dim=0)
        phi_tr, phi_te = phi_of(x_tr), phi_test.repeat_interleave(k, dim=0)
        coef = dualda.coefficients_at(idx, targets[:, None]).flatten()
        tau0 = coef * (phi_tr * phi_te).sum(1)
        valid = keep.flatten() & (tau0 != 0)
        sign = torch.sign(tau0)
        orders: Dict[str, Dict[str, torch.Tensor]] = {}
        info: Dict[str, Dict[str, float]] = {}
        generator = torch.Generator().manual_seed(seed)
        for name, make in setting.composites().items():
            train_rel, test_rel, scores, _, ms = heatmaps(setting, dualda, make, x, targets, idx)
            if not torch.allclose(scores, tau0, rtol=1e-4, atol=1e-6):
                raise RuntimeError(f"{name}: the pair scores differ from the recomputed tau")
            cons = [
                float(((rel.flatten(1).sum(1) - tau0).abs() / tau0.abs())[valid].median())
                for rel in (train_rel, test_rel)
            ]
            orders[name] = {
                "train": pixel_order(train_rel, sign, generator),
                "test": pixel_order(test_rel, sign, generator),
            }
            info[name] = {"ms_per_pair": ms, "conservation_train": cons[0], "conservation_test": cons[1]}
        log(f"  {kind}: heatmaps done")
        n_pix = x.shape[2] * x.shape[3]
        random_orders = [
            torch.stack([torch.randperm(n_pix, generator=generator) for _ in range(len(tau0))]) for _ in range(N_RANDOM)
        ]
        areas: Dict[str, Dict[str, Dict[str, List[float]]]] = {}
        for baseline_name, baseline in setting.baselines.items():
            areas[baseline_name] = {}
            for name in list(orders) + [RANDOM]:
                per_side = {}
                for side in ("train", "test"):
                    image = x_tr if side == "train" else x_te
                    partner = coef[:, None] * (phi_te if side == "train" else phi_tr)
                    if name == RANDOM:
                        a = torch.stack(
                            [area(flip_curves(phi_of, image, o, baseline, partner, tau0)) for o in random_orders]
                        ).mean(0)
                    else:
                        a = area(flip_curves(phi_of, image, orders[name][side], baseline, partner, tau0))
                    per_side[side] = a[valid].tolist()
                areas[baseline_name][name] = per_side
            log(f"  {kind}: flipping to {baseline_name} done")
        groups = torch.arange(n_test).repeat_interleave(k)[valid].tolist()  # test sample of each pair
        result["kinds"][kind] = {"n_pairs": int(valid.sum()), "groups": groups, "info": info, "areas": areas}
    return result


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------
def mean_se(values: List[float], groups: List[int]) -> Tuple[float, float]:
    """Mean over the pairs and its standard error clustered by test sample.

    The pairs of one test sample share its image (and its partners are alike), so they are not
    independent: the standard error is that of the per-test-sample means (equal group sizes make
    their mean the overall mean).
    """
    v, g = np.asarray(values, dtype=np.float64), np.asarray(groups)
    means = np.array([v[g == c].mean() for c in np.unique(g)])
    se = float(means.std(ddof=1) / math.sqrt(len(means))) if len(means) > 1 else float("nan")
    return float(v.mean()), se


def both_sides(areas: Dict[str, List[float]]) -> np.ndarray:
    """Per-pair mean of the training- and test-side areas."""
    return (np.asarray(areas["train"]) + np.asarray(areas["test"])) / 2


def combined(per_baseline: Dict[str, Dict[str, Dict[str, List[float]]]], name: str) -> np.ndarray:
    """Per-pair mean area of order ``name`` over both sides and every baseline."""
    return np.mean([both_sides(areas[name]) for areas in per_baseline.values()], axis=0)


def choose(
    per_baseline: Dict[str, Dict[str, Dict[str, List[float]]]], groups: List[int]
) -> Tuple[str, Dict[str, Tuple[float, float]]]:
    """The order (random excluded) with the lowest mean area over both sides and the given baselines,
    and for every order the paired difference to it (mean, clustered standard error)."""
    names = [n for n in next(iter(per_baseline.values())) if n != RANDOM]
    best = min(names, key=lambda n: combined(per_baseline, n).mean())
    diffs = {
        n: mean_se(list(combined(per_baseline, n) - combined(per_baseline, best)), groups)
        for n in next(iter(per_baseline.values()))
    }
    return best, diffs


def report(results: List[Dict]) -> str:
    lines = []
    for res in results:
        lines.append(f"### {res['name']}")
        lines.append("")
        lines.append(
            f"Test accuracy {res['test_accuracy']:.3f}; trained in {res['train_time_s']:.0f} s; DualDA "
            f"fit {res['dualda_fit_s']:.1f} s, {res['n_support']} of {res['n_train']} training samples "
            "are support vectors."
        )
        lines.append("")
        for kind, block in res["kinds"].items():
            lines.append(
                f"**{kind}** ({block['n_pairs']} pairs); area under tau'/tau0, mean +- standard error "
                "(lower is more faithful; standard errors clustered by test sample); 'diff' = paired "
                "difference of the mean of both sides to the best composite, +- its standard error"
            )
            lines.append("")
            baselines = list(block["areas"])
            header = (
                "| order | "
                + " | ".join(f"train ({b}) | test ({b}) | diff ({b})" for b in baselines)
                + " | conservation train / test | ms / pair |"
            )
            lines.append(header)
            lines.append("|---" * (1 + 3 * len(baselines) + 2) + "|")
            groups = block["groups"]
            chosen = {b: choose({b: block["areas"][b]}, groups) for b in baselines}
            for name in block["areas"][baselines[0]]:
                cells = []
                for b in baselines:
                    a = block["areas"][b][name]
                    best, diffs = chosen[b]
                    tr, te = mean_se(a["train"], groups), mean_se(a["test"], groups)
                    d = diffs[name]
                    diff = "best" if name == best else f"{d[0]:+.3f} +- {d[1]:.3f}"
                    cells += [f"{tr[0]:.3f} +- {tr[1]:.3f}", f"{te[0]:.3f} +- {te[1]:.3f}", diff]
                inf = block["info"].get(name)
                cons = f"{inf['conservation_train']:.3f} / {inf['conservation_test']:.3f}" if inf else "-"
                ms = f"{inf['ms_per_pair']:.1f}" if inf else "-"
                lines.append(f"| {name} | " + " | ".join(cells) + f" | {cons} | {ms} |")
            lines.append("")
            for b in baselines:
                lines.append(f"- lowest mean area over both sides, baseline {b}: **{chosen[b][0]}**")
            lines.append("")
            lines.append(
                f"Summary, {kind}: mean area over both sides and both baselines, its paired difference to "
                "the lowest (+- clustered standard error), median conservation error over both sides:"
            )
            lines.append("")
            lines.append("| order | mean area | diff to best | conservation | ms / pair |")
            lines.append("|---|---|---|---|---|")
            best, diffs = choose(block["areas"], groups)
            for name in block["areas"][baselines[0]]:
                m = mean_se(list(combined(block["areas"], name)), groups)
                d = diffs[name]
                inf = block["info"].get(name)
                cons = f"{(inf['conservation_train'] + inf['conservation_test']) / 2:.3f}" if inf else "-"
                ms = f"{inf['ms_per_pair']:.1f}" if inf else "-"
                diff = "best" if name == best else f"{d[0]:+.3f} +- {d[1]:.3f}"
                lines.append(f"| {name} | {m[0]:.3f} +- {m[1]:.3f} | {diff} | {cons} | {ms} |")
            lines.append("")
            lines.append(f"- lowest mean area over both sides and both baselines: **{best}**")
            lrp = {b: block["areas"][b] for b in baselines}
            lrp = {b: {n: v for n, v in areas.items() if n != GRAD_X_INPUT} for b, areas in lrp.items()}
            if best == GRAD_X_INPUT:
                lines.append(f"- lowest among the LRP composites: **{choose(lrp, groups)[0]}**")
            lines.append("")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=["cnn", "resnet"], default=["cnn", "resnet"])
    parser.add_argument("--n-test", type=int, default=64, help="test samples explained on the CNN (default 64)")
    parser.add_argument(
        "--resnet-n-test", type=int, default=32, help="test samples explained on the ResNet (default 32)"
    )
    parser.add_argument("--k", type=int, default=5, help="proponents (and opponents) per test sample (default 5)")
    parser.add_argument("--no-opponents", action="store_true", help="proponents only on the CNN")
    parser.add_argument(
        "--resnet-opponents", action="store_true", help="also opponents on the ResNet (doubles its time)"
    )
    parser.add_argument("--cnn-epochs", type=int, default=12)
    parser.add_argument("--resnet-epochs", type=int, default=8)
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds the split, the label flips, training, DualDA and the tie-breaks"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: faster on busy shared cores)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 16 (CNN) and 8 (ResNet) test samples, k=2, 2 epochs each"
    )
    parser.add_argument("--out", help="write the raw areas and settings as JSON to this path")
    parser.add_argument("--from-json", help="only print the tables of an earlier --out file")
    args = parser.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as handle:
            saved = json.load(handle)
        print(saved["stamp"])
        print()
        print(report(saved["results"]))
        print(f"Total wall time {saved['total_s'] / 60:.1f} min.")
        return saved
    for name in ("n_test", "resnet_n_test", "k", "cnn_epochs", "resnet_epochs", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.quick:
        args.n_test, args.resnet_n_test, args.k, args.cnn_epochs, args.resnet_epochs = 16, 8, 2, 2, 2
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    stamp = (
        f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{args.threads} threads, load average {os.getloadavg()[0]:.2f} at start"
    )
    print(stamp, flush=True)
    data = load_digits_data(flip_rate=0.1, seed=args.seed)
    results = []
    for model in args.models:
        t0 = time.perf_counter()
        setting = (
            cnn_setting(data, args.cnn_epochs, args.seed)
            if model == "cnn"
            else resnet_setting(data, args.resnet_epochs, args.seed)
        )
        if model == "cnn":
            res = evaluate(setting, args.n_test, args.k, not args.no_opponents, args.seed)
        else:
            res = evaluate(setting, args.resnet_n_test, args.k, args.resnet_opponents, args.seed)
        res["wall_s"] = time.perf_counter() - t0
        results.append(res)
        log(f"{model} done in {res['wall_s']:.0f} s")
    print()
    print(report(results))
    total = time.perf_counter() - start
    print(f"Total wall time {total / 60:.1f} min; load average {os.getloadavg()[0]:.2f} at the end.")
    out = {"stamp": stamp, "args": vars(args), "results": results, "total_s": total}
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(out, handle)
    return out


if __name__ == "__main__":
    main()
