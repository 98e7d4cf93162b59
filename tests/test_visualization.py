"""Figures and image helpers for DualDA / XDA explanations."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import PIL  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import train_classifier  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402
from zennit.canonizers import SequentialMergeBatchNorm  # noqa: E402
from zennit.composites import EpsilonPlusFlat  # noqa: E402
from zennit.image import imgify, palette  # noqa: E402

from captum_dualxda.dualda import DualDA  # noqa: E402
from captum_dualxda.visualization import (  # noqa: E402
    InfluentialSamples,
    explain_figure,
    heatmap_rgb,
    image_for_display,
    plot_explanation,
    to_captum_image,
)
from captum_dualxda.xda import XDA  # noqa: E402

DPI = 50


def render(fig: Figure) -> np.ndarray:
    """Render to PNG in memory (Agg) and read it back as an (H, W, 4) array."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    buffer.seek(0)
    return np.asarray(Image.open(buffer))


def check_rendered(fig: Figure) -> np.ndarray:
    png = render(fig)
    width, height = fig.get_size_inches()
    # matplotlib truncates the pixel size; allow that one pixel
    assert abs(png.shape[0] - height * DPI) <= 1 and abs(png.shape[1] - width * DPI) <= 1
    assert png[..., :3].std() > 0
    return png


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------
def test_to_captum_image_shapes_and_values():
    chw = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    hwc = to_captum_image(chw)
    assert hwc.shape == (3, 4, 2) and hwc.dtype == np.float64
    assert hwc[1, 2, 0] == chw[0, 1, 2] and hwc[1, 2, 1] == chw[1, 1, 2]
    batch = to_captum_image(torch.randn(5, 3, 6, 7))
    assert batch.shape == (5, 6, 7, 3)
    assert to_captum_image(np.ones((6, 7))).shape == (6, 7, 1)
    with pytest.raises(ValueError, match="x"):
        to_captum_image(torch.zeros(5))


def test_to_captum_image_feeds_captum_visualize_image_attr():
    from captum.attr import visualization as viz

    for channels in (1, 3):
        img = torch.rand(channels, 8, 8)
        attr = torch.randn(channels, 8, 8)
        fig, ax = viz.visualize_image_attr(
            to_captum_image(attr), to_captum_image(img), "blended_heat_map", sign="all", use_pyplot=False
        )
        assert isinstance(fig, Figure)
        check_rendered(fig)


def test_heatmap_rgb_colours_and_symmetry():
    table = palette("bwr")
    rel = torch.tensor([[[2.0, -2.0], [0.0, 1.0]]])  # (1, 2, 2)
    rgb = heatmap_rgb(rel)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[0, 0], table[255])  # most positive: red end
    assert np.array_equal(rgb[0, 1], table[0])  # most negative: blue end
    assert np.array_equal(rgb[1, 0], table[127])  # zero: centre (white for bwr)
    assert rgb[0, 0, 0] > rgb[0, 0, 2] and rgb[0, 1, 2] > rgb[0, 1, 0]
    # channels are summed; a batch gives one map per sample; a shared vmax is honoured
    rgb3 = heatmap_rgb(torch.stack([rel[0] / 3] * 3))
    assert np.array_equal(rgb3, rgb)
    batch = heatmap_rgb(torch.randn(4, 3, 5, 6))
    assert batch.shape == (4, 5, 6, 3)
    shared = heatmap_rgb(rel, vmax=4.0)
    assert np.array_equal(shared[0, 0], table[int(0.75 * 255)])
    assert np.array_equal(heatmap_rgb(torch.zeros(3, 4)), np.broadcast_to(table[127], (3, 4, 3)))
    # matplotlib colormaps work too
    from matplotlib import colormaps

    assert heatmap_rgb(rel, cmap=colormaps["bwr"]).shape == (2, 2, 3)
    with pytest.raises(ValueError, match="vmax"):
        heatmap_rgb(rel, vmax=0.0)
    with pytest.raises(ValueError, match="relevance"):
        heatmap_rgb(torch.zeros(1, 1, 1, 2, 2))


def test_heatmap_rgb_equals_zennit_imgify_with_palette_workaround():
    rel = np.random.default_rng(0).normal(size=(9, 11))
    img = imgify(rel, symmetric=True, cmap="coldnhot")
    img.putpalette(palette("coldnhot").tobytes())  # the Pillow 13 workaround
    assert np.array_equal(np.asarray(img.convert("RGB")), heatmap_rgb(rel, cmap="coldnhot"))


