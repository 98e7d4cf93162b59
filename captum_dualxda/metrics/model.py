"""Quality measures that run the model or read a DualDA fit: mislabel scores, the training-loss
baseline, and how closely the SVM surrogate follows the network."""

from __future__ import annotations

from typing import Any, Iterator, Optional, Tuple, Union

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .._core.data import as_dataloader, loader_batches, model_input_batches, split_batch
from .._core.features import batch_features_and_output, model_device, output_logits
from .._core.probe import ModelProbe
from .._core.surrogate import surrogate_logits
from .._utils.inputs import call_model, inputs_to
from .._utils.validation import check_flag, check_integer
from ..dualda import DualDA
from .scores import Fidelity, logit_fidelity

__all__ = ["mislabel_scores", "training_loss", "surrogate_fidelity"]


def mislabel_scores(dualda: DualDA, kind: str = "self_influence") -> torch.Tensor:
    """Per-training-sample mislabel scores from a fitted :class:`~captum_dualxda.DualDA`.

    Parameters
    ----------
    dualda : DualDA
    kind : {"self_influence", "hinge_loss"}
        ``"self_influence"`` (the paper's choice): ``a_i^{y_i} ||phi(x_i)||^2``, the diagonal of
        the attribution matrix. ``"hinge_loss"``: the surrogate SVM's Crammer-Singer hinge loss
        ``max_m (1 - [m == y_i] + s_m(x_i)) - s_{y_i}(x_i)`` on each training sample
        (``DualDA.train_hinge_loss``, computed during the fit at no extra cost). Which one finds
        flipped labels better depends on ``C`` and the data; ``benchmarks/peers.py`` measures
        both. Both are non-negative; a sample with zero score is not a support vector / is
        fitted with margin.

    Returns
    -------
    torch.Tensor
        ``(n_train,)`` float32 on the CPU, higher = more suspicious.
    """
    if kind == "self_influence":
        return dualda.self_influence().detach().float().cpu()
    if kind == "hinge_loss":
        return dualda.train_hinge_loss.detach().float().cpu()
    raise ValueError(f"`kind` must be 'self_influence' or 'hinge_loss', got {kind!r}.")


def _forward_batches(
    model: nn.Module, data: Union[Dataset, DataLoader], batch_size: int, show_progress: bool = False
) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(logits, labels)`` of every Captum batch ``(x_1, ..., x_m, labels)``, in dataset order."""
    loader = as_dataloader(data, batch_size, "data")
    device = model_device(model)
    try:
        total: Optional[int] = len(loader)
    except TypeError:  # an IterableDataset without a length
        total = None
    batches = loader_batches(loader)
    for batch in tqdm(batches, total=total, desc="training loss", disable=not show_progress, leave=False):
        inputs, labels = split_batch(batch, "data")
        with ModelProbe(model), torch.no_grad():
            logits = output_logits(call_model(model, inputs_to(inputs, device)))
        yield logits, labels.to(device)


def training_loss(
    model: nn.Module, train_dataset: Union[Dataset, DataLoader], batch_size: int = 256, show_progress: bool = False
) -> torch.Tensor:
    """Baseline mislabel scores: the network's cross-entropy on each sample's own label.

    The cheapest mislabel detector there is (one forward pass); any attribution-based score
    should be compared with it. With possibly flipped labels, ``label`` is the label the network
    was trained on.

    Parameters
    ----------
    model : nn.Module
        A classifier returning logits ``(N, K)``; run in eval mode under ``no_grad`` (its mode
        is restored).
    train_dataset : Dataset or DataLoader
        Yields ``(x_1, ..., x_m, label)``; read in dataset order (a shuffling loader too).
    batch_size : int
    show_progress : bool
        A tqdm bar over the batches.

    Returns
    -------
    torch.Tensor
        ``(n_train,)`` float32 on the CPU, higher = more suspicious.
    """
    show_progress = check_flag(show_progress, "show_progress")
    losses = [
        nn.functional.cross_entropy(logits.float(), labels, reduction="none").cpu()
        for logits, labels in _forward_batches(model, train_dataset, batch_size, show_progress)
    ]
    return torch.cat(losses)


def surrogate_fidelity(dualda: DualDA, inputs: Any, batch_size: int = 256) -> Fidelity:
    """Agreement between DualDA's SVM surrogate and the network on the given inputs.

    The surrogate logits are ``phi(x) @ dualda.weight.T + dualda.intercept``; the network
    logits are ``model(x)``. DualDA explains the network through the surrogate, so low
    agreement means the attributions describe a model that predicts differently (raise ``C``).

    Parameters
    ----------
    dualda : DualDA
    inputs : Tensor, tuple, dict or DataLoader
        A Tensor ``x`` (``model(x)``), a tuple of model inputs (``model(*inputs)``, no labels), a
        dict of model inputs (``model(**inputs)``), or a DataLoader of batches (labels ignored).
    batch_size : int
        Batch size for a Tensor or tuple.

    Returns
    -------
    Fidelity
    """
    batch_size = check_integer(batch_size, "batch_size", low=1)
    net, sur = [], []
    for batch in model_input_batches(inputs, batch_size, "inputs"):
        if dualda.feature_layers is None:
            phi, output = batch_features_and_output(dualda.model, dualda.final_fc_layer, batch)
        else:  # the SVM's weights are on psi = [phi, scaled inputs of the feature layers]
            phi, output = dualda._features_and_output(batch)
        net.append(output_logits(output, dualda.final_fc_layer.out_features).detach().double().cpu())
        sur.append(surrogate_logits(phi, dualda.weight, dualda.intercept))
    return logit_fidelity(torch.cat(net), torch.cat(sur))
