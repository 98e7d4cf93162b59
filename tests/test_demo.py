"""The main job: ``python -m captum_dualxda demo`` and :func:`captum_dualxda.demo.run_demo`."""

from __future__ import annotations

import os
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.image import imread  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from captum_dualxda import demo  # noqa: E402
from captum_dualxda.__main__ import main  # noqa: E402
from captum_dualxda.demo import report as demo_report  # noqa: E402
from captum_dualxda.demo import run as demo_run  # noqa: E402

SMALL = dict(n_train=240, epochs=2, n_explain=1, k=2, seed=0, show_progress=False, dpi=40)
SMALL_ARGS = ["--n-train", "240", "--epochs", "2", "--n-explain", "1", "--k", "2"]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, demo.run_demo(str(out), **SMALL)


# ------------------------------------------------------------------------------------------
# run_demo end to end
# ------------------------------------------------------------------------------------------
def test_run_demo_writes_non_blank_figures(small_run):
    out, result = small_run
    assert set(result.files) == {"explanation_0", "mislabel_detection", "mislabel_suspects", "self_influence"}
    for name, path in result.files.items():
        assert os.path.dirname(path) == str(out) and os.path.getsize(path) > 0
        if path.endswith(".png"):
            pixels = imread(path)
            assert pixels.ndim == 3 and pixels[..., :3].std() > 0, name
    assert result.explained == [0]


def test_printed_auc_matches_returned_data(small_run):
    _, result = small_run
    n_train = SMALL["n_train"]
    assert result.self_influence.shape == (n_train,) and result.flipped.shape == (n_train,)
    assert result.flipped.dtype == bool and result.n_flipped == int(result.flipped.sum()) == 24
    expected = roc_auc_score(result.flipped, result.self_influence)
    assert result.auc == pytest.approx(expected, abs=1e-12)
    printed = [line for line in result.summary().splitlines() if "ROC AUC (self-influence)" in line]
    assert len(printed) == 1 and printed[0].split()[-1] == f"{expected:.3f}"
    # top-10 % recall recomputed from the returned data
    top = np.argsort(-result.self_influence, kind="stable")[: int(np.ceil(0.1 * n_train))]
    assert result.found_top10 == pytest.approx(result.flipped[top].sum() / result.flipped.sum())


def test_metrics_are_consistent(small_run):
    _, result = small_run
    n_train = SMALL["n_train"]
    assert result.sparsity == pytest.approx(1 - result.n_support / result.n_train)
    assert 0 < result.n_support <= result.n_train == n_train and result.n_test == 449
    # Recomputed from what the run returns: the random baseline and the default settings.
    random_scores = np.random.default_rng(SMALL["seed"]).random(n_train)
    assert result.random_auc == pytest.approx(roc_auc_score(result.flipped, random_scores), abs=1e-12)
    assert result.C == 1e-3 and result.flip_rate == 0.1
    assert result.solver_gap < 1e-3 and np.isfinite(result.hinge_auc)
    printed = [
        line for line in result.summary().splitlines() if "rank_label_issues (held-out margin, C=0.0001), AUC" in line
    ]
    assert len(printed) == 1 and printed[0].split()[-4] == f"{result.hinge_auc:.3f}"
    assert result.fit_time > 0 and result.ms_per_test_sample > 0 and result.xda_ms_per_pair > 0


def test_label_issue_rows_match_returned_data(small_run):
    """The rank_label_issues rows of the summary, recomputed from the returned scores and flags."""
    _, result = small_run
    scores, flags, flipped = result.label_issue_scores, result.label_issue_flags, result.flipped
    assert result.hinge_auc == pytest.approx(roc_auc_score(flipped, scores), abs=1e-12)
    # The documented flag rule: the highest scores, as many as confident learning estimates.
    n_flagged = int(flags.sum())
    assert (scores[flags].min() if n_flagged else np.inf) >= (
        scores[~flags].max() if n_flagged < len(flags) else -np.inf
    )
    hits = int((flags & flipped).sum())
    assert flags.sum() > 0 and result.issues_precision == hits / flags.sum()
    assert result.issues_recall == hits / flipped.sum()
    printed = [line for line in result.summary().splitlines() if "rank_label_issues: flagged" in line]
    assert len(printed) == 1
    assert printed[0].endswith(
        f"{int(flags.sum())}, {100 * result.issues_precision:.1f} % / {100 * result.issues_recall:.1f} %"
    )


