"""Checkpoint ensembles: one fit per checkpoint, and every result the mean over the checkpoints.

``DualDA(..., checkpoints=...)`` fits one SVM per checkpoint (each with its checkpoint loaded into
the model) and keeps them in a :class:`CheckpointEnsemble`. Everything that differs for an
ensemble lives here, whoever asks: DualDA's scores and self-influence, the XDA pairs of
:func:`~captum_dualxda.xda_pairs` (each pair computed with its checkpoint loaded), and the errors
of what belongs to a single fit (coefficients, the label-issue ranking). The model always comes
back with the weights it had (:func:`~captum_dualxda._core.checkpoints.weights_restored`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any, Callable, Generic, NamedTuple, Optional, Protocol, TypeVar, Union

import torch
from torch import nn
from tqdm import tqdm

from .checkpoints import CheckpointLoader, checkpoint_paths, load_state_dict_checkpoint, weights_restored

__all__ = ["CheckpointEnsemble", "mean_of_tuples"]


class Member(Protocol):
    """What the ensemble reads of each fit (a single-fit :class:`~captum_dualxda.DualDA`)."""

    fit_stats: dict[str, Any]

    @property
    def n_train(self) -> int: ...

    @property
    def train_labels(self) -> torch.Tensor: ...

    @property
    def absent_classes(self) -> torch.Tensor: ...

    def self_influence(self) -> torch.Tensor: ...


M = TypeVar("M", bound=Member)
T = TypeVar("T")
P = TypeVar("P", bound=NamedTuple)


class CheckpointEnsemble(Generic[M]):
    """Fits of one model at several checkpoints, used together.

    Parameters
    ----------
    model : nn.Module
        The model the checkpoints are loaded into (and given back as it was).
    paths : list of str
        The checkpoint files, in order.
    load : callable
        ``(model, path) -> Any`` loading one checkpoint in place.
    members : list
        One fit per path, made with that checkpoint loaded.
    """

    def __init__(self, model: nn.Module, paths: list[str], load: CheckpointLoader, members: list[M]) -> None:
        self.model = model
        self.paths = paths
        self.load = load
        self.members = members

    @classmethod
    def fit(
        cls,
        model: nn.Module,
        checkpoints: Union[str, os.PathLike, Iterable[str]],
        load: Optional[CheckpointLoader],
        fit_member: Callable[[], M],
        show_progress: bool = False,
    ) -> CheckpointEnsemble[M]:
        """Load each checkpoint in turn and fit it; the model's weights are put back afterwards.

        Parameters
        ----------
        model : nn.Module
        checkpoints : str or iterable of str
            A directory (its files sorted by name), one file, or paths (Captum ``TracInCP``'s
            argument).
        load : callable, optional
            ``(model, path) -> Any`` (Captum's ``checkpoints_load_func``); default
            :func:`~captum_dualxda._core.checkpoints.load_state_dict_checkpoint`.
        fit_member : callable
            ``() -> fit`` of the model as it is (with the checkpoint loaded).
        show_progress : bool
            A tqdm bar over the checkpoints.

        Raises
        ------
        TypeError
            ``load`` is not callable.
        ValueError, FileNotFoundError
            No checkpoint, or a missing file (:func:`~captum_dualxda._core.checkpoints.checkpoint_paths`).
        RuntimeError
            The training data gave other labels for another checkpoint.
        """
        if load is not None and not callable(load):
            raise TypeError(f"`checkpoints_load_func` must be callable (model, path), got {type(load).__name__}.")
        paths = checkpoint_paths(checkpoints)
        loader: CheckpointLoader = load if load is not None else load_state_dict_checkpoint
        members: list[M] = []
        with weights_restored(model):
            for path in tqdm(paths, desc="DualDA checkpoints", disable=not show_progress, leave=False):
                loader(model, path)
                members.append(fit_member())
        first = members[0]
        if any(not torch.equal(m.train_labels, first.train_labels) for m in members[1:]):
            raise RuntimeError("`train_dataset` gave different labels while the checkpoints were fitted.")
        return cls(model, paths, loader, members)

    def __len__(self) -> int:
        return len(self.members)

    @property
    def first(self) -> M:
        """The fit of the first checkpoint (training labels, ``n_train`` and absent classes are every fit's)."""
        return self.members[0]

    def fit_stats(self) -> dict[str, Any]:
        """``checkpoints`` (each fit's statistics), total ``time`` and ``extraction_time``, ``converged`` (all)."""
        stats = [m.fit_stats for m in self.members]
        return {
            "checkpoints": stats,
            "time": sum(s["time"] for s in stats),
            "extraction_time": sum(s["extraction_time"] for s in stats),
            "converged": all(s["converged"] for s in stats),
        }

    def mean_scores(
        self, batches: Iterable[Any], score: Callable[[M, Any], torch.Tensor], reduce: Callable[[torch.Tensor], T]
    ) -> list[T]:
        """Per batch, ``reduce`` of the mean over the checkpoints of ``score(fit, batch)``.

        The model's weights are copied once for the call and put back at its end; each
        checkpoint is loaded once per batch.
        """
        results = []
        with weights_restored(self.model):
            for batch in batches:
                total: Optional[torch.Tensor] = None
                for path, member in zip(self.paths, self.members):
                    self.load(self.model, path)
                    scores = score(member, batch)
                    total = scores if total is None else total + scores
                assert total is not None  # an ensemble has at least one checkpoint
                results.append(reduce(total / len(self.members)))
        return results

    def over_checkpoints(self, compute: Callable[[M], T]) -> list[T]:
        """``compute(fit)`` for every checkpoint, each with its checkpoint loaded (once); the
        model's weights are put back afterwards."""
        with weights_restored(self.model):
            results = []
            for path, member in zip(self.paths, self.members):
                self.load(self.model, path)
                results.append(compute(member))
        return results

    def self_influence(self) -> torch.Tensor:
        """``(n_train,)`` mean of the fits' self-influence (closed form: no checkpoint is loaded)."""
        return torch.stack([m.self_influence() for m in self.members]).mean(0)

    def single_fit_error(self, name: str) -> AttributeError:
        """The error for an attribute or method that belongs to a single fit."""
        return AttributeError(
            f"`{name}` belongs to a single fit; this DualDA is an ensemble of {len(self)} checkpoints with one "
            "SVM each. Fit DualDA without `checkpoints` on one of them for it."
        )

    def refusal(self, task: str) -> ValueError:
        """The error for a task that needs a DualDA fitted on one model."""
        return ValueError(
            f"`dualda` is a checkpoint ensemble; {task} with a DualDA fitted on one model (the final checkpoint, "
            "loaded into the model)."
        )


def mean_of_tuples(parts: Sequence[P], same: Sequence[str] = ()) -> P:
    """The field-wise mean of named tuples of tensors; the fields in ``same`` are taken from the first."""
    first = parts[0]
    values = {
        name: getattr(first, name) if name in same else torch.stack([getattr(p, name) for p in parts]).mean(0)
        for name in first._fields
    }
    return first._replace(**values)
