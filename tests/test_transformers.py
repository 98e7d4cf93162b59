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
from captum_dualxda.cache import Fingerprint  # noqa: E402
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
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, num_labels=K, max_position_embeddings=32)
    return transformers.BertForSequenceClassification(config).eval()


def llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                      num_key_value_heads=1, intermediate_size=32, num_labels=K, pad_token_id=PAD,
                                      bos_token_id=1, eos_token_id=2, max_position_embeddings=32)
    return transformers.LlamaForSequenceClassification(config).eval()


def gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=2, num_labels=K, pad_token_id=PAD,
                                     bos_token_id=1, eos_token_id=2, n_positions=32)
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


@pytest.mark.parametrize("make, head, pad_left", [
    (bert, "classifier", False),
    (llama, "score", False),
    (llama, "score", True),
    (gpt2, "score", False),
    (gpt2, "score", True),
], ids=["bert", "llama-right", "llama-left", "gpt2-right", "gpt2-left"])
def test_scores_are_the_dual_formula_on_the_models_own_representation(make, head, pad_left):
    model = make()
    train, test = Texts(60, 0, pad_left), Texts(5, 1, pad_left)
    dualda = DualDA(model, head, train, C=0.1, batch_size=16)  # a Dataset of dicts
    phi_train = reference_phi(model, stacked(train, range(60))).double()
    batch = stacked(test, range(5))
    phi_test = reference_phi(model, batch).double()
    assert torch.allclose(dualda.test_features({k: v for k, v in batch.items() if k != "labels"}).double(), phi_test, atol=1e-5)
    scores = dualda.influence(batch)  # the classes to explain under "labels"
    a = dualda.coefficients.double()
    brute = torch.stack([a[:, c] * (phi_train @ phi_test[i]) for i, c in enumerate(batch["labels"].tolist())])
    assert torch.allclose(scores.double(), brute, rtol=1e-4, atol=1e-5)
    assert torch.allclose(dualda.self_influence().double(), a[torch.arange(60), dualda.train_labels] * phi_train.pow(2).sum(1), rtol=1e-4, atol=1e-6)
    top = dualda.influence(batch, k=4)
    assert torch.equal(top.indices, scores.topk(4, dim=1).indices) or torch.allclose(top.influence_scores, scores.topk(4, dim=1).values)
    assert dualda.train_inputs([2, 7])["input_ids"].shape == (2, 9)  # the dict form, labels dropped
    assert "labels" not in dualda.train_inputs([2])


def test_tokenizer_collator_loader_and_label_key(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(VOCAB - 5)]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab))
    tokenizer = transformers.BertTokenizer(str(tmp_path / "vocab.txt"))
    g = torch.Generator().manual_seed(3)
    texts = [" ".join(f"w{int(i)}" for i in torch.randint(0, 30, (int(torch.randint(2, 8, (1,), generator=g)),), generator=g))
             for _ in range(40)]
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
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(logits, torch.tensor([r["label"] for r in rows]), reduction="none"), atol=1e-5)
    assert 0.0 <= surrogate_fidelity(dualda, {k: v for k, v in batch.items() if k != "labels"}).agreement <= 1.0


def test_half_precision_models_are_solved_in_float32():
    model = llama().to(torch.bfloat16)
    train = Texts(40, 0)
    dualda = DualDA(model, "score", train, C=0.1, batch_size=16)
    assert dualda.weight.dtype == torch.float32 and torch.isfinite(dualda.self_influence()).all()
    phi = reference_phi(model, stacked(train, range(40))).float()
    assert torch.isfinite(dualda.train_hinge_loss).all() and dualda.test_features(stacked(train, [0])).dtype == torch.float32
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

    code = "import sys, captum_dualxda, captum_dualxda.metrics, captum_dualxda.xda; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------------------------------
# XDA on transformers: transformer_composite (AttnLRP rules)
# ------------------------------------------------------------------------------------------
from captum_dualxda import XDA, transformer_composite, xda_pairs  # noqa: E402

#: Median / largest relative conservation error of token heatmaps (sum vs tau) measured on these
#: tiny random models (tests/test_transformers.py; the README reports the same numbers).
CONSERVATION = {"bert": (0.01, 0.05), "llama": (0.10, 0.40), "gpt2": (0.05, 0.40)}


@pytest.mark.parametrize("make, head, pad_left", [
    (bert, "classifier", False), (llama, "score", False), (llama, "score", True), (gpt2, "score", True),
], ids=["bert", "llama-right", "llama-left", "gpt2-left"])
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
    median, largest = CONSERVATION[make.__name__]
    for relevance in (pairs.train_relevance, pairs.test_relevance):
        sums = relevance.sum(-1)
        big = pairs.scores.abs() > 1e-3 * pairs.scores.abs().max()
        error = ((sums - pairs.scores).abs() / pairs.scores.abs())[big]
        assert float(error.median()) <= median and float(error.max()) <= largest, (float(error.median()), float(error.max()))
        assert bool((torch.sign(sums[big]) == torch.sign(pairs.scores[big])).all())
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
    return torchvision.models.VisionTransformer(image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=16,
                                                mlp_dim=32, num_classes=3).eval()


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


@pytest.mark.parametrize("make, head", [(bert, "classifier"), (llama, "score"), (gpt2, "score")], ids=["bert", "llama", "gpt2"])
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
        phi, relevance = xda(batch, lambda f: f * partner)
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
