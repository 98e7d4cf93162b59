"""SolverSettings: one frozen, validated object for the solver settings, used by every fit and by the cache key."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import captum_dualxda.choose_c as choose_c_module
import captum_dualxda.label_issues as label_issues_module
from captum_dualxda import DualDA, rank_label_issues
from captum_dualxda._core.state import fit_fingerprint
from captum_dualxda.choose_c import sweep_C
from captum_dualxda.solver import DEFAULT_C, fit_crammer_singer
from captum_dualxda.solver.settings import SolverSettings

CHANGED = {
    "C": 0.5,
    "fit_intercept": False,
    "intercept_scaling": 2.0,
    "tol": 1e-3,
    "max_iter": 7,
    "seed": 3,
    "backend": "bdcd",
}


def test_the_defaults_are_the_solver_entry_points_defaults():
    import inspect

    parameters = inspect.signature(fit_crammer_singer).parameters
    settings = SolverSettings()
    for field in dataclasses.fields(SolverSettings):
        assert getattr(settings, field.name) == parameters[field.name].default, field.name
    assert settings.C == DEFAULT_C


def test_settings_are_frozen_and_checked_on_construction():
    settings = SolverSettings(C=np.float32(0.25), max_iter=np.int64(5))
    assert type(settings.C) is float and type(settings.max_iter) is int
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.C = 1.0  # type: ignore[misc]
    for name, bad in (
        ("C", 0.0),
        ("C", float("nan")),
        ("max_iter", True),
        ("max_iter", 0),
        ("tol", -1.0),
        ("fit_intercept", "yes"),
        ("backend", "fast"),
        ("intercept_scaling", float("inf")),
    ):
        with pytest.raises((TypeError, ValueError), match=name):
            SolverSettings(**{name: bad})
    with pytest.raises(ValueError, match="C"):
        settings.replace(C=-1.0)  # a copy is checked again


def test_the_cache_key_holds_every_setting_by_name():
    model = nn.Linear(3, 2)
    batches = [(torch.ones(4, 3), torch.tensor([0, 1, 0, 1]))]
    base = fit_fingerprint(model, "weight", batches, SolverSettings())
    assert base == fit_fingerprint(model, "weight", batches, SolverSettings())
    assert [name for name, _ in SolverSettings().key_items()] == [f.name for f in dataclasses.fields(SolverSettings)]
    keys = {
        name: fit_fingerprint(model, "weight", batches, SolverSettings(**{name: value}))
        for name, value in CHANGED.items()
    }
    assert base not in keys.values() and len(set(keys.values())) == len(CHANGED)


@pytest.fixture(scope="module")
def small_fit():
    torch.manual_seed(0)
    x = torch.randn(60, 4)
    y = torch.arange(60) % 3
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    data = TensorDataset(x, y)
    return model, data, DualDA(model, "2", data, C=0.05, tol=1e-3, max_iter=500, seed=4, batch_size=32)


def test_dualda_sweep_c_and_label_issues_share_one_settings_object(small_fit, monkeypatch):
    model, data, dualda = small_fit
    assert dualda.settings == SolverSettings(C=0.05, tol=1e-3, max_iter=500, seed=4)
    assert (dualda.C, dualda.tol, dualda.max_iter, dualda.seed) == (0.05, 1e-3, 500, 4)

    seen = []

    def spy(real):
        def solve(features, labels, n_classes, settings, **kwargs):
            seen.append(settings)
            return real(features, labels, n_classes, settings, **kwargs)

        return solve

    monkeypatch.setattr(label_issues_module, "solve", spy(label_issues_module.solve))
    monkeypatch.setattr(choose_c_module, "solve", spy(choose_c_module.solve))
    rank_label_issues(dualda, C=0.01)
    assert seen[-1] == dualda.settings.replace(C=0.01)  # everything but C is DualDA's
    sweep_C(model, "2", data, Cs=[0.01, 0.1], tol=1e-3, max_iter=500, seed=4, batch_size=32)
    assert isinstance(seen[-1], SolverSettings)
    assert seen[-1].replace(C=0.05) == dualda.settings
