"""DualDA and XDA on more Hugging Face families: RoBERTa, DistilBERT, Qwen2, Qwen3, Mistral.

Tiny randomly initialised models built from configs (no download). Every ``phi`` is computed
independently from the model's own hidden states (``output_hidden_states=True``) and the head
written out by hand: RoBERTa ``tanh(classifier.dense(h_<s>))`` (the input of
``classifier.out_proj``), DistilBERT ``relu(pre_classifier(h_[CLS]))``, decoders the final hidden
state of the last token that is not padding (left and right padding).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

transformers = pytest.importorskip("transformers")

from heatmap_checks import assert_token_heatmaps_conserve  # noqa: E402

from captum_dualxda import XDA, DualDA, transformer_composite, xda_pairs  # noqa: E402

VOCAB, K, PAD, LENGTH = 40, 3, 0, 9


class Texts(Dataset):
    """``n`` token sequences (ids 5..39, lengths 3..9) padded with ``PAD`` on one side, with a label."""

    def __init__(self, n: int, seed: int, pad_left: bool = False):
        g = torch.Generator().manual_seed(seed)
        self.samples = []
        for _ in range(n):
            size = int(torch.randint(3, LENGTH + 1, (1,), generator=g))
            ids = torch.randint(5, VOCAB, (size,), generator=g)
            padded, mask = torch.full((LENGTH,), PAD), torch.zeros(LENGTH, dtype=torch.long)
            where = slice(LENGTH - size, LENGTH) if pad_left else slice(0, size)
            padded[where], mask[where] = ids, 1
            label = torch.tensor(int(ids[:2].sum()) % K)
            self.samples.append({"input_ids": padded, "attention_mask": mask, "labels": label})

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return self.samples[i]


def stacked(dataset, indices):
    return {k: torch.stack([dataset[i][k] for i in indices]) for k in dataset[0]}


def roberta():
    torch.manual_seed(0)
    config = transformers.RobertaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=K,
        max_position_embeddings=LENGTH + 4,
        pad_token_id=PAD,
        bos_token_id=1,
        eos_token_id=2,
    )
    return transformers.RobertaForSequenceClassification(config).eval()


def distilbert():
    torch.manual_seed(0)
    config = transformers.DistilBertConfig(
        vocab_size=VOCAB,
        dim=16,
        n_layers=1,
        n_heads=2,
        hidden_dim=32,
        num_labels=K,
        max_position_embeddings=32,
        pad_token_id=PAD,
    )
    return transformers.DistilBertForSequenceClassification(config).eval()


def _decoder(family: str, **extra):
    def make():
        torch.manual_seed(0)
        config = getattr(transformers, f"{family}Config")(
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
            **extra,
        )
        return getattr(transformers, f"{family}ForSequenceClassification")(config).eval()

    make.__name__ = family.lower()
    return make


qwen2 = _decoder("Qwen2")  # q, k, v projections with biases
mistral = _decoder("Mistral")
qwen3 = _decoder("Qwen3", head_dim=8)  # RMSNorm on queries and keys

HEADS = {
    "roberta": "classifier.out_proj",
    "distilbert": "classifier",
    "qwen2": "score",
    "mistral": "score",
    "qwen3": "score",
}


def reference_phi(model, batch):
    """What the model's head classifies, from its own hidden states (the head written out here)."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states[-1]
        if isinstance(model, transformers.RobertaForSequenceClassification):  # dense -> tanh -> out_proj
            return torch.tanh(hidden[:, 0] @ model.classifier.dense.weight.T + model.classifier.dense.bias)
        if isinstance(model, transformers.DistilBertForSequenceClassification):  # pre_classifier -> ReLU -> classifier
            return torch.relu(hidden[:, 0] @ model.pre_classifier.weight.T + model.pre_classifier.bias)
    ids = batch["input_ids"]
    last = (torch.arange(ids.shape[1]) * (ids != PAD)).argmax(-1)  # last non-padding token, either side
    return hidden[torch.arange(ids.shape[0]), last]


CASES = [
    (roberta, False),
    (distilbert, False),
    (qwen2, False),
    (qwen2, True),
    (mistral, False),
    (mistral, True),
    (qwen3, False),
    (qwen3, True),
]
IDS = [
    "roberta",
    "distilbert",
    "qwen2-right",
    "qwen2-left",
    "mistral-right",
    "mistral-left",
    "qwen3-right",
    "qwen3-left",
]


@pytest.mark.parametrize("make, pad_left", CASES, ids=IDS)
def test_scores_are_the_dual_formula_on_the_models_own_representation(make, pad_left):
    model = make()
    train, test = Texts(30, 0, pad_left), Texts(5, 1, pad_left)
    dualda = DualDA(model, HEADS[make.__name__], train, C=0.1, batch_size=16)  # a Dataset of dicts
    phi_train = reference_phi(model, stacked(train, range(30))).double()
    batch = stacked(test, range(5))
    phi_test = reference_phi(model, batch).double()
    features = dualda.test_features({k: v for k, v in batch.items() if k != "labels"})
    assert torch.allclose(features.double(), phi_test, atol=1e-5)
    scores = dualda.influence(batch)
    a = dualda.coefficients.double()
    brute = torch.stack([a[:, c] * (phi_train @ phi_test[i]) for i, c in enumerate(batch["labels"].tolist())])
    assert torch.allclose(scores.double(), brute, rtol=1e-4, atol=1e-5)
    # The training features too: self-influence is a_i^{y_i} |phi(x_i)|^2.
    self_influence = a[torch.arange(30), dualda.train_labels] * phi_train.pow(2).sum(1)
    assert torch.allclose(dualda.self_influence().double(), self_influence, rtol=1e-4, atol=1e-6)
    assert dualda.n_classes == K


