"""One vocabulary across the public API.

The final linear layer is ``final_fc_layer`` everywhere, the classes to explain are ``targets``,
every slow call takes ``show_progress``; parameters after the first three are keyword-only.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from torch.utils.data import TensorDataset
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonPlus

from captum_dualxda import XDA, DualDA, metrics, xda_pairs
from captum_dualxda.choose_c import sweep_C
from captum_dualxda.visualization import explain_figure, plot_explanation


@pytest.fixture(scope="module")
def fitted(digits, digits_cnn):
    x, y, xt, _ = digits
    train = TensorDataset(x[:150], y[:150])
    return DualDA(digits_cnn, "fc", train, C=0.01), train, xt[:2]


def test_one_name_for_the_layer_and_for_the_classes_to_explain():
    def params(function):
        return list(inspect.signature(function).parameters)

    for function in (DualDA, XDA, sweep_C):
        assert params(function)[1] == "final_fc_layer", function
    for function, position in (
        (xda_pairs, 3),
        (explain_figure, 2),
        (plot_explanation, 1),
        (metrics.class_detection, 2),
        (metrics.class_detection_from_indices, 2),
        (metrics.random_class_detection, 1),
    ):
        assert params(function)[position] == "targets", function
    for function in (
        DualDA,
        sweep_C,
        xda_pairs,
        explain_figure,
        DualDA.influence,
        DualDA.self_influence,
        metrics.training_loss,
    ):
        assert "show_progress" in params(function), function
    assert "device" in params(sweep_C)


def test_parameters_after_the_first_three_are_keyword_only():
    for function in (DualDA, sweep_C):
        kinds = [p.kind for p in inspect.signature(function).parameters.values()]
        assert kinds[:3] == [inspect.Parameter.POSITIONAL_OR_KEYWORD] * 3
        assert set(kinds[3:]) == {inspect.Parameter.KEYWORD_ONLY}, function


def test_settings_by_position_and_former_names_are_refused(digits, digits_cnn):
    x, y, _, _ = digits
    train = TensorDataset(x[:20], y[:20])
    with pytest.raises(TypeError):
        DualDA(digits_cnn, "fc", train, 0.01)  # C is keyword-only
    with pytest.raises(TypeError, match="feature_layer"):
        XDA(digits_cnn, feature_layer="fc")
    assert not hasattr(XDA(digits_cnn, "fc"), "feature_layer")
    assert not hasattr(metrics, "sweep_C")  # choose_c.sweep_C is the one place


def test_xda_pairs_progress_changes_nothing(fitted, digits_cnn, capsys):
    dualda, _, xt = fitted
    xda = XDA(digits_cnn, "fc", EpsilonPlus(zero_params="bias", canonizers=[SequentialMergeBatchNorm()]))
    top = dualda.influence((xt, torch.tensor([1, 2])), k=2)
    quiet = xda_pairs(dualda, xda, xt, torch.tensor([1, 2]), top.indices)
    assert capsys.readouterr().err == ""
    loud = xda_pairs(dualda, xda, xt, torch.tensor([1, 2]), top.indices, show_progress=True)
    assert "XDA pairs" in capsys.readouterr().err
    assert torch.equal(quiet.test_relevance, loud.test_relevance) and torch.equal(quiet.scores, loud.scores)