def test_run_demo_is_deterministic(small_run, tmp_path):
    _, first = small_run
    second = demo.run_demo(str(tmp_path), **SMALL)
    np.testing.assert_array_equal(first.self_influence, second.self_influence)
    np.testing.assert_array_equal(first.flipped, second.flipped)
    for name in ("test_accuracy", "surrogate_agreement", "n_support", "auc", "found_top10", "loss_auc"):
        assert getattr(first, name) == getattr(second, name), name


def test_run_demo_runs_on_one_thread_and_restores_the_setting(tmp_path, monkeypatch):
    seen = []
    real_train = demo.train_cnn

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real_train(*args, **kwargs)

    monkeypatch.setattr(demo_run, "train_cnn", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        demo.run_demo(str(tmp_path), **{**SMALL, "n_explain": 0, "epochs": 1})
        assert seen == [1]  # the run itself used one thread
        assert torch.get_num_threads() == 2  # and put the caller's setting back
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(flip_rate=1.0), "flip_rate"),
        (dict(flip_rate=-0.1), "flip_rate"),
        (dict(C=0.0), "`C`"),
        (dict(C=float("nan")), "`C`"),
        (dict(k=0), "`k`"),
        (dict(n_explain=-1), "n_explain"),
        (dict(epochs=0), "epochs"),
        (dict(seed=-1), "`seed`"),
        (dict(seed=2**63), "`seed`"),
        (dict(seed=True), "`seed`"),
        (dict(seed=1.0), "`seed`"),
        (dict(k=np.float64(2)), "`k`"),
        (dict(C=True), "`C`"),
        (dict(dpi=0), "`dpi`"),
        (dict(num_threads=0), "`num_threads`"),
        (dict(show_progress="no"), "`show_progress`"),
    ],
)
def test_run_demo_rejects_bad_settings_before_training(kwargs, word, tmp_path, monkeypatch):
    monkeypatch.setattr(demo_run, "train_cnn", lambda *a, **k: pytest.fail("trained despite bad settings"))
    with pytest.raises(ValueError, match=word):
        demo.run_demo(str(tmp_path), **kwargs)


# ------------------------------------------------------------------------------------------
# Pieces
# ------------------------------------------------------------------------------------------
def test_flip_rate_zero_reports_na_instead_of_crashing(tmp_path):
    """Nothing flipped: metrics.mislabel_auc / mislabel_detection_curve would raise; the demo says n/a."""
    result = demo.run_demo(str(tmp_path), **{**SMALL, "flip_rate": 0.0, "n_explain": 0})
    assert result.n_flipped == 0 and not result.flipped.any()
    for name in ("auc", "found_top10", "random_auc", "loss_auc", "loss_found_top10"):
        assert np.isnan(getattr(result, name)), name
    assert set(result.files) == {"mislabel_suspects", "self_influence"}  # no detection curve
    summary = result.summary()
    for row in ("mislabel detection ROC AUC (self-influence)", "flipped labels found in top 10 % of ranking"):
        line = [line for line in summary.splitlines() if line.startswith(row)]
        assert len(line) == 1 and line[0].split()[-1] == "n/a", row
    assert "n/a / n/a" in summary and "0 (0.0 %)" in summary


def test_undefined_auc_and_recall_are_nan():
    scores = np.array([0.9, 0.1, 0.8, 0.2])
    assert np.isnan(demo_report.auc_or_nan(scores, np.zeros(4, bool)))
    assert np.isnan(demo_report.auc_or_nan(scores, np.ones(4, bool)))  # no clean sample either
    assert np.isnan(demo_report.found_in_top(scores, np.zeros(4, bool), 0.5))
    positives = np.array([True, False, False, True])
    assert demo_report.auc_or_nan(scores, positives) == pytest.approx(roc_auc_score(positives, scores))
    assert demo_report.found_in_top(scores, positives, 0.5) == 0.5  # top 2: indices 0 and 2


