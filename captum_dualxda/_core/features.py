"""The features ``phi``: which layer, and ``phi`` of one batch.

DualDA and XDA both work on ``phi(x)``: the INPUT of the network's final ``nn.Linear``
(Captum's ``final_fc_layer`` convention), flattened to ``(N, d)``. :func:`resolve_linear_layer`
finds that layer; :func:`batch_features` captures ``phi`` of one batch through a
:class:`~captum_dualxda._core.probe.ModelProbe`, and :class:`FeatureExtractor` does the same for many
batches through one probe (what extraction over a whole training set,
:mod:`captum_dualxda._core.store`, uses).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple, Union

import torch
from torch import nn

from .._utils.inputs import ModelInputs, call_model, inputs_to
from .probe import ModelProbe

__all__ = [
    "resolve_linear_layer",
    "resolve_feature_layers",
    "FeatureLayers",
    "LayerTaps",
    "layer_name",
    "model_device",
    "batch_features",
    "batch_features_and_output",
    "FeatureExtractor",
    "check_autocast",
    "output_logits",
    "hf_last_token",
    "pooled_positions",
    "predict",
]

AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)
"""The dtypes ``autocast`` accepts (those of :class:`torch.autocast`)."""


def _submodule(model: nn.Module, name: str) -> Optional[nn.Module]:
    """The submodule of ``model`` at the dotted ``name`` (``"classifier.1"``), or None if there is none."""
    try:
        module = functools.reduce(getattr, name.split("."), model) if name else None
    except AttributeError:
        return None
    return module if isinstance(module, nn.Module) else None


def _is_part_of(model: nn.Module, module: nn.Module) -> bool:
    """Whether ``module`` is ``model`` or one of its submodules (by identity)."""
    return any(m is module for m in model.modules())


def resolve_linear_layer(model: nn.Module, layer: Union[str, nn.Module], argument: str = "final_fc_layer") -> nn.Linear:
    """Return the model's final linear layer given as a module or a dotted name.

    Parameters
    ----------
    model : nn.Module
    layer : str or nn.Module
        e.g. ``"fc"`` or ``"classifier.3"`` or the module itself.
    argument : str
        Argument name used in error messages.

    Returns
    -------
    nn.Linear

    Raises
    ------
    ValueError
        The name does not exist in ``model``, or the module is not part of ``model``.
    TypeError
        The layer is not an ``nn.Linear`` (e.g. a ReLU picked by ``list(model.children())[-1]``).
    """
    if isinstance(layer, str):
        module = _submodule(model, layer)
        if module is None:
            names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
            raise ValueError(
                f"`{argument}`={layer!r} is not a submodule of the model. Linear layers found: {names or 'none'}."
            )
    elif isinstance(layer, nn.Module):
        module = layer
        if not _is_part_of(model, module):
            raise ValueError(f"`{argument}` is a module that is not part of `model`.")
    else:
        raise TypeError(f"`{argument}` must be an nn.Linear module or its dotted name, got {type(layer).__name__}.")
    if not isinstance(module, nn.Linear):
        raise TypeError(
            f"`{argument}` must be the final nn.Linear layer (its input is the feature vector), "
            f"got {type(module).__name__}. Pass the Linear layer itself or its dotted name."
        )
    return module


def layer_name(model: nn.Module, layer: nn.Module) -> str:
    """Dotted name of ``layer`` inside ``model`` (``""`` for the model itself)."""
    for name, module in model.named_modules():
        if module is layer:
            return name
    raise ValueError("`layer` is not part of `model`.")


def resolve_feature_layers(
    model: nn.Module, final_layer: nn.Linear, layers: Any, argument: str = "feature_layers"
) -> FeatureLayers:
    """Resolve ``DualDA(feature_layers=...)``: the extra layers whose inputs join ``phi``.

    Parameters
    ----------
    model : nn.Module
    final_layer : nn.Linear
        The final linear layer (its input ``phi`` comes first; it cannot be listed again).
    layers : sequence of nn.Module or str
        Modules of ``model`` or their dotted names (like ``final_fc_layer``), in the order
        their inputs are concatenated after ``phi``.
    argument : str
        Argument name used in error messages.

    Returns
    -------
    FeatureLayers
        The modules and their dotted names in ``model`` (widths not known yet).

    Raises
    ------
    TypeError
        ``layers`` is not a list or tuple, or an entry is neither a module nor a string.
    ValueError
        Empty; an entry not in the model, the model itself, the final layer, or listed twice.
    """
    if isinstance(layers, (str, nn.Module)) or not isinstance(layers, (list, tuple)):
        raise TypeError(
            f"`{argument}` must be a list or tuple of layers (modules or dotted names), got {type(layers).__name__}; "
            f"e.g. `{argument}=['fc1', 'fc2']`."
        )
    if not layers:
        raise ValueError(f"`{argument}` is empty: pass None for phi alone, or the layers whose inputs to add.")
    linear_names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and m is not final_layer]
    modules: List[nn.Module] = []
    names: List[str] = []
    for layer in layers:
        if isinstance(layer, str):
            module = _submodule(model, layer)
            if module is None:
                raise ValueError(
                    f"`{argument}` entry {layer!r} is not a submodule of the model. Other linear layers found: "
                    f"{linear_names or 'none'}."
                )
        elif isinstance(layer, nn.Module):
            module = layer
            if not _is_part_of(model, module):
                raise ValueError(f"`{argument}` holds a module that is not part of `model` ({type(module).__name__}).")
        else:
            raise TypeError(f"`{argument}` entries must be modules or dotted names, got {type(layer).__name__}.")
        if module is model:
            raise ValueError(f"`{argument}` cannot hold the model itself; name the layers whose inputs to add.")
        if module is final_layer:
            raise ValueError(
                f"`{argument}` holds `final_fc_layer` itself; its input phi is always the first block. List only "
                "the earlier layers whose inputs to add."
            )
        if any(module is m for m in modules):
            raise ValueError(f"`{argument}` lists {layer_name(model, module)!r} twice.")
        modules.append(module)
        names.append(layer_name(model, module))
    return FeatureLayers(modules, names)


@dataclass
class FeatureLayers:
    """The extra layers of ``DualDA(feature_layers=...)`` (:func:`resolve_feature_layers`).

    Attributes
    ----------
    modules : list of nn.Module
    names : list of str
        Their dotted names.
    widths : list of int, optional
        The flattened width of each layer's input, set by the first pass that captures them
        (:class:`LayerTaps`); every later pass must give the same widths.
    """

    modules: List[nn.Module]
    names: List[str]
    widths: Optional[List[int]] = None


class LayerTaps:
    """Forward pre-hooks capturing the inputs of ``DualDA(feature_layers=...)``'s extra layers.

    Used inside a :class:`~captum_dualxda._core.probe.ModelProbe` (which holds the model's lock
    and restores its state); :meth:`blocks` checks each pass: every layer ran exactly once,
    before the final layer, on a tensor with one row per sample, and its flattened width is the
    one of the first pass.

    Parameters
    ----------
    final_layer : nn.Linear
    spec : FeatureLayers
        The layers; its ``widths`` are set by the first pass and checked by every later one.
    detach : bool
        Capture detached inputs (False keeps the autograd graph, for relevance passes).
    prepend : bool
        Register the hooks before every other pre-hook of their layers: under a zennit composite
        the captured input is then the tensor before the rule's own input node, so relevance
        injected there adds to what the rule passes down instead of being replaced by it.
    """

    def __init__(self, final_layer: nn.Module, spec: FeatureLayers, detach: bool = True, prepend: bool = False) -> None:
        self.final_layer = final_layer
        self.spec = spec
        self.layers = list(spec.modules)
        self.names = list(spec.names)
        self.detach = detach
        self.prepend = prepend
        self.events: List[Tuple[int, Any]] = []  # (layer index or -1 for the final layer, input)
        self._handles: List[Any] = []
        self._thread: Optional[int] = None

    def _hook(self, index: int) -> Any:
        def hook(module: nn.Module, args: Tuple[Any, ...]) -> None:
            if threading.get_ident() != self._thread:
                return
            value = args[0] if args else None
            if isinstance(value, torch.Tensor) and self.detach:
                value = value.detach()
            self.events.append((index, value))

        return hook

    def __enter__(self) -> LayerTaps:
        self._thread = threading.get_ident()
        self.events = []
        try:
            for i, layer in enumerate(self.layers):
                self._handles.append(layer.register_forward_pre_hook(self._hook(i), prepend=self.prepend))
            self._handles.append(self.final_layer.register_forward_pre_hook(self._hook(-1), prepend=self.prepend))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def blocks(self, n: int, token_model: bool) -> List[torch.Tensor]:
        """The inputs of the extra layers in this pass, each ``(n, d_b)``; clears the record.

        Parameters
        ----------
        n : int
            Samples in the batch (rows of ``phi``).
        token_model : bool
            The inputs are a dict (Hugging Face) or the final layer sees a sequence: a layer
            input with a sequence dimension is refused.

        Raises
        ------
        ValueError
            A layer did not run, ran more than once, ran after the final layer, or its input has
            another number of rows, a sequence dimension or another width than in the first pass.
        TypeError
            A layer's input is not a tensor.
        """
        events, self.events = self.events, []
        final_at = next((k for k, (i, _) in enumerate(events) if i == -1), len(events))
        out: List[torch.Tensor] = []
        for i, name in enumerate(self.names):
            seen = [k for k, (j, _) in enumerate(events) if j == i]
            if not seen:
                raise ValueError(
                    f"`feature_layers` entry {name!r} did not run in the forward pass: it is not used by "
                    "`model.forward`, so it has no input to add. Remove it from `feature_layers`."
                )
            if len(seen) > 1:
                raise ValueError(
                    f"`feature_layers` entry {name!r} ran {len(seen)} times in one forward pass: its input is no "
                    "single vector per sample. Remove it from `feature_layers`."
                )
            if seen[0] > final_at:
                raise ValueError(
                    f"`feature_layers` entry {name!r} runs after `final_fc_layer` in the forward pass: only layers "
                    "that compute phi (reached before the final layer) can add features. Remove it."
                )
            value = events[seen[0]][1]
            if not isinstance(value, torch.Tensor):
                raise TypeError(
                    f"The input of `feature_layers` entry {name!r} is a {type(value).__name__}, expected a tensor. "
                    "Remove it from `feature_layers`."
                )
            if value.ndim == 0 or value.shape[0] != n:
                raise ValueError(
                    f"The input of `feature_layers` entry {name!r} has shape {tuple(value.shape)}, not {n} rows (one "
                    "per sample). Remove it from `feature_layers`."
                )
            if token_model and value.ndim > 2:
                raise ValueError(
                    f"The input of `feature_layers` entry {name!r} has shape {tuple(value.shape)}, a sequence "
                    "dimension (a token model): its width changes with the padded length, so it is no fixed feature "
                    "vector. `feature_layers` takes layers that see one vector per sample (e.g. the layers of a "
                    "classification head after pooling)."
                )
            out.append(value.reshape(n, -1))
        widths = [b.shape[1] for b in out]
        if self.spec.widths is None:
            self.spec.widths = widths
        elif widths != self.spec.widths:
            bad = next(k for k in range(len(widths)) if widths[k] != self.spec.widths[k])
            raise ValueError(
                f"The input of `feature_layers` entry {self.names[bad]!r} has {widths[bad]} values per sample in this "
                f"batch and {self.spec.widths[bad]} in the fit's (a sequence or image size that varies): it is no "
                "fixed feature vector. Remove it from `feature_layers`."
            )
        return out


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a model without any)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


def output_logits(output: Any, n_classes: Optional[int] = None) -> torch.Tensor:
    """The logits in a model output.

    The tensor itself; ``output.logits`` (a Hugging Face ``ModelOutput``) or ``output["logits"]``;
    or, in a tuple or list (e.g. ``(features, logits)``, or ``(loss, logits)`` of
    ``return_dict=False``), its element shaped ``(N, n_classes)`` (``(N, K)`` of any width without
    ``n_classes``) when exactly one is, or its only tensor.

    Parameters
    ----------
    output : Any
        What the model returned.
    n_classes : int, optional
        ``K``, the outputs of the final layer: the width the logits must have.

    Returns
    -------
    torch.Tensor
        The logits, usually ``(N, K)``.

    Raises
    ------
    ValueError
        A tuple or list in which no element, or several, has the logits' shape.
    TypeError
        An output with no tensor to take.
    """
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, Mapping):
        logits = output.get("logits")
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, (tuple, list)):
        tensors = [(i, v) for i, v in enumerate(output) if isinstance(v, torch.Tensor)]
        if len(tensors) == 1:
            return tensors[0][1]
        fits = [(i, v) for i, v in tensors if v.ndim == 2 and (n_classes is None or v.shape[1] == n_classes)]
        if len(fits) == 1:
            return fits[0][1]
        if tensors:
            shapes = ", ".join(f"[{i}]: {tuple(v.shape)}" for i, v in tensors)
            wanted = f"(N, {n_classes})" if n_classes is not None else "(N, K)"
            found = "none has" if not fits else f"{len(fits)} ({', '.join(f'[{i}]' for i, _ in fits)}) have"
            raise ValueError(
                f"The model returns a {type(output).__name__} of {len(output)} elements (tensors {shapes}) and "
                f"{found} the logits' shape {wanted}, so the logits cannot be told apart. Make the model return the "
                "logits alone, e.g. a wrapper module whose forward returns `model(x)[i]`"
                + (
                    "; or, if one of them is the logits, `final_fc_layer` is not the layer computing them."
                    if not fits and n_classes is not None
                    else "."
                )
            )
    raise TypeError(f"Cannot find the logits in a model output of type {type(output).__name__}.")


def check_layer_makes_the_logits(layer: nn.Linear, layer_input: torch.Tensor, output: Any) -> None:
    """Refuse a layer that cannot be the one producing the model's ``(N, K)`` logits.

    With one vector per sample, ``phi`` must be the input of the layer whose outputs are the
    class scores: a layer with another number of outputs is an inner layer (e.g. the ``dense``
    layer of a RoBERTa-style head, before ``out_proj``), and the SVM would be fitted on the wrong
    representation, with the wrong classes; a layer that sees more (or fewer) rows than the model
    returns logits for sees several vectors per sample (e.g. ``(N*T, d)`` flattened before the
    head). Only the shapes are compared, so models returning log-probabilities or scaled logits
    pass; outputs without recognisable logits are not checked.

    Raises
    ------
    ValueError
        The logits have another number of rows than ``layer_input``, or ``N`` rows and a number
        of columns other than ``layer.out_features``; the output is a tuple without one element
        shaped like logits (:func:`output_logits`).
    """
    try:
        logits = output_logits(output, layer.out_features)
    except TypeError:
        return
    if logits.ndim >= 1 and logits.shape[0] != layer_input.shape[0]:
        raise ValueError(
            f"`final_fc_layer` received {layer_input.shape[0]} rows (input shape {tuple(layer_input.shape)}) but the "
            f"model returns logits of shape {tuple(logits.shape)}, for {logits.shape[0]} samples: the model gives the "
            "layer several vectors per sample (e.g. reshaped to (N*T, d) before the final layer and combined "
            "after it), or another set of rows. DualDA needs the one feature vector per sample that the logits "
            "are computed from: pass a model whose final layer sees (N, d), or (N, T, d) when the logits are "
            "those of one position."
        )
    if logits.ndim == 2 and logits.shape[1] != layer.out_features:
        raise ValueError(
            f"`final_fc_layer` has {layer.out_features} outputs but the model returns logits of shape "
            f"{tuple(logits.shape)}: phi must be the input of the layer that computes the {logits.shape[1]} "
            "class scores (the last Linear layer of the head, e.g. `classifier.out_proj` of a RoBERTa-style "
            "classification head), not of an inner layer."
        )


def pooled_features(
    layer: nn.Linear, layer_input: torch.Tensor, logits: torch.Tensor, hint: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """``(N, d)`` the representation the model classifies, from ``layer``'s input and the logits.

    A final layer applied to one vector per sample sees ``(N, d)``: that is ``phi``. A layer
    applied to every position (the ``score`` head of decoder classifiers such as Llama, Qwen,
    Mistral or GPT-2, which then keep one position per sample, e.g. the last token that is not
    padding) sees ``(N, T, d)``; ``phi`` is then the input at the position whose head output
    equals the model's logits, found by comparing the two (so it is right whatever rule picked
    the position, left or right padding alike).

    Parameters
    ----------
    layer : nn.Linear
    layer_input : torch.Tensor
        ``(N, d)`` or ``(N, ..., d)``, as the layer saw it.
    logits : torch.Tensor
        ``(N, K)`` the model's output logits.
    hint : torch.Tensor, optional
        ``(N,)`` positions by the model's own rule, to break ties (see :func:`pooled_positions`).

    Raises
    ------
    ValueError
        The logits are not the layer's output at one position of its input (the model pools
        after the final layer, or returns per-position logits).
    """
    if layer_input.ndim == 2:
        return layer_input
    x = layer_input.reshape(layer_input.shape[0], -1, layer_input.shape[-1])
    return x[torch.arange(x.shape[0], device=x.device), pooled_positions(layer, layer_input, logits, hint)]


def pooled_positions(
    layer: nn.Linear, layer_input: torch.Tensor, logits: torch.Tensor, hint: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """``(N,)`` int64: at which position of ``layer``'s input ``(N, T, d)`` the model classifies.

    The position whose head output equals the model's logits. Where several positions give the
    logits within rounding, they must hold the same vector (any of them is then right), or
    ``hint`` must be one of them; otherwise the position is ambiguous and this raises.

    Parameters
    ----------
    layer : nn.Linear
    layer_input : torch.Tensor
        ``(N, T, d)`` (or ``(N, ..., d)``).
    logits : torch.Tensor
        ``(N, K)``.
    hint : torch.Tensor, optional
        ``(N,)`` positions by the model's documented rule (e.g. Hugging Face's last token that
        is not padding), used to break ties.

    Raises
    ------
    ValueError
        No position gives the logits, or several different ones do and ``hint`` is none of them.
    """
    x = layer_input.reshape(layer_input.shape[0], -1, layer_input.shape[-1])
    logits = logits.detach().to(x.dtype)
    if logits.shape != (x.shape[0], layer.out_features):
        raise ValueError(
            f"The input of `final_fc_layer` has shape {tuple(layer_input.shape)} (one vector per position) but the "
            f"model returns logits of shape {tuple(logits.shape)}, not (N, K) = ({x.shape[0]}, {layer.out_features}): "
            "DualDA needs one feature vector per sample."
        )
    with torch.no_grad():
        error = (nn.functional.linear(x, layer.weight, layer.bias) - logits[:, None, :]).abs().amax(-1)  # (N, T)
    scale = logits.abs().amax(-1, keepdim=True).clamp_min(1.0)
    tolerance = (1e-2 if x.dtype in (torch.float16, torch.bfloat16) else 1e-4) * scale
    close = error <= tolerance  # (N, T)
    if not bool(close.any(1).all()):
        raise ValueError(
            "The model's logits are not `final_fc_layer` applied to one position of its input (the model "
            "combines positions after the final layer): DualDA cannot tell which representation it "
            "classifies. Pass a final layer whose input is one vector per sample."
        )
    positions = x.shape[1] - 1 - close.flip(1).int().argmax(1)  # the rightmost matching position
    rows = torch.arange(x.shape[0], device=x.device)
    chosen = x[rows, positions]
    spread = ((x - chosen[:, None, :]).abs().amax(-1) * close).amax(1)  # differences among the matches
    ambiguous = spread > 1e-4 * chosen.abs().amax(-1).clamp_min(1.0)
    if bool(ambiguous.any()):
        if hint is not None and bool(close[rows, hint.to(x.device)].all()):
            return torch.where(ambiguous, hint.to(x.device), positions)
        raise ValueError(
            "Several positions of `final_fc_layer`'s input give the model's logits but hold different "
            "vectors: the position the model classifies is ambiguous."
        )
    return positions


def hf_last_token(inputs: Any, model: nn.Module) -> Optional[torch.Tensor]:
    """Hugging Face's pooled position: the last token that is not ``config.pad_token_id``.

    None when ``inputs`` carry no ``input_ids`` or the model has no pad token configured.
    """
    pad = getattr(getattr(model, "config", None), "pad_token_id", None)
    if not isinstance(inputs, Mapping) or "input_ids" not in inputs or pad is None:
        return None
    ids = inputs["input_ids"]
    return (torch.arange(ids.shape[-1], device=ids.device) * (ids != pad)).argmax(-1)


def check_autocast(autocast: Any, device: torch.device, argument: str = "autocast") -> Optional[torch.dtype]:
    """Validate a mixed-precision setting for forward passes on ``device``.

    Parameters
    ----------
    autocast : None, torch.bfloat16 or torch.float16
        The dtype of :class:`torch.autocast` for the model's forward passes; None: the model's
        own precision.
    device : torch.device
        Where the model runs.
    argument : str
        Argument name used in error messages.

    Returns
    -------
    torch.dtype or None

    Raises
    ------
    ValueError
        Another value, or a device type without autocast.
    """
    if autocast is None:
        return None
    if not isinstance(autocast, torch.dtype) or autocast not in AUTOCAST_DTYPES:
        raise ValueError(
            f"`{argument}` must be None (the model's own precision), torch.bfloat16 or torch.float16, got {autocast!r}."
        )
    if not torch.amp.is_autocast_available(device.type):
        raise ValueError(
            f"`{argument}`={autocast} is not available for a model on {device.type!r}: torch.autocast does not "
            "support it."
        )
    return autocast


def forward_precision(device: torch.device, autocast: Optional[torch.dtype]) -> Any:
    """The precision context of this package's forward passes on ``device``.

    ``torch.autocast(dtype=autocast)`` when a dtype is given. With None, any ``torch.autocast``
    the caller has active for that device type is switched off: the model runs in its own
    precision, which is what a fit with ``autocast=None`` promises (and what its cache key
    stands for), wherever the call is made from.
    """
    if autocast is not None:
        return torch.autocast(device.type, dtype=autocast)
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


class FeatureExtractor:
    """Context manager: ``phi`` (and the model output) of many batches through one model probe.

    On entry it opens one :class:`~captum_dualxda._core.probe.ModelProbe` (the model's lock, eval
    mode, a pre-hook on ``layer``) for every batch of a pass, instead of one per batch; on exit
    everything is restored. Each call moves the inputs to the model's device
    (``non_blocking``, so pinned batches are copied asynchronously), runs the model under
    ``torch.no_grad()``, optionally under ``torch.autocast(dtype=autocast)``, and returns the
    captured features. Not ``torch.inference_mode()``: a tensor the model creates and keeps during
    the pass (a cached causal mask or rotary table, on any submodule, in a list, a class attribute
    or a global cache) would be an inference tensor, and the model's next training step would fail
    on it; the forward pass costs the same under both.

    Parameters
    ----------
    model : nn.Module
    layer : nn.Linear
        The final linear layer; ``phi`` is its input.
    autocast : torch.dtype, optional
        ``torch.bfloat16`` or ``torch.float16``: mixed-precision forward passes (validated with
        :func:`check_autocast`). The features come back in the dtype the layer saw
        (half precision); callers cast them. None: the model's own precision, also inside a
        caller's ``torch.autocast`` block (:func:`forward_precision`).
    extra : FeatureLayers, optional
        ``DualDA(feature_layers=...)``: the inputs of these layers (flattened, unscaled) are
        concatenated after ``phi`` (:class:`LayerTaps` checks each pass).

    Examples
    --------
    >>> with FeatureExtractor(model, model.fc) as extract:          # doctest: +SKIP
    ...     phis = [extract(inputs)[0] for inputs in batches]
    """

    def __init__(
        self,
        model: nn.Module,
        layer: nn.Linear,
        autocast: Optional[torch.dtype] = None,
        extra: Optional[FeatureLayers] = None,
    ) -> None:
        self.model = model
        self.layer = layer
        self.device = model_device(model)
        self.autocast = check_autocast(autocast, self.device)
        self._probe = ModelProbe(model, layer, flatten=False)
        self._taps = None if extra is None else LayerTaps(layer, extra)

    def __enter__(self) -> FeatureExtractor:
        self._probe.__enter__()
        if self._taps is not None:
            try:
                self._taps.__enter__()
            except BaseException:
                self._probe.__exit__(None, None, None)
                raise
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        try:
            if self._taps is not None:
                self._taps.remove()
        finally:
            self._probe.__exit__(exc_type, exc_value, traceback)

    def __call__(self, inputs: ModelInputs) -> Tuple[torch.Tensor, Any]:
        """``(phi (N, d) on the model's device, model output)`` of one batch of model inputs.

        Raises
        ------
        RuntimeError
            The forward pass never reached ``layer``.
        ValueError
            The layer's outputs are not the model's logits (an inner layer); it ran more than once
            in the pass; it sees more rows than the model returns logits for; or it sees several
            positions per sample and the model's logits are none of them.
        """
        self._probe.captured = []  # only this pass's calls of the layer
        if self._taps is not None:
            self._taps.events = []
        with torch.no_grad(), forward_precision(self.device, self.autocast):
            output = call_model(self.model, inputs_to(inputs, self.device, non_blocking=True))
            layer_input = self._probe.features()
            if layer_input.ndim == 2:
                check_layer_makes_the_logits(self.layer, layer_input, output)
                phi = layer_input
            else:
                if self._taps is not None:
                    raise ValueError(
                        f"`final_fc_layer` sees one vector per position (input shape {tuple(layer_input.shape)}, a "
                        "token model's head): `feature_layers` is not supported there. Fit without `feature_layers`."
                    )
                phi = pooled_features(
                    self.layer,
                    layer_input,
                    output_logits(output, self.layer.out_features),
                    hf_last_token(inputs, self.model),
                )
            if self._taps is not None:
                blocks = self._taps.blocks(phi.shape[0], token_model=isinstance(inputs, Mapping))
                phi = torch.cat([phi] + [b.to(phi.dtype) for b in blocks], dim=1)
            return phi, output


def predict(model: nn.Module, inputs: Any, n_classes: Optional[int] = None) -> torch.Tensor:
    """``(N,)`` the model's predicted classes (eval mode, no grad, the model left as found).

    Parameters
    ----------
    model : nn.Module
    inputs : tensor, tuple or dict
        Model inputs on the model's device (:func:`~captum_dualxda._utils.inputs.call_model`).
    n_classes : int, optional
        ``K``, to find the logits in an output with several tensors (:func:`output_logits`).
    """
    with ModelProbe(model), torch.no_grad():
        logits = output_logits(call_model(model, inputs), n_classes)
    return logits.argmax(dim=1)


def batch_features_and_output(
    model: nn.Module,
    layer: nn.Linear,
    inputs: ModelInputs,
    autocast: Optional[torch.dtype] = None,
    extra: Optional[FeatureLayers] = None,
) -> Tuple[torch.Tensor, Any]:
    """Features ``phi`` of one batch and the model's output, from one forward pass.

    Same as :func:`batch_features` (a :class:`~captum_dualxda._core.probe.ModelProbe`: eval mode, no
    grad, the model left as found), also returning what the model returned (e.g. ``(N, K)``
    logits, or a Hugging Face ``ModelOutput``).

    Parameters
    ----------
    model : nn.Module
    layer : nn.Linear
    inputs : tuple or dict
    autocast : torch.dtype, optional
        ``torch.bfloat16`` or ``torch.float16``: a mixed-precision forward pass.
    extra : FeatureLayers, optional
        ``DualDA(feature_layers=...)``: the inputs of these layers (flattened, unscaled) are
        concatenated after ``phi`` (:class:`LayerTaps` checks each pass).

    Returns
    -------
    features : torch.Tensor
        ``(N, d)`` on the model's device, in the dtype the layer saw.
    output : Any
        The model output.
    """
    with FeatureExtractor(model, layer, autocast=autocast, extra=extra) as extract:
        return extract(inputs)


def batch_features(
    model: nn.Module,
    layer: nn.Linear,
    inputs: ModelInputs,
    autocast: Optional[torch.dtype] = None,
    extra: Optional[FeatureLayers] = None,
) -> torch.Tensor:
    """Features ``phi`` of one batch: the input of ``layer``, one vector per sample.

    The model runs in eval mode under ``no_grad`` on its own device (inputs are moved there),
    through a :class:`~captum_dualxda._core.probe.ModelProbe`: every submodule's training flag and
    every parameter's ``requires_grad`` are restored afterwards, and concurrent calls from
    several threads never mix their features. A head applied to every position (decoder
    classifiers) gives the input at the position the model classifies
    (:func:`pooled_features`).

    Parameters
    ----------
    model : nn.Module
    layer : nn.Linear
    inputs : tuple or dict
        Model inputs, called as ``model(*inputs)`` or ``model(**inputs)``.
    autocast : torch.dtype, optional
        ``torch.bfloat16`` or ``torch.float16``: a mixed-precision forward pass
        (``torch.autocast``); the features then come in that dtype.
    extra : FeatureLayers, optional
        ``DualDA(feature_layers=...)``: the inputs of these layers (flattened, unscaled) are
        concatenated after ``phi`` (:class:`LayerTaps` checks each pass).

    Returns
    -------
    torch.Tensor
        ``(N, d)``, dtype of the layer input, on the model's device.

    Raises
    ------
    RuntimeError
        The forward pass never reached ``layer``.
    ValueError
        The layer's outputs are not the model's logits (an inner layer), or it sees several
        positions per sample and the model's logits are none of them.
    """
    return batch_features_and_output(model, layer, inputs, autocast, extra)[0]