@pytest.mark.xfail(
    int(PIL.__version__.split(".")[0]) >= 13,
    raises=TypeError,
    strict=True,
    reason="zennit.image.imgify passes a NumPy palette that Pillow >= 13 cannot use; "
    "heatmap_rgb avoids it. An XPASS means zennit or Pillow fixed it.",
)
def test_zennit_imgify_user_path_with_this_pillow():
    img = imgify(np.random.default_rng(0).normal(size=(4, 4)), symmetric=True, cmap="bwr")
    img.convert("RGB")
    img.save(io.BytesIO(), format="png")


def test_image_for_display():
    grey = image_for_display(torch.rand(1, 6, 6))
    assert grey.shape == (6, 6)
    rgb = image_for_display(torch.rand(3, 6, 6))
    assert rgb.shape == (6, 6, 3) and rgb.min() >= 0 and rgb.max() <= 1
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    raw = torch.rand(3, 4, 4)
    normalized = (raw - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    back = image_for_display(normalized, denormalize=(mean, std))
    assert np.allclose(back, raw.permute(1, 2, 0).numpy(), atol=1e-6)
    wide = image_for_display(torch.linspace(-3, 5, 16).reshape(1, 4, 4))
    assert wide.min() == 0 and wide.max() == 1
    with pytest.raises(ValueError, match="denormalize"):
        image_for_display(torch.rand(1, 4, 4), denormalize=(mean, std))
    with pytest.raises(ValueError, match="image"):
        image_for_display(torch.rand(2, 4, 4))


# ------------------------------------------------------------------------------------------
# plot_explanation on synthetic data
# ------------------------------------------------------------------------------------------
def samples(k, channels, sign, heat=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (k, channels, 12, 12)
    return InfluentialSamples(
        indices=torch.arange(k) + 10 * seed,
        scores=sign * torch.linspace(2.0, 1.0, k),
        images=torch.rand(shape, generator=g),
        labels=torch.arange(k) % 3,
        train_relevance=torch.randn(shape, generator=g) if heat else None,
        test_relevance=torch.randn(shape, generator=g) if heat else None,
    )


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("heat", [True, False])
def test_plot_explanation_panels(channels, heat):
    n_prop, n_opp = 3, 2
    fig = plot_explanation(
        torch.rand(channels, 12, 12),
        targets=2,
        proponents=samples(n_prop, channels, 1.0, heat, seed=1),
        opponents=samples(n_opp, channels, -1.0, heat, seed=2),
        test_label=1,
        class_names=["cat", "dog", "bird"],
        denormalize=((0.5,) * channels, (0.25,) * channels),
        title="test figure",
    )
    assert isinstance(fig, Figure)
    expected = 1 + n_prop + n_opp + (2 * (n_prop + n_opp) if heat else 0)
    assert len(fig.axes) == expected
    check_rendered(fig)
    texts = " ".join(ax.get_title() for ax in fig.axes)
    assert "bird" in texts and "dog" in texts and "τ = +2" in texts and "τ = -2" in texts


@pytest.mark.parametrize("scale", ["pair", "panel", "figure"])
def test_plot_explanation_scales_and_partial_groups(scale):
    fig = plot_explanation(torch.rand(12, 12), 0, samples(2, 1, 1.0, seed=3), None, heatmap_scale=scale)
    assert len(fig.axes) == 1 + 2 + 4
    check_rendered(fig)
    empty = InfluentialSamples(
        torch.zeros(0, dtype=torch.long), torch.zeros(0), torch.zeros(0, 1, 12, 12), torch.zeros(0, dtype=torch.long)
    )
    only_test = plot_explanation(torch.rand(1, 1, 12, 12), 0, empty, empty)
    assert len(only_test.axes) == 1
    check_rendered(only_test)


def test_plot_explanation_errors():
    good = samples(2, 1, 1.0)
    bad_scores = samples(2, 1, 1.0)
    bad_scores.scores = torch.ones(3)
    with pytest.raises(ValueError, match="proponents.scores"):
        plot_explanation(torch.rand(1, 12, 12), 0, bad_scores)
    bad_heat = samples(2, 1, -1.0)
    bad_heat.test_relevance = torch.zeros(2, 1, 5, 5)
    with pytest.raises(ValueError, match="opponents.test_relevance"):
        plot_explanation(torch.rand(1, 12, 12), 0, good, bad_heat)
    with pytest.raises(ValueError, match="heatmaps"):
        plot_explanation(torch.rand(1, 12, 12), 0, good, samples(2, 1, -1.0, heat=False))
    with pytest.raises(ValueError, match="heatmap_scale"):
        plot_explanation(torch.rand(1, 12, 12), 0, good, heatmap_scale="global")
    with pytest.raises(ValueError, match="class_names"):
        plot_explanation(torch.rand(1, 12, 12), 5, good, class_names=["a", "b"])
    with pytest.raises(TypeError, match="proponents"):
        plot_explanation(torch.rand(1, 12, 12), 0, (1, 2, 3, 4))


# ------------------------------------------------------------------------------------------
# explain_figure with DualDA and XDA
# ------------------------------------------------------------------------------------------
class SmallDigitNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten()
        )
        self.fc = nn.Linear(128, 10)

    def forward(self, x):
        return self.fc(self.body(x))


@pytest.fixture(scope="module")
def digit_dualda(digits):
    x_train, y_train, x_test, y_test = digits
    x_train, y_train = x_train[:250], y_train[:250]
    torch.manual_seed(1)
    net = train_classifier(SmallDigitNet(), x_train, y_train, epochs=3, lr=1e-2, batch_size=50)
    return DualDA(net, "fc", TensorDataset(x_train, y_train), C=1e-2), x_test[:2], y_test[:2]


def test_explain_figure_with_heatmaps(digit_dualda):
    dualda, x, y = digit_dualda
    composite = EpsilonPlusFlat(zero_params="bias", canonizers=[SequentialMergeBatchNorm()])
    xda = XDA(dualda.model, dualda.final_fc_layer, composite)
    k = 3
    with torch.no_grad():
        pred = dualda.model(x[:1]).argmax(1)
    top = dualda.influence((x[:1], pred), k=k).influence_scores[0]
    bottom = dualda.influence((x[:1], pred), k=k, proponents=False).influence_scores[0]
    n_panels = int((top > 0).sum()) + int((bottom < 0).sum())
    assert n_panels > 0
    fig = explain_figure(
        dualda, x[0], k=k, xda=xda, test_label=int(y[0]), class_names=[f"digit {c}" for c in range(10)]
    )
    assert len(fig.axes) == 1 + 3 * n_panels
    assert f"predicted: digit {int(pred)}" in fig.axes[0].get_title()
    check_rendered(fig)
    assert not composite.handles


def test_explain_figure_without_heatmaps_and_errors(digit_dualda):
    dualda, x, _ = digit_dualda
    fig = explain_figure(dualda, x[1:2], targets=3, k=2, skip_zero=False)
    assert len(fig.axes) == 1 + 2 + 2
    assert "predicted: 3" in fig.axes[0].get_title()
    check_rendered(fig)
    with pytest.raises(ValueError, match="k"):
        explain_figure(dualda, x[0], k=0)
    with pytest.raises(ValueError, match="test_input"):
        explain_figure(dualda, x, k=2)


# ------------------------------------------------------------------------------------------
# Text pairs
# ------------------------------------------------------------------------------------------
def test_text_pair_records_html_and_figure():
    from captum_dualxda.visualization import plot_text_pair, show_text_pair, text_pair_records

    test_tokens, train_tokens = ["the", "cat", "sat"], ["a", "cat", "ran", "off"]
    test_rel = torch.tensor([0.0, 0.5, -0.1, 0.0])  # one padding position beyond the tokens
    train_rel = torch.tensor([0.1, 1.0, 0.0, -0.2])
    records = text_pair_records(test_tokens, test_rel, train_tokens, train_rel, 0.4, 2, train_index=7, train_label=2)
    assert [r.attr_class for r in records] == ["test", "training #7"]
    assert records[0].raw_input_ids == test_tokens and records[1].raw_input_ids == train_tokens
    # One scale for the pair: the largest |relevance| (1.0) maps to 1.
    assert torch.allclose(records[1].word_attributions, train_rel.double())
    assert torch.allclose(records[0].word_attributions, test_rel[:3].double())
    assert records[0].attr_score == pytest.approx(0.4) and records[1].attr_score == pytest.approx(0.9)
    html = show_text_pair(test_tokens, test_rel, train_tokens, train_rel, 0.4, 2).data
    assert all(token in html for token in test_tokens + train_tokens)
    fig = plot_text_pair(test_tokens, test_rel, train_tokens, train_rel, 0.4, title="pair")
    shown = {t.get_text(): t for t in fig.axes[0].texts}
    assert {"test", "training", "pair", "tau = +0.4"} | set(test_tokens + train_tokens) <= set(shown)
    red = shown["cat"].get_bbox_patch().get_facecolor()  # "cat" appears twice; the training one (1.0) wins
    assert red[0] > 0.9 and red[2] < 0.1
    with pytest.raises(ValueError, match="NaN"):
        plot_text_pair(test_tokens, torch.tensor([0.0, float("nan"), 0.0]), train_tokens, train_rel, 0.4)
    with pytest.raises(ValueError, match="2 scores for 3 tokens"):
        text_pair_records(test_tokens, torch.zeros(2), train_tokens, train_rel, 0.4, 2)
