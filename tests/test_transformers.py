"""DualDA on Hugging Face classifiers: dict batches, the representation the model classifies.

Tiny randomly initialised models built from configs (no download): BERT (encoder head on the
pooled output), Llama and GPT-2 (decoder heads applied to every position, the model keeps the
last non-padding token), with left and right padding, half precision, and a tokenizer with
``DataCollatorWithPadding``. Every ``phi`` is computed independently from the model's own hidden
states and compared with what DualDA uses.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

transformers = pytest.importorskip("transformers")

from captum_dualxda import DualDA  # noqa: E402
from captum_dualxda._core.cache import Fingerprint  # noqa: E402
from captum_dualxda.metrics import surrogate_fidelity, training_loss  # noqa: E402

VOCAB, K, PAD = 40, 3, 0


class Texts(Dataset):
    """Token sequences of varying length (ids 5..39) with a label; ``pad`` decides the side."""

    def __init__(self, n: int, seed: int, pad_left: bool = False, key: str = "labels", length: int = 9):
        g = torch.Generator().manual_seed(seed)
        self.samples = []
        for _ in range(n):
            size = int(torch.randint(3, length + 1, (1,), generator=g))
            ids = torch.randint(5, VOCAB, (size,), generator=g)
            label = int(ids[:2].sum()) % K
            padded = torch.full((length,), PAD)
            mask = torch.zeros(length, dtype=torch.long)
            where = slice(length - size, length) if pad_left else slice(0, size)
            padded[where], mask[where] = ids, 1
            self.samples.append({"input_ids": padded, "attention_mask": mask, key: torch.tensor(label)})

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return self.samples[i]


def bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=K,
        max_position_embeddings=32,
    )
    return transformers.BertForSequenceClassification(config).eval()


def llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=32,
        num_labels=K,
        pad_token_id=PAD,
        bos_token_id=1,
        eos_token_id=2,
        max_position_embeddings=32,
    )
    return transformers.LlamaForSequenceClassification(config).eval()


def gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_embd=16,
        n_layer=1,
        n_head=2,
        num_labels=K,
        pad_token_id=PAD,
        bos_token_id=1,
        eos_token_id=2,
        n_positions=32,
    )
    return transformers.GPT2ForSequenceClassification(config).eval()


def reference_phi(model, batch):
    """phi from the model's own hidden states: BERT's pooled output; for decoders the last hidden
    state at the last token that is not padding (Hugging Face's rule, written out here)."""
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        if isinstance(model, transformers.BertForSequenceClassification):
            return model.bert(**inputs).pooler_output
        hidden = model.base_model(**inputs).last_hidden_state
    ids = batch["input_ids"]
    last = (torch.arange(ids.shape[1]) * (ids != PAD)).argmax(-1)
    return hidden[torch.arange(ids.shape[0]), last]


def stacked(dataset, indices):
    return {k: torch.stack([dataset[i][k] for i in indices]) for k in dataset[0]}


@pytest.mark.parametrize(
    "make, head, pad_left",
    [
        (bert, "classifier", False),
        (llama, "score", False),
        (llama, "score", True),
        (gpt2, "score", False),
        (gpt2, "score", True),
    ],
    ids=["bert", "llama-right", "llama-left", "gpt2-right", "gpt2-left"],
)
def test_scores_are_the_dual_formula_on_the_models_own_representation(make, head, pad_left):
    model = make()
    train, test = Texts(60, 0, pad_left), Texts(5, 1, pad_left)
    dualda = DualDA(model, head, train, C=0.1, batch_size=16)  # a Dataset of dicts
    phi_train = reference_phi(model, stacked(train, range(60))).double()
    batch = stacked(test, range(5))
    phi_test = reference_phi(model, batch).double()
    assert torch.allclose(
        dualda.test_features({k: v for k, v in batch.items() if k != "labels"}).double(), phi_test, atol=1e-5
    )
    scores = dualda.influence(batch)  # the classes to explain under "labels"
    a = dualda.coefficients.double()
    brute = torch.stack([a[:, c] * (phi_train @ phi_test[i]) for i, c in enumerate(batch["labels"].tolist())])
    assert torch.allclose(scores.double(), brute, rtol=1e-4, atol=1e-5)
    assert torch.allclose(
        dualda.self_influence().double(),
        a[torch.arange(60), dualda.train_labels] * phi_train.pow(2).sum(1),
        rtol=1e-4,
        atol=1e-6,
    )
    top = dualda.influence(batch, k=4)
    assert torch.equal(top.indices, scores.topk(4, dim=1).indices) or torch.allclose(
        top.influence_scores, scores.topk(4, dim=1).values
    )
    assert dualda.train_inputs([2, 7])["input_ids"].shape == (2, 9)  # the dict form, labels dropped
    assert "labels" not in dualda.train_inputs([2])


def test_tokenizer_collator_loader_and_label_key(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(VOCAB - 5)]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab))
    tokenizer = transformers.BertTokenizer(str(tmp_path / "vocab.txt"))
    g = torch.Generator().manual_seed(3)
    texts = [
        " ".join(
            f"w{int(i)}" for i in torch.randint(0, 30, (int(torch.randint(2, 8, (1,), generator=g)),), generator=g)
        )
        for _ in range(40)
    ]
    rows = [{**tokenizer(t), "label": len(t) % K} for t in texts]  # `datasets` style: "label"
    collator = transformers.DataCollatorWithPadding(tokenizer)
    shuffled = DataLoader(rows, batch_size=8, shuffle=True, collate_fn=collator)  # BatchEncoding batches
    model = bert()
    dualda = DualDA(model, "classifier", shuffled, C=0.1)
    assert dualda.n_train == 40 and dualda.train_labels.tolist() == [r["label"] for r in rows]  # dataset order
    ordered = DualDA(model, "classifier", DataLoader(rows, batch_size=8, collate_fn=collator), C=0.1)
    assert torch.allclose(dualda.self_influence(), ordered.self_influence(), atol=1e-6)
    batch = collator(rows[:4])
    assert type(batch).__name__ == "BatchEncoding"
    scores = dualda.influence(batch)
    assert scores.shape == (4, 40) and torch.isfinite(scores).all()
    # The network-side tools take the same batches.
    loss = training_loss(model, shuffled)
    with torch.no_grad():
        logits = model(**{k: v for k, v in collator(rows).items() if k != "labels"}).logits
    assert torch.allclose(
        loss,
        torch.nn.functional.cross_entropy(logits, torch.tensor([r["label"] for r in rows]), reduction="none"),
        atol=1e-5,
    )
    assert 0.0 <= surrogate_fidelity(dualda, {k: v for k, v in batch.items() if k != "labels"}).agreement <= 1.0