def test_load_digits_data_flips_deterministically():
    a = demo.load_digits_data(flip_rate=0.2, seed=3, n_train=500)
    b = demo.load_digits_data(flip_rate=0.2, seed=3, n_train=500)
    assert a.x_train.shape == (500, 1, 8, 8) and a.x_test.shape == (449, 1, 8, 8)
    assert int(a.flipped.sum()) == 100
    assert bool((a.y_train[a.flipped] != a.y_train_clean[a.flipped]).all())
    assert bool((a.y_train[~a.flipped] == a.y_train_clean[~a.flipped]).all())
    assert torch.equal(a.y_train, b.y_train) and torch.equal(a.x_train, b.x_train)
    assert float(a.x_train.min()) >= 0 and float(a.x_train.max()) <= 1
    assert not torch.equal(demo.load_digits_data(0.2, seed=4, n_train=500).flipped, a.flipped)


# ------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------
def test_cli_prints_table_and_exits_zero(tmp_path, capsys):
    code = main(["demo", "--out", str(tmp_path / "out"), *SMALL_ARGS])
    captured = capsys.readouterr()
    assert code == 0
    for row in (
        "CNN test accuracy",
        "SVM surrogate agrees with CNN",
        "support vectors",
        "sparsity",
        "fit time",
        "DualDA ms per test sample",
        "mislabel detection ROC AUC",
        "flipped labels found in top 10 %",
    ):
        assert row in captured.out, row
    # progress bars go to stderr, never into the table
    assert "training CNN" in captured.err and "training CNN" not in captured.out
    assert (tmp_path / "out" / "explanation_0.png").is_file()


