"""Conservation and time of XDA heatmaps on transformers (``transformer_composite``).

Run from the repository root (needs ``transformers``, ``torchvision`` and ``timm``; no download)::

    python benchmarks/xda_transformers.py

Tiny randomly initialised models built from configs (hidden size 16, tokens 3..9 of a 40-word
vocabulary, 200 training and 20 test sequences; the models of ``tests/test_transformers.py``):
DualDA with C = 0.1, the top-5 proponents of every test sequence, both heatmaps of every pair.
Conservation is ``|sum of a heatmap - tau| / |tau|`` over all heatmaps of pairs with a score
above 1e-3 of the largest. For the torchvision ViT (random weights, 16x16 images, 4x4
patches, random labels) the heatmaps are on pixels, and so for timm's ViT-Tiny (random weights, 16x16 images); part of
tau stays with the class token, the
position embeddings and the biases, which are parameters, not pixels.
"""
from __future__ import annotations

import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from test_transformers import Texts, bert, gpt2, llama, stacked  # noqa: E402

from captum_dualxda import XDA, DualDA, transformer_composite, xda_pairs  # noqa: E402


def row(name: str, pairs, ms: float) -> str:
    """A table row: conservation error quantiles, sign agreement, finiteness, time per pair."""
    scores = pairs.scores
    dims = tuple(range(2, pairs.train_relevance.ndim))
    big = scores.abs() > 1e-3 * scores.abs().max()
    sums = [r.sum(dims)[big] for r in (pairs.train_relevance, pairs.test_relevance)]
    errors = torch.cat([(total - scores[big]).abs() / scores[big].abs() for total in sums])
    signs = [float((torch.sign(total) == torch.sign(scores[big])).float().mean()) for total in sums]
    finite = bool(torch.isfinite(pairs.train_relevance).all() and torch.isfinite(pairs.test_relevance).all())
    return (f"| {name} | {float(errors.median()):.4f} | {float(errors.quantile(0.9)):.4f} | {float(errors.max()):.4f} "
            f"| {100 * signs[0]:.0f} % / {100 * signs[1]:.0f} % | {'yes' if finite else 'NO'} | {ms:.1f} |")


def measure(name: str, model: torch.nn.Module, head: str, train, test_inputs, targets) -> str:
    """Fit DualDA, explain the top-5 proponents of every test input with XDA, return the table row."""
    dualda = DualDA(model, head, train, C=0.1, batch_size=64)
    top = dualda.influence(test_inputs if isinstance(test_inputs, dict) else (test_inputs, targets), k=5)
    xda = XDA(model, head, transformer_composite(model))
    start = time.perf_counter()
    pairs = xda_pairs(dualda, xda, test_inputs, targets, top.indices)
    return row(name, pairs, 1000 * (time.perf_counter() - start) / top.indices.numel())


def main() -> None:
    torch.set_num_threads(2)
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    print()
    print("| model | median rel. error | 90th percentile | max | sign of sum = sign of tau (train / test) | finite | ms per pair (both heatmaps) |")
    print("|---|---|---|---|---|---|---|")
    for name, make, head, pad_left in (("BERT (encoder)", bert, "classifier", False),
                                       ("Llama (decoder, right padding)", llama, "score", False),
                                       ("Llama (decoder, left padding)", llama, "score", True),
                                       ("GPT-2 (decoder, left padding)", gpt2, "score", True)):
        batch = stacked(Texts(20, 1, pad_left), range(20))
        print(measure(name, make(), head, Texts(200, 0, pad_left), batch, batch["labels"]))

    import timm
    import torchvision

    g = torch.Generator().manual_seed(0)
    x_train, x_test = torch.randn(200, 3, 16, 16, generator=g), torch.randn(20, 3, 16, 16, generator=g)
    y_train, y_test = torch.randint(0, 3, (200,), generator=g), torch.randint(0, 3, (20,), generator=g)
    images = torch.utils.data.TensorDataset(x_train, y_train)
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=16,
                                               mlp_dim=32, num_classes=3).eval()
    print(measure("torchvision ViT (pixels)", vit, "heads.head", images, x_test, y_test))
    torch.manual_seed(0)
    tiny = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, num_classes=3).eval()
    print(measure("timm ViT-Tiny (pixels)", tiny, "head", images, x_test, y_test))


if __name__ == "__main__":
    main()