def test_half_precision_models_are_solved_in_float32():
    model = llama().to(torch.bfloat16)
    train = Texts(40, 0)
    dualda = DualDA(model, "score", train, C=0.1, batch_size=16)
    assert dualda.weight.dtype == torch.float32 and torch.isfinite(dualda.self_influence()).all()
    phi = reference_phi(model, stacked(train, range(40))).float()
    assert (
        torch.isfinite(dualda.train_hinge_loss).all()
        and dualda.test_features(stacked(train, [0])).dtype == torch.float32
    )
    batch = stacked(train, range(3))
    scores = dualda.influence(batch)
    a = dualda.coefficients
    brute = torch.stack([a[:, c] * (phi @ phi[i]) for i, c in enumerate(batch["labels"].tolist())])
    assert torch.allclose(scores, brute, rtol=1e-3, atol=1e-4)


def test_clear_errors_for_dict_batches_and_pooling_after_the_head():
    model = bert()
    train = Texts(20, 0)
    dualda = DualDA(model, "classifier", train, C=0.1)
    batch = stacked(train, range(3))
    with pytest.raises(ValueError, match="without a 'labels'"):
        dualda.influence({k: v for k, v in batch.items() if k != "labels"})

    class MeanAfterHead(torch.nn.Module):  # pools AFTER the final layer: no single phi exists
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(VOCAB, 8)
            self.fc = torch.nn.Linear(8, K)

        def forward(self, input_ids, attention_mask):
            return self.fc(self.embed(input_ids)).mean(1)

    with pytest.raises(ValueError, match="combines positions after the final layer"):
        DualDA(MeanAfterHead(), "fc", train)