def test_cli_no_progress(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--no-progress", *SMALL_ARGS]) == 0
    captured = capsys.readouterr()
    assert "training CNN" not in captured.err
    assert "mislabel detection ROC AUC" in captured.out


@pytest.mark.parametrize("make_out", ["file", "below_file"])
def test_cli_unwritable_out_is_a_clear_error(make_out, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo_run, "train_cnn", lambda *a, **k: pytest.fail("trained despite a bad --out"))
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    out = blocker if make_out == "file" else blocker / "sub"
    assert main(["demo", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and str(blocker) in err


@pytest.mark.parametrize(
    "args, word",
    [
        (["--flip-rate", "1"], "--flip-rate"),
        (["--flip-rate", "-0.5"], "--flip-rate"),
        (["--C", "0"], "--C"),
        (["--C", "-1"], "--C"),
        (["--C", "nan"], "--C"),
        (["--k", "0"], "--k"),
        (["--k", "two"], "--k"),
        (["--epochs", "0"], "--epochs"),
        (["--seed", "-1"], "--seed"),
        (["--seed", str(2**63)], "--seed"),
        (["--seed", str(2**64)], "--seed"),
    ],
)
def test_cli_rejects_bad_arguments(args, word, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo_run, "train_cnn", lambda *a, **k: pytest.fail("trained despite bad arguments"))
    assert main(["demo", "--out", str(tmp_path), *args]) == 2
    assert word in capsys.readouterr().err


def test_run_demo_accepts_numpy_settings_and_a_large_seed(tmp_path):
    result = demo.run_demo(
        str(tmp_path),
        **{
            **SMALL,
            "n_train": np.int64(60),
            "epochs": np.int64(1),
            "n_explain": np.int64(0),
            "k": np.int64(2),
            "seed": 2**63 - 1,
            "C": np.float32(0.5),
            "flip_rate": np.float32(0.25),
        },
    )
    assert result.n_train == 60 and result.seed == 2**63 - 1 and result.C == 0.5


@pytest.mark.parametrize("kind", ["same_name", "other_name", "subfolder", "link"])
def test_out_holding_other_files_is_refused_before_training(kind, tmp_path, capsys, monkeypatch):
    """The user's files in --out are never overwritten, deleted or mixed with the demo's."""
    monkeypatch.setattr(demo_run, "train_cnn", lambda *a, **k: pytest.fail("trained despite a used --out"))
    out = tmp_path / "out"
    out.mkdir()
    name = {
        "same_name": "self_influence.csv",
        "other_name": "notes.txt",
        "subfolder": "figures",
        "link": "mislabel_suspects.png",
    }[kind]
    if kind == "subfolder":
        (out / name).mkdir()
    elif kind == "link":
        (tmp_path / "elsewhere.png").write_bytes(b"mine")
        (out / name).symlink_to(tmp_path / "elsewhere.png")
    else:
        (out / name).write_text("my own data\n")
    before = sorted(p.name for p in out.iterdir())
    assert main(["demo", "--out", str(out), *SMALL_ARGS]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and name in err and "did not write" in err
    with pytest.raises(ValueError, match="`out_dir`.*did not write"):
        demo.run_demo(str(out), **SMALL)
    assert sorted(p.name for p in out.iterdir()) == before
    if kind in ("same_name", "other_name"):
        assert (out / name).read_text() == "my own data\n"


def test_a_second_run_replaces_the_first_runs_outputs(tmp_path, monkeypatch):
    settings = {**SMALL, "n_train": 60, "epochs": 1}
    first = demo.run_demo(str(tmp_path), **{**settings, "n_explain": 2})
    assert {"explanation_0", "explanation_1"} <= set(first.files)
    second = demo.run_demo(str(tmp_path), **{**settings, "n_explain": 0, "flip_rate": 0.0})
    written = {os.path.basename(path) for path in second.files.values()}
    assert "mislabel_detection.png" not in written  # nothing flipped: no curve this time
    # Only the second run's files (and the record of them) are left: no stale figures.
    assert {p.name for p in tmp_path.iterdir()} == written | {demo.OUTPUT_MANIFEST}
    assert demo.check_out_dir(str(tmp_path)) != []  # they may be replaced by a third run
    # An output the user changed afterwards is theirs now: refused, never overwritten.
    csv_path = tmp_path / "self_influence.csv"
    csv_path.write_text(csv_path.read_text() + "my note\n")
    monkeypatch.setattr(demo_run, "train_cnn", lambda *a, **k: pytest.fail("trained despite a changed output"))
    with pytest.raises(ValueError, match="changed since the demo wrote them \\(self_influence.csv\\)"):
        demo.run_demo(str(tmp_path), **settings)
    assert csv_path.read_text().endswith("my note\n")


def test_cli_help_and_missing_command(capsys):
    assert main(["demo", "--help"]) == 0
    assert "--flip-rate" in capsys.readouterr().out
    assert main([]) == 2


def test_python_dash_m_exit_code(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    proc = subprocess.run(
        [sys.executable, "-m", "captum_dualxda", "demo", "--out", str(blocker)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "--out" in proc.stderr and proc.stdout == ""


def test_annotate_marks_flipped_labels_in_explanation_titles():
    """The demo marks flipped training labels through plot_explanation's `annotate` callback."""
    from captum_dualxda.visualization import InfluentialSamples, plot_explanation

    data = demo.load_digits_data(flip_rate=0.2, seed=0, n_train=100)
    flipped = torch.nonzero(data.flipped).flatten()[:2]
    clean = torch.nonzero(~data.flipped).flatten()[:1]
    idx = torch.cat([flipped, clean])
    samples = InfluentialSamples(
        indices=idx, scores=torch.tensor([3.0, 2.0, 1.0]), images=data.x_train[idx], labels=data.y_train[idx]
    )

    def was(j):
        return f" (was {int(data.y_train_clean[j])})" if bool(data.flipped[j]) else ""

    fig = plot_explanation(data.x_test[0], 1, samples, annotate=was)
    titles = {ax.get_title().split()[0]: ax.get_title() for ax in fig.axes if ax.get_title().startswith("#")}
    assert len(titles) == 3
    for j in flipped.tolist():
        assert (
            titles[f"#{j}"].splitlines()[0] == f"#{j}  label {int(data.y_train[j])} (was {int(data.y_train_clean[j])})"
        )
    assert "(was" not in titles[f"#{int(clean[0])}"]