def test_roberta_head_module_is_refused_with_a_pointer_to_the_linear_layer():
    with pytest.raises(TypeError, match="RobertaClassificationHead"):
        DualDA(roberta(), "classifier", Texts(10, 0), C=0.1)


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


#: Median / largest relative conservation error |sum of a token heatmap - tau| / |tau| measured on
#: these random models with the default rule: about 1e-7 for every family. RoBERTa's head applies
#: ``torch.tanh`` as a function, not a module; without the composite's canonizer for such heads its
#: plain gradient lost 0.009 / 0.015. Bounds with margin.
CONSERVATION = {
    "roberta": (1e-5, 1e-4),
    "distilbert": (1e-5, 1e-4),
    "qwen2": (1e-5, 1e-4),
    "mistral": (1e-5, 1e-4),
    "qwen3": (1e-5, 1e-4),
}


@pytest.mark.parametrize("make, pad_left", CASES[:-2] + CASES[-1:], ids=IDS[:-2] + IDS[-1:])
def test_token_heatmaps_conserve_the_dualda_score_and_the_model_comes_back_unchanged(make, pad_left):
    model = make()
    head = HEADS[make.__name__]
    train, test = Texts(30, 0, pad_left), Texts(4, 1, pad_left)
    dualda = DualDA(model, head, train, C=0.1, batch_size=16)
    batch = stacked(test, range(4))
    top = dualda.influence(batch, k=3)
    before = {name: p.clone() for name, p in model.state_dict().items()}
    implementation, hooks = model.config._attn_implementation, _hooks(model)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    pairs = xda_pairs(dualda, XDA(model, head, transformer_composite(model)), batch, batch["labels"], top.indices)
    assert pairs.train_relevance.shape == (4, 3, LENGTH) and pairs.test_relevance.shape == (4, 3, LENGTH)
    assert torch.isfinite(pairs.train_relevance).all() and torch.isfinite(pairs.test_relevance).all()
    assert torch.allclose(pairs.scores, top.influence_scores, rtol=1e-4, atol=1e-6)
    assert_token_heatmaps_conserve(pairs, *CONSERVATION[make.__name__])
    assert not pairs.test_relevance.permute(1, 0, 2)[:, ~batch["attention_mask"].bool()].any()  # padding: none
    # Back as it was: attention implementation, parameters, hooks, forwards, outputs.
    assert model.config._attn_implementation == implementation and _hooks(model) == hooks
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any("forward" in vars(m) for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, logits)


def _zero_biases_and_sharpen_attention(model, factor=25.0):
    """Zero every bias (Linear, LayerNorm; what keeps relevance) and scale the query and key
    projections so that the softmax is far from uniform (like a trained model's)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif any(
                part in name
                for part in (
                    "query.weight",
                    "key.weight",
                    "q_lin.weight",
                    "k_lin.weight",
                    "q_proj.weight",
                    "k_proj.weight",
                )
            ):
                p.mul_(factor)


@pytest.mark.parametrize(
    "make",
    [
        roberta,
        distilbert,
        qwen2,
        mistral,
        qwen3,
    ],
    ids=["roberta", "distilbert", "qwen2", "mistral", "qwen3"],
)
def test_the_attention_rule_is_applied_cp_conserves_exactly_and_attnlrp_does_not(make):
    model = make()
    _zero_biases_and_sharpen_attention(model)
    batch = stacked(Texts(6, 2, pad_left=make in (qwen2, mistral)), range(6))
    batch.pop("labels")
    errors, heatmaps = {}, {}
    for rule in ("cp", "attnlrp"):
        xda = XDA(model, HEADS[make.__name__], transformer_composite(model, attention=rule))
        phi = xda.features(batch)
        partner = phi.flip(0)
        phi, relevance = xda(batch, lambda f, partner=partner: f * partner)
        tau = (phi.double() * partner.double()).sum(1)
        assert torch.isfinite(relevance).all()
        heatmaps[rule] = relevance
        errors[rule] = float(((relevance.double().sum(1) - tau).abs() / tau.abs()).median())
    # With nothing that absorbs relevance, CP-LRP's heatmap sums to tau up to float32 rounding;
    # AttnLRP's softmax rule does not conserve, so its heatmaps differ (the rule really is swapped in).
    assert errors["cp"] < 1e-4, errors
    assert errors["attnlrp"] > 100 * max(errors["cp"], 1e-6), errors
    assert not torch.allclose(heatmaps["cp"], heatmaps["attnlrp"], rtol=1e-2, atol=1e-6)


def test_models_that_compute_attention_in_their_own_code_are_refused():
    """RoFormer (like BigBird and DeBERTa-v2) ignores Hugging Face's attention switch: its attention
    would keep the plain gradient (2.9 % conservation error on a random tiny model), so the
    composite refuses it up front and the model is untouched."""
    torch.manual_seed(0)
    config = transformers.RoFormerConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        embedding_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=K,
        max_position_embeddings=32,
        pad_token_id=PAD,
    )
    model = transformers.RoFormerForSequenceClassification(config).eval()
    implementation, hooks = model.config._attn_implementation, _hooks(model)
    with pytest.raises(ValueError, match="RoFormer.*attention interface"):
        transformer_composite(model)
    assert model.config._attn_implementation == implementation and _hooks(model) == hooks