def test_fingerprint_sees_the_content_of_batch_encodings():
    a = transformers.BatchEncoding({"input_ids": torch.arange(2000).reshape(2, 1000)})
    b = transformers.BatchEncoding({"input_ids": torch.arange(2000).reshape(2, 1000).flip(1)})
    assert Fingerprint().update(a).hexdigest() != Fingerprint().update(b).hexdigest()


def test_import_does_not_import_transformers():
    import subprocess
    import sys

    code = (
        "import sys, captum_dualxda, captum_dualxda.metrics, captum_dualxda.xda; print('transformers' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------------------------------
# XDA on transformers: transformer_composite (AttnLRP rules)
# ------------------------------------------------------------------------------------------
from heatmap_checks import assert_token_heatmaps_conserve  # noqa: E402

from captum_dualxda import XDA, transformer_composite, xda_pairs  # noqa: E402

#: Median / largest relative conservation error of token heatmaps (sum vs tau) measured on these
#: tiny random models (tests/test_transformers.py; the README reports the same numbers).
CONSERVATION = {"bert": (0.01, 0.05), "llama": (0.10, 0.40), "gpt2": (0.05, 0.40)}


@pytest.mark.parametrize(
    "make, head, pad_left",
    [
        (bert, "classifier", False),
        (llama, "score", False),
        (llama, "score", True),
        (gpt2, "score", True),
    ],
    ids=["bert", "llama-right", "llama-left", "gpt2-left"],
)
def test_token_heatmaps_conserve_the_dualda_score(make, head, pad_left):
    model = make()
    train, test = Texts(40, 0, pad_left), Texts(4, 1, pad_left)
    dualda = DualDA(model, head, train, C=0.1, batch_size=16)
    batch = stacked(test, range(4))
    top = dualda.influence(batch, k=3)
    before = {name: p.clone() for name, p in model.state_dict().items()}
    xda = XDA(model, head, transformer_composite(model))
    pairs = xda_pairs(dualda, xda, batch, batch["labels"], top.indices)
    assert pairs.train_relevance.shape == (4, 3, 9) and pairs.test_relevance.shape == (4, 3, 9)
    assert torch.isfinite(pairs.train_relevance).all() and torch.isfinite(pairs.test_relevance).all()
    assert torch.allclose(pairs.scores, top.influence_scores, rtol=1e-4, atol=1e-6)
    assert_token_heatmaps_conserve(pairs, *CONSERVATION[make.__name__])
    # Padding gets no relevance; the model is left exactly as it was (attention implementation too).
    mask = batch["attention_mask"].bool()
    assert not pairs.test_relevance.permute(1, 0, 2)[:, ~mask].any()
    assert model.config._attn_implementation != "captum_dualxda_lrp"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any("forward" in vars(m) for m in model.modules())


def tiny_torchvision_vit():
    """A randomly initialised torchvision ViT on 16x16 images, 4x4 patches, 3 classes (seed 0)."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(
        image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=3
    ).eval()


def test_torchvision_vit_pixel_heatmaps_are_finite_and_add_up_with_the_class_token():
    vit = tiny_torchvision_vit()
    x = torch.randn(4, 3, 16, 16)
    xda = XDA(vit, "heads.head", transformer_composite(vit))
    with xda:
        phi = xda.features(x)
        partner = phi.flip(0)
        _, relevance = xda(x, lambda f: f * partner)
    assert relevance.shape == x.shape and torch.isfinite(relevance).all()
    with torch.no_grad():
        assert torch.allclose(xda.features(x), phi, atol=1e-5)
    assert not any("forward" in vars(m) for m in vit.modules())


def test_a_dict_input_needs_a_composite_that_says_where_relevance_lands():
    model = bert()
    batch = stacked(Texts(2, 0), range(2))
    batch.pop("labels")
    with pytest.raises(ValueError, match="transformer_composite"):
        XDA(model, "classifier")(batch)


def test_timm_vit_heatmaps_are_finite_and_the_model_comes_back_unchanged():
    timm = pytest.importorskip("timm")
    from zennit.composites import EpsilonPlusFlat

    from captum_dualxda.xda import UnsupportedModelError

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, num_classes=3).eval()
    x = torch.randn(4, 3, 32, 32)
    with pytest.raises(UnsupportedModelError, match="Attention"):
        XDA(vit, "head", EpsilonPlusFlat())  # Zennit's own rules: refused, not all-NaN heatmaps
    with torch.no_grad():
        before = vit(x)
    xda = XDA(vit, "head", transformer_composite(vit))
    with xda:
        phi = xda.features(x)
        _, relevance = xda(x, lambda f: f * phi.flip(0))
        with torch.no_grad():
            assert torch.allclose(vit(x), before, atol=1e-5)  # same forward under the composite
    assert relevance.shape == x.shape and torch.isfinite(relevance).all() and relevance.abs().sum() > 0
    assert not any("forward" in vars(m) for m in vit.modules())
    with torch.no_grad():
        assert torch.equal(vit(x), before)


def _zero_parameters_that_absorb_relevance(model, names=("bias", "class_token", "pos_embedding")):
    """Zero biases (LayerNorm shifts too), class token and position embeddings: what keeps relevance."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.split(".")[-1] in names or name.endswith("in_proj_bias"):
                p.zero_()


def _sharpen_attention(model, factor=25.0):
    """Scale query and key projections so the softmax is far from uniform (like a trained model's)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(part in name for part in ("query.weight", "key.weight", "q_proj.weight", "k_proj.weight")):
                p.mul_(factor)
            elif name.endswith("c_attn.weight"):  # GPT-2: q, k, v packed along the output axis
                p[:, : 2 * p.shape[0]].mul_(factor)


@pytest.mark.parametrize(
    "make, head", [(bert, "classifier"), (llama, "score"), (gpt2, "score")], ids=["bert", "llama", "gpt2"]
)
def test_cp_rule_conserves_exactly_and_attnlrp_softmax_does_not(make, head):
    model = make()
    _zero_parameters_that_absorb_relevance(model)
    _sharpen_attention(model)
    batch = stacked(Texts(6, 2), range(6))
    batch.pop("labels")
    errors = {}
    for rule in ("cp", "attnlrp"):
        xda = XDA(model, head, transformer_composite(model, attention=rule))
        phi = xda.features(batch)
        partner = phi.flip(0)
        phi, relevance = xda(batch, lambda f, partner=partner: f * partner)
        tau = (phi.double() * partner.double()).sum(1)
        assert torch.isfinite(relevance).all()
        errors[rule] = float(((relevance.double().sum(1) - tau).abs() / tau.abs()).median())
    # CP-LRP with nothing that absorbs relevance: the heatmap sums to tau up to float32 rounding.
    assert errors["cp"] < 1e-4, errors
    # AttnLRP's softmax rule (gradient times input of the attention logits) is not conservative.
    assert errors["attnlrp"] > 100 * max(errors["cp"], 1e-6), errors


def test_cp_rule_conserves_exactly_on_vit_pixels_without_parameters_that_absorb_relevance():
    vit = tiny_torchvision_vit()
    x = torch.randn(4, 3, 16, 16)
    xda = XDA(vit, "heads.head", transformer_composite(vit))
    phi = xda.features(x)
    _, relevance = xda(x, lambda f: f * phi.flip(0))
    tau = (phi * phi.flip(0)).sum(1)
    before = ((relevance.sum((1, 2, 3)) - tau).abs() / tau.abs()).median()
    _zero_parameters_that_absorb_relevance(vit)
    phi = xda.features(x)
    _, relevance = xda(x, lambda f: f * phi.flip(0))
    tau = (phi * phi.flip(0)).sum(1)
    after = ((relevance.sum((1, 2, 3)) - tau).abs() / tau.abs()).median()
    assert after < 1e-4 < before  # what the pixels miss is exactly what those parameters take


def test_transformer_composite_rejects_an_unknown_attention_rule():
    with pytest.raises(ValueError, match="`attention` must be one of"):
        transformer_composite(bert(), attention="softmax")


# ------------------------------------------------------------------------------------------
# zero_params="bias" (default): biases and LayerNorm shifts pass their relevance on
# ------------------------------------------------------------------------------------------
from captum_dualxda.lrp.rules import affine, spread_bias  # noqa: E402


def _heavy_biases(model, scale=0.5, seed=1):
    """Random biases and LayerNorm shifts of size ``scale`` (trained models have them; init has zeros)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(scale * torch.randn(p.shape, generator=g))
    return model


def _conservation_error(model, head, batch, **kwargs):
    """Median and largest |heatmap sum - tau| / |tau| of XDA heatmaps with partner = reversed batch."""
    xda = XDA(model, head, transformer_composite(model, **kwargs))
    phi = xda.features(batch)
    partner = phi.flip(0)
    phi, relevance = xda(batch, lambda f: f * partner)
    assert torch.isfinite(relevance).all()
    tau = (phi.double() * partner.double()).sum(1)
    error = (relevance.double().flatten(1).sum(1) - tau).abs() / tau.abs()
    return float(error.median()), float(error.max())


@pytest.mark.parametrize("make, head", [(bert, "classifier"), (gpt2, "score")], ids=["bert", "gpt2"])
def test_biases_pass_their_relevance_on_so_token_heatmaps_add_up_to_tau(make, head):
    # Linear layers (BERT), Hugging Face's Conv1D (GPT-2) and LayerNorm shifts, all with large biases.
    model = _heavy_biases(make())
    batch = stacked(Texts(8, 2), range(8))
    batch.pop("labels")
    with torch.no_grad():
        before = model(**batch).logits
    median, largest = _conservation_error(model, head, batch)  # default: zero_params="bias"
    kept = _conservation_error(model, head, batch, zero_params=None)
    # Measured: median 7e-6 (BERT) / 2e-5 (GPT-2), largest 8e-6 / 2.5e-5; biases kept: median 0.98 / 1.0.
    assert median < 1e-4 and largest < 1e-3, (median, largest)
    assert kept[0] > 0.05, kept  # what the biases keep when they are not zeroed
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, before)  # the model comes back unchanged
    assert not any("forward" in vars(m) for m in model.modules())


