"""quanda interoperability (run in the quanda environment: see .ci/run and ci/quanda-requirements.txt).

The main test run ignores this folder (pyproject ``--ignore=tests/quanda_env``); run it with
``python -m pytest tests/quanda_env`` where quanda is installed.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

quanda = pytest.importorskip("quanda")

from quanda.explainers import Explainer  # noqa: E402
from quanda.metrics.downstream_eval import (  # noqa: E402
    ClassDetectionMetric,
    MislabelingDetectionMetric,
    ShortcutDetectionMetric,
)
from quanda.metrics.heuristics import TopKCardinalityMetric  # noqa: E402

from captum_dualxda import DualDA  # noqa: E402
from captum_dualxda.metrics import class_detection, mislabel_auc, mislabel_detection_curve  # noqa: E402
from captum_dualxda.quanda import DualDAExplainer  # noqa: E402

N = 400


@pytest.fixture(scope="module")
def noisy(digits):
    x, y, xt, _ = digits
    g = torch.Generator().manual_seed(5)
    labels = y[:N].clone()
    flip = torch.randperm(N, generator=g)[: N // 10]
    labels[flip] = (labels[flip] + torch.randint(1, 10, (flip.numel(),), generator=g)) % 10
    return TensorDataset(x[:N], labels), flip.sort().values, xt[:40]


@pytest.fixture(scope="module")
def explainer(noisy, digits_cnn):
    train, _, _ = noisy
    return DualDAExplainer(model=digits_cnn, train_dataset=train, final_fc_layer="fc", C=0.01, batch_size=100)


def test_is_a_quanda_explainer_with_dualda_scores(explainer, noisy, digits_cnn):
    train, _, xt = noisy
    assert isinstance(explainer, Explainer)
    pred = digits_cnn(xt).argmax(1)
    scores = explainer.explain(test_data=xt, targets=pred)
    reference = DualDA(digits_cnn, "fc", train, C=0.01, batch_size=100)
    assert scores.shape == (len(xt), N)
    assert torch.allclose(scores, reference.influence((xt, pred)), atol=1e-6)
    # a list of targets works too (quanda's type)
    assert torch.allclose(explainer.explain(test_data=xt, targets=pred.tolist()), scores)


def test_self_influence_is_closed_form_not_a_loop(explainer, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("self_influence must not explain the training set sample by sample")

    monkeypatch.setattr(explainer, "explain", forbidden)
    values = explainer.self_influence()
    assert values.shape == (N,)
    assert torch.equal(values, explainer.dualda.self_influence())


def test_self_influence_equals_diagonal(explainer, noisy):
    train, _, _ = noisy
    x, y = train.tensors
    diag = explainer.explain(test_data=x, targets=y).diagonal()
    assert torch.allclose(explainer.self_influence(), diag, rtol=1e-4, atol=1e-6)


def test_mislabeling_detection_metric_matches_our_curve(noisy, digits_cnn):
    train, flip, _ = noisy
    for kind in ("self_influence", "hinge_loss"):
        metric = MislabelingDetectionMetric(
            model=digits_cnn,
            train_dataset=train,
            mislabeling_indices=flip.tolist(),
            explainer_cls=DualDAExplainer,
            expl_kwargs={"final_fc_layer": "fc", "C": 0.01, "batch_size": 100, "self_influence_kind": kind},
        )
        result = metric.compute()
        scores = metric.explainer.self_influence()
        # quanda 0.5.0 ranks by `self_influence + 1e-4 * index` and integrates its curve with the
        # trapezoidal rule over t = 1..n; with the same ranking our curve gives the same area.
        ranked = scores.double() + torch.arange(N, dtype=torch.float64) * 1e-4
        _, found = mislabel_detection_curve(ranked, flip)
        curve = found[1:]
        assert result["score"] == pytest.approx(float(curve.sum() - curve[0] / 2 - curve[-1] / 2) / N, abs=1e-6)
        assert 0.5 < result["score"] <= 1.0 and mislabel_auc(scores, flip) > 0.5


def test_class_detection_and_top_k_cardinality(explainer, noisy, digits_cnn):
    train, _, xt = noisy
    pred = digits_cnn(xt).argmax(1)
    scores = explainer.explain(test_data=xt, targets=pred)
    metric = ClassDetectionMetric(model=digits_cnn, train_dataset=train, s=5)
    metric.update(scores, test_targets=pred)
    ours = class_detection(scores, train.tensors[1], pred, k=5)
    assert metric.compute()["score"] == pytest.approx(ours, abs=1e-6)
    assert ours > 0.8
    card = TopKCardinalityMetric(model=digits_cnn, train_dataset=train, top_k=3)
    card.update(scores)
    assert 0.0 < card.compute()["score"] <= 1.0


def test_shortcut_detection_runs(explainer, noisy, digits_cnn):
    train, _, xt = noisy
    y = train.tensors[1]
    shortcut_cls = 3
    shortcut = (y == shortcut_cls).nonzero().flatten()[:10]
    pred = digits_cnn(xt).argmax(1)
    metric = ShortcutDetectionMetric(
        model=digits_cnn,
        train_dataset=train,
        shortcut_indices=shortcut.tolist(),
        shortcut_cls=shortcut_cls,
        filter_by_non_shortcut=False,
        filter_by_shortcut_pred=False,
    )
    metric.update(explainer.explain(test_data=xt, targets=torch.full_like(pred, shortcut_cls)))
    score = metric.compute()["score"]
    assert 0.0 <= score <= 1.0


def test_checkpoint_is_loaded(tmp_path, noisy, digits_cnn):
    import copy

    train, _, xt = noisy
    net = copy.deepcopy(digits_cnn)
    path = tmp_path / "ckpt.pt"
    torch.save(digits_cnn.state_dict(), path)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)  # a different model, fixed by loading the checkpoint
    explainer = DualDAExplainer(
        model=net, train_dataset=train, final_fc_layer="fc", C=0.01, batch_size=100, checkpoints=str(path)
    )
    reference = DualDA(digits_cnn, "fc", train, C=0.01, batch_size=100)
    assert torch.allclose(explainer.self_influence(), reference.self_influence(), atol=1e-6)


def test_rejects_bad_kind(noisy, digits_cnn):
    train, _, _ = noisy
    with pytest.raises(ValueError, match="self_influence_kind"):
        DualDAExplainer(model=digits_cnn, train_dataset=train, final_fc_layer="fc", self_influence_kind="x")
