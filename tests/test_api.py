"""One vocabulary across the public API, and the old call forms kept for one release.

The final linear layer is ``final_fc_layer`` everywhere, the classes to explain are ``targets``,
every slow call takes ``show_progress``; parameters after the first three are keyword-only, and the
former positional and keyword forms still work with a DeprecationWarning.
"""
from __future__ import annotations

import inspect

import pytest
import torch
from torch.utils.data import TensorDataset
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonPlus

from captum_dualxda import XDA, DualDA, xda_pairs
from captum_dualxda import metrics
from captum_dualxda.choose_c import sweep_C
from captum_dualxda.visualization import InfluentialSamples, explain_figure, plot_explanation


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
    for function, position in ((xda_pairs, 3), (explain_figure, 2), (plot_explanation, 1),
                               (metrics.class_detection, 2), (metrics.class_detection_from_indices, 2),
                               (metrics.random_class_detection, 1)):
        assert params(function)[position] == "targets", function
    for function in (DualDA, sweep_C, xda_pairs, explain_figure, DualDA.influence, DualDA.self_influence,
                     metrics.training_loss):
        assert "show_progress" in params(function), function
    assert "device" in params(sweep_C)


def test_parameters_after_the_first_three_are_keyword_only():
    for function in (DualDA, sweep_C):
        kinds = [p.kind for p in inspect.signature(function).parameters.values()]
        assert kinds[:3] == [inspect.Parameter.POSITIONAL_OR_KEYWORD] * 3
        assert set(kinds[3:]) == {inspect.Parameter.KEYWORD_ONLY}, function


def test_dualda_old_positional_form_still_works(fitted, digits_cnn):
    dualda, train, _ = fitted
    with pytest.warns(DeprecationWarning, match="C, batch_size of DualDA by position"):
        old = DualDA(digits_cnn, "fc", train, 0.01, 64)
    assert torch.equal(old.self_influence(), dualda.self_influence())
    with pytest.raises(TypeError, match="multiple values"), pytest.warns(DeprecationWarning):
        DualDA(digits_cnn, "fc", train, 0.01, C=0.01)


def test_xda_takes_final_fc_layer_and_the_former_name(fitted, digits_cnn):
    dualda, _, xt = fitted
    with pytest.warns(DeprecationWarning, match="`feature_layer` of XDA is now called `final_fc_layer`"):
        old = XDA(digits_cnn, feature_layer="fc")
    assert old.final_fc_layer is digits_cnn.fc and old.feature_layer is digits_cnn.fc
    with pytest.raises(TypeError, match="multiple values"), pytest.warns(DeprecationWarning):
        XDA(digits_cnn, "fc", feature_layer="fc")
    xda = XDA(digits_cnn, "fc", EpsilonPlus(zero_params="bias", canonizers=[SequentialMergeBatchNorm()]))
    top = dualda.influence((xt, torch.tensor([1, 2])), k=2)
    new = xda_pairs(dualda, xda, xt, torch.tensor([1, 2]), top.indices, feature_batch_size=3)
    with pytest.warns(DeprecationWarning, match="feature_batch_size of xda_pairs by position"):
        again = xda_pairs(dualda, xda, xt, torch.tensor([1, 2]), top.indices, 3)
    assert torch.equal(new.train_relevance, again.train_relevance)


def test_xda_pairs_progress_changes_nothing(fitted, digits_cnn, capsys):
    dualda, _, xt = fitted
    xda = XDA(digits_cnn, "fc", EpsilonPlus(zero_params="bias", canonizers=[SequentialMergeBatchNorm()]))
    top = dualda.influence((xt, torch.tensor([1, 2])), k=2)
    quiet = xda_pairs(dualda, xda, xt, torch.tensor([1, 2]), top.indices)
    assert capsys.readouterr().err == ""
    loud = xda_pairs(dualda, xda, xt, torch.tensor([1, 2]), top.indices, show_progress=True)
    assert "XDA pairs" in capsys.readouterr().err
    assert torch.equal(quiet.test_relevance, loud.test_relevance) and torch.equal(quiet.scores, loud.scores)


def test_former_keyword_names_of_the_figures_and_metrics(fitted):
    dualda, train, xt = fitted
    with pytest.warns(DeprecationWarning, match="`target` of explain_figure"):
        fig = explain_figure(dualda, xt[0], target=3, k=1)
    assert "predicted: 3" in fig.axes[0].get_title()
    samples = InfluentialSamples(torch.tensor([0]), torch.tensor([1.0]), train.tensors[0][:1], train.tensors[1][:1])
    with pytest.warns(DeprecationWarning, match="`predicted_class` of plot_explanation"):
        plot_explanation(xt[0], predicted_class=1, proponents=samples)
    scores = torch.tensor([[0.0, 2.0, 1.0]])
    with pytest.warns(DeprecationWarning, match="`classes` of class_detection"):
        old = metrics.class_detection(scores, [0, 1, 1], classes=[1], k=2)
    assert old == metrics.class_detection(scores, [0, 1, 1], targets=[1], k=2) == 1.0


def test_sweep_C_lives_in_choose_c_and_is_still_importable_from_metrics():
    from captum_dualxda import choose_c

    assert metrics.sweep_C is choose_c.sweep_C and metrics.SweepRow is choose_c.SweepRow
    assert metrics.format_markdown is choose_c.format_markdown
    with pytest.raises(AttributeError):
        metrics.not_a_metric