def test_vit_pixel_heatmaps_add_up_to_tau_minus_the_class_tokens_share_only():
    # torchvision ViT: patch-embedding Conv2d, MultiheadAttention's packed input projection,
    # its out_proj, the MLP and the LayerNorms all carry (large) biases; the class token is a
    # parameter and keeps its share (measured at the encoder input), position embeddings zeroed.
    vit = _heavy_biases(tiny_torchvision_vit())
    _zero_parameters_that_absorb_relevance(vit, names=("pos_embedding",))
    with torch.no_grad():
        vit.class_token.normal_(generator=torch.Generator().manual_seed(2))
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        before = vit(x)
    seen = {}

    def keep(module, args):  # the encoder input (tokens + position embeddings) and its gradient
        if args[0].requires_grad:
            args[0].register_hook(lambda g: seen.__setitem__("class_token", (args[0].detach() * g)[:, 0].sum(-1)))

    handle = vit.encoder.dropout.register_forward_pre_hook(keep)
    errors = {}
    try:
        for zero_params in ("bias", None):
            xda = XDA(vit, "heads.head", transformer_composite(vit, zero_params=zero_params))
            with xda:
                with torch.no_grad():
                    assert torch.allclose(vit(x), before, atol=1e-5)  # same forward under the composite
                phi = xda.features(x)
                _, relevance = xda(x, lambda f, phi=phi: f * phi.flip(0))
            assert torch.isfinite(relevance).all()
            tau = (phi.double() * phi.flip(0).double()).sum(1)
            total = relevance.double().sum((1, 2, 3)) + seen["class_token"].double()
            errors[zero_params] = ((total - tau).abs() / tau.abs()).max()
    finally:
        handle.remove()
    assert errors["bias"] < 1e-4 and errors[None] > 0.05, errors  # measured: 1.2e-6 and 0.62


def test_spread_bias_gives_the_bias_share_by_contribution_size_and_is_finite_when_z_cancels():
    x = torch.tensor([[1.5, 1.5, 0.0], [0.3, -0.8, 2.0], [0.0, 0.0, 0.0]], requires_grad=True)
    w = torch.tensor([[1.0, -1.0, 0.0], [0.5, 0.25, -2.0]])  # row 0: z = 0 exactly for the first input
    b = torch.tensor([0.7, -0.4])
    y = spread_bias(x @ w.T, b, x.abs() @ w.abs().T, epsilon=1e-6)
    assert torch.allclose(y.detach(), x.detach() @ w.T + b)  # forward: z + b
    g = torch.tensor([[1.0, -2.0], [3.0, 0.5], [2.0, 1.0]])
    (grad,) = torch.autograd.grad(y, x, g)
    relevance = x.detach() * grad
    # Brute force: R_j = sum_i c_ij g_i + |c_ij| / sum_k |c_ik| * b_i g_i.
    c = x.detach()[:, None, :] * w[None]  # (N, out, in)
    expected = (c * g[..., None] + c.abs() / (c.abs().sum(-1, keepdim=True) + 1e-6) * (b * g)[..., None]).sum(1)
    assert torch.isfinite(grad).all() and torch.allclose(relevance, expected, atol=1e-5)
    # The fused form used for linear layers gives the same output and gradient.
    fused = affine(x, w, b, zero_bias=True, epsilon=1e-6)
    assert torch.equal(fused.detach(), torch.nn.functional.linear(x.detach(), w, b))
    assert torch.allclose(torch.autograd.grad(fused, x, g)[0], grad, atol=1e-6)
    # All of the output's relevance reaches the inputs, also where z cancels to 0 (sample 0, unit 0);
    # where every contribution is 0 (sample 2) the bias keeps it.
    assert torch.allclose(relevance[:2].sum(1), ((x.detach() @ w.T + b) * g)[:2].sum(1), rtol=1e-5)
    assert torch.equal(relevance[2], torch.zeros(3))
    # Half precision: the share is formed in float32.
    xh = torch.zeros(2, 3, dtype=torch.bfloat16, requires_grad=True)
    wh = torch.ones(4, 3, dtype=torch.bfloat16)
    (gh,) = torch.autograd.grad(
        spread_bias(xh @ wh.T, torch.ones(4, dtype=torch.bfloat16), xh.abs() @ wh.T),
        xh,
        torch.ones(2, 4, dtype=torch.bfloat16),
    )
    assert torch.isfinite(gh).all()


def test_heatmaps_stay_finite_when_a_pre_activation_is_exactly_zero():
    # A unit whose bias-free pre-activation cancels exactly (x1 - x2 = 0) but whose bias does not.
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.GELU(), torch.nn.LayerNorm(3), torch.nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 0.25], [-1.0, 2.0]]))
        model[0].bias.copy_(torch.tensor([0.7, -0.2, 0.1]))
        model[2].bias.copy_(torch.tensor([0.3, -0.4, 0.2]))
    x = torch.tensor([[1.5, 1.5], [0.3, -0.8], [2.0, 1.0]])
    xda = XDA(model, "3", transformer_composite(model))
    phi = xda.features(x)
    _, relevance = xda(x, lambda f: f * phi.flip(0))
    assert torch.isfinite(relevance).all()
    tau = (phi * phi.flip(0)).sum(1)
    error = (relevance.sum(1) - tau).abs() / tau.abs()
    assert float(error.max()) < 1e-4  # the unit with z = 0 passes its bias's relevance on as well
    _, kept = XDA(model, "3", transformer_composite(model, zero_params=None))(x, lambda f: f * phi.flip(0))
    assert float(((kept.sum(1) - tau).abs() / tau.abs()).min()) > 1e-2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"zero_params": "weight"}, "`zero_params` must be 'bias' or None"),
        ({"zero_params": ["bias"]}, "`zero_params` must be 'bias' or None"),
        ({"epsilon": 0.0}, "`epsilon` must be a finite real number > 0"),
        ({"epsilon": float("nan")}, "`epsilon` must be a finite real number > 0"),
    ],
)
def test_transformer_composite_rejects_bad_zero_params_and_epsilon(kwargs, match):
    with pytest.raises(ValueError, match=match):
        transformer_composite(bert(), **kwargs)
