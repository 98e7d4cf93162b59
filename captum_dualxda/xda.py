"""XDA: explain *why* a training sample is relevant for a test prediction, with LRP.

DualDA (see :mod:`captum_dualxda.dualda`) scores a training sample ``x_j`` for the prediction
of class ``c`` on a test input ``x`` with

    tau = a_j^c * phi(x_j) . phi(x)

where ``phi`` is the input of the network's final ``nn.Linear`` (the *feature layer*) and
``a_j^c`` is a dual coefficient of the Crammer-Singer SVM fitted on the training features.
XDA splits ``tau`` over the ``d`` feature neurons,

    R = a_j^c * phi(x_j) * phi(x)           (elementwise, ``R.sum() == tau``)

and propagates ``R`` from the feature layer down to the pixels with Layer-wise Relevance
Propagation (LRP), once into the training image and once into the test image.  In Zennit terms
this is an ordinary attributor call on the sub-network that produces ``phi``, whose output
relevance is ``attr_output(phi(input)) = phi(input) * (a_j^c * phi(partner))``.

:class:`XDA` is that attributor (a :class:`zennit.attribution.Attributor`);
:func:`xda_pairs` runs it for every (test sample, training partner) pair chosen by DualDA. The
Zennit-side extensions, the LRP rules for transformers and the checks of whether a composite
covers a model, are in :mod:`captum_dualxda.lrp`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple, Union

import torch
from torch import nn
from tqdm import tqdm
from zennit.attribution import Attributor
from zennit.core import Composite

from ._core.ensemble import mean_of_tuples
from ._core.features import (
    FeatureLayers,
    LayerTaps,
    hf_last_token,
    model_device,
    output_logits,
    pooled_positions,
    predict,
    resolve_feature_layers,
    resolve_linear_layer,
)
from ._core.guard import pop_entry_view, push_entry_view
from ._core.probe import ModelProbe
from ._utils.arrays import check_index_matrix
from ._utils.inputs import SingleInput, batch_size_of, call_model, inputs_to, repeat_row, single_input
from ._utils.validation import check_flag, check_integer
from .dualda import DualDA
from .exceptions import UnsupportedModelError
from .lrp.checks import has_attention, missing_canonizer, registered_elsewhere, unsupported_layers, unsupported_message
from .lrp.composites import CompositeFlags

__all__ = ["XDA", "XDAPairs", "xda_pairs", "UnsupportedModelError", "unsupported_layers", "missing_canonizer"]

AttrOutput = Union[None, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]


# --------------------------------------------------------------------------------------------
# The attributor
# --------------------------------------------------------------------------------------------
class XDA(Attributor):
    """Zennit attributor that propagates relevance from the feature layer down to the input.

    The model is run until the INPUT of ``final_fc_layer`` (the final ``nn.Linear``); that input,
    flattened to ``(N, d)``, is the feature vector ``phi(input)``.  The forward pass stops there,
    so the classification head never runs.  The output relevance ``attr_output(phi)`` is then
    propagated to the input with the rules of ``composite``; with ``composite=None`` the heatmap is
    gradient times input, ``x * d(sum(attr_output(phi)))/dx`` with ``attr_output(phi) / phi`` held
    fixed (it sums to the DualDA score for bias-free piecewise-linear networks).

    Calling it is the ordinary Zennit call ``features, relevance = xda(input, attr_output)``.
    Use it as a context manager (``with xda: ...``) to register the composite once for many
    calls; a bare call registers the composite for that call only.

    For XDA proper pass ``attr_output = lambda phi: phi * (a * phi_partner)`` with ``a`` the dual
    coefficient and ``phi_partner`` the partner's features; :func:`xda_pairs` does this for you.
    With conserving rules and biases excluded (e.g. ``EpsilonPlus(zero_params="bias")``)
    each heatmap sums to ``(attr_output(phi)).sum()`` per sample, i.e. to the DualDA score.
    ``benchmarks/xda_faithfulness.py`` (pixel flipping) recommends ``EpsilonPlus`` with the
    architecture's canonizer, on CNNs and torchvision ResNets alike.

    Parameters
    ----------
    model : torch.nn.Module
        The classifier.  It is put in eval mode during every pass (canonizers such as
        ``SequentialMergeBatchNorm`` need the running statistics) and left exactly as it was
        afterwards: training flags of every submodule, Parameter objects, requires_grad flags and
        hooks.  Only single-input models ``model(x)`` are supported.
    final_fc_layer : torch.nn.Linear or str
        The final linear layer (or its dotted name; the same argument as DualDA's, e.g.
        ``"fc"`` or ``"classifier.6"``); its
        input is ``phi``.  If the layer is called more than once in a forward pass the first call
        is used.
    composite : zennit.core.Composite, optional
        LRP rules and canonizers, e.g. ``EpsilonPlus(zero_params="bias",
        canonizers=[SequentialMergeBatchNorm()])`` or
        ``EpsilonPlus(zero_params="bias", canonizers=[ResNetCanonizer()])`` (the composite
        that pixel flipping measured most faithful; ``None``: gradient times input).  A composite binds
        to one model at a time; one registered to another model is refused. A model with
        attention layers is refused with :class:`UnsupportedModelError` unless the composite
        declares ``handles_attention = True`` (Zennit's built-in rules do not cover attention).
    attr_output : torch.Tensor or callable, optional
        Default output relevance at the feature layer: a tensor broadcastable to ``(N, d)`` (used
        as a constant), a callable ``phi (N, d) -> (N, d)``, or None for the identity
        (relevance = ``phi``).  A value passed at call time overrides it.
    feature_layers : sequence of nn.Module or str, optional
        The same argument as DualDA's (a fit with ``feature_layers`` is explained by an XDA with
        the same layers): the features are then ``[phi, f_1, f_2, ...]``, the inputs of these
        layers (flattened, unscaled) after ``phi``, ``(N, d)`` with ``d`` the sum of the widths.
        The output relevance ``(N, d)`` is split into the blocks and each block starts from its
        layer's input; all blocks go down in one backward pass (the rules are linear in the
        incoming relevance, so this is the sum of one pass per block). Tensor inputs only.

    Attributes
    ----------
    final_fc_layer : torch.nn.Linear
        The resolved final linear layer.

    Raises
    ------
    ValueError
        ``final_fc_layer`` names no submodule of ``model``, or is a module outside ``model``.
    TypeError
        ``final_fc_layer`` is not an ``nn.Linear``.

    Examples
    --------
    >>> from zennit.composites import EpsilonPlus
    >>> xda = XDA(model, "fc", EpsilonPlus(zero_params="bias"))              # doctest: +SKIP
    >>> phi, rel = xda(x)                      # relevance = phi itself        # doctest: +SKIP
    >>> with xda:                              # composite registered once     # doctest: +SKIP
    ...     for x_j, r in pairs:
    ...         phi_j, heat = xda(x_j, lambda phi: phi * r)
    """

    def __init__(
        self,
        model: nn.Module,
        final_fc_layer: Union[nn.Linear, str],
        composite: Optional[Composite] = None,
        attr_output: AttrOutput = None,
        feature_layers: Optional[Sequence[Union[nn.Module, str]]] = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
        if composite is not None and not isinstance(composite, Composite):
            raise TypeError(
                f"`composite` must be a zennit Composite (e.g. EpsilonPlus()) or None, got {type(composite).__name__}."
            )
        super().__init__(model=model, composite=composite, attr_output=attr_output)
        self.final_fc_layer: nn.Linear = resolve_linear_layer(model, final_fc_layer, argument="final_fc_layer")
        self._extra: Optional[FeatureLayers] = (
            None if feature_layers is None else resolve_feature_layers(model, self.final_fc_layer, feature_layers)
        )
        self._flags = CompositeFlags.of(composite)
        if composite is not None and has_attention(model) and not self._flags.handles_attention:
            # Zennit's rules give zeros (zennit 1.0), NaN or a hook error on attention: refuse
            # before any pass rather than return heatmaps that look plausible.
            raise UnsupportedModelError(unsupported_message(model, composite, "the model has attention layers"))
        advice = missing_canonizer(model, composite)
        if advice is not None:
            warnings.warn(advice, UserWarning, stacklevel=2)
        self._probes: List[ModelProbe] = []

    # -- context management -----------------------------------------------------------------
    def _check_composite(self) -> None:
        if self.composite is not None and registered_elsewhere(self.composite, self.model):
            raise ValueError(
                "`composite` is already registered to another model (a zennit composite binds to one "
                "model at a time). Call `composite.remove()` or leave its `with` block first, or give "
                "this XDA its own composite instance."
            )

    def __enter__(self) -> XDA:
        """Put the model in eval mode and register the composite (once for many calls).

        Returns
        -------
        XDA
            ``self``.

        Raises
        ------
        ValueError
            The composite is registered to another model.
        """
        self._check_composite()
        # The probe holds the model's lock for the whole block (other threads' passes through
        # this model wait instead of running through the composite's hooks), puts the model in
        # eval mode and records what the canonizers replace.
        probe = ModelProbe(self.model, objects=True).__enter__()
        self._probes.append(probe)
        # A fit's check of the model (DualDA) inside the block sees the weights as they are now,
        # not the canonizers' temporary ones.
        push_entry_view(self.model)
        try:
            super().__enter__()
        except BaseException:
            self._probes.pop()
            try:
                if self.composite is not None:
                    self.composite.remove()
            finally:
                pop_entry_view(self.model)
                probe.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        """Remove the composite and restore the model exactly as it was on entry (exceptions propagate)."""
        try:
            super().__exit__(exc_type, exc_value, traceback)
        finally:
            if self._probes:
                pop_entry_view(self.model)
                self._probes.pop().__exit__(exc_type, exc_value, traceback)

    def __call__(self, input: SingleInput, attr_output: AttrOutput = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Features and input relevance, registering the composite for this call if needed.

        Parameters
        ----------
        input : torch.Tensor
            ``(N, *input_shape)`` floating point model input (moved to the model's device).
        attr_output : torch.Tensor or callable, optional
            Output relevance at the feature layer; overrides the constructor's default.  A
            tensor broadcastable to ``(N, d)`` or a callable ``phi (N, d) -> (N, d)``.

        Returns
        -------
        features : torch.Tensor
            ``(N, d)`` detached ``phi(input)``, dtype of the model.
        relevance : torch.Tensor
            ``(N, *input_shape)`` relevance of every input element (the modified gradient), on
            the model's device.
        """
        return super().__call__(input, attr_output)

    # -- the passes -----------------------------------------------------------------------------
    def _probe(self, detach: bool) -> ModelProbe:
        """A probe that stops the forward pass at the feature layer and captures ``phi``.

        ``prepend``: the capture runs before any zennit pre-hook on this layer, so phi is taken
        before zennit wraps it in its Identity (whose backward hook would need the layer's output
        gradient, which never exists because the forward stops here).
        """
        return ModelProbe(
            self.model,
            self.final_fc_layer,
            stop=True,
            prepend=True,
            detach=detach,
            argument="final_fc_layer",
            flatten=False,
        )

    def _prepare_input(self, input: Any) -> Union[torch.Tensor, Dict[str, Any]]:
        """A floating-point tensor, or a dict of model inputs (Hugging Face), on the model's device."""
        device = model_device(self.model)
        if isinstance(input, Mapping):
            if not input:
                raise ValueError("`input` is an empty dict.")
            return inputs_to(input, device, detach=True)
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"`input` must be a torch.Tensor or a dict of model inputs, got {type(input).__name__}.")
        if not torch.is_floating_point(input):
            raise TypeError(f"`input` must be a floating point tensor, got dtype {input.dtype}.")
        if input.ndim < 1 or input.shape[0] == 0:
            raise ValueError(f"`input` must have a non-empty batch dimension, got shape {tuple(input.shape)}.")
        return inputs_to(input, device, detach=True)

    def features(self, input: Any) -> torch.Tensor:
        """Features ``phi(input)`` only: no relevance, no gradient, no composite registration.

        If called inside ``with xda:`` the composite's canonizers are active (e.g. batch norm
        merged into convolutions), which changes the result only by floating point rounding.

        Parameters
        ----------
        input : torch.Tensor or dict
            ``(N, *input_shape)`` floating point model input, or a dict of model inputs
            (``model(**input)``, e.g. ``input_ids`` and ``attention_mask``).

        Returns
        -------
        torch.Tensor
            ``(N, d)`` features on the model's device, dtype of the model.
        """
        input = self._prepare_input(input)
        self._check_extra_input(input)
        with self._probe(detach=True) as probe, torch.no_grad():
            taps = self._taps(detach=True)
            try:
                call_model(probe.run, input)
                raw = probe.features()
                if taps is not None:
                    return torch.cat([raw] + [b.to(raw.dtype) for b in self._blocks(taps, raw)], dim=1)
            finally:
                if taps is not None:
                    taps.remove()
        return raw if raw.ndim == 2 else raw[torch.arange(raw.shape[0]), self._positions(input, raw)]

    @property
    def feature_layers(self) -> Optional[List[str]]:
        """Dotted names of the extra feature layers (``XDA(feature_layers=...)``); None for ``phi`` alone."""
        return None if self._extra is None else list(self._extra.names)

    def _taps(self, detach: bool) -> Optional[LayerTaps]:
        """Entered hooks on the extra feature layers (prepended: before a composite's own), or None."""
        if self._extra is None:
            return None
        return LayerTaps(self.final_fc_layer, self._extra, detach=detach, prepend=True).__enter__()

    def _check_extra_input(self, input: Any) -> None:
        if self._extra is not None and isinstance(input, Mapping):
            raise ValueError(
                "XDA with `feature_layers` explains tensor inputs only, not dicts of model inputs (token models)."
            )

    def _blocks(self, taps: LayerTaps, raw: torch.Tensor) -> List[torch.Tensor]:
        """The extra layers' inputs of the pass just run, each ``(N, d_b)`` (graph kept when captured so)."""
        if raw.ndim != 2:
            raise ValueError(
                f"`final_fc_layer` sees one vector per position (input shape {tuple(raw.shape)}): `feature_layers` is "
                "not supported there."
            )
        return taps.blocks(raw.shape[0], token_model=False)

    def _positions(self, input: Any, layer_input: torch.Tensor) -> torch.Tensor:
        """``(N,)`` the position each sample is classified at, for a head applied to every position.

        One more forward pass to the logits (:func:`~captum_dualxda._core.features.pooled_positions`).
        """
        with ModelProbe(self.model), torch.no_grad():
            output = call_model(self.model, input)
            logits = output_logits(output, self.final_fc_layer.out_features)
        return pooled_positions(self.final_fc_layer, layer_input.detach(), logits, hf_last_token(input, self.model))

    def forward(self, input: Any, attr_output_fn: Callable[[torch.Tensor], Any]) -> Tuple[torch.Tensor, torch.Tensor]:
        """One attribution pass (the composite must already be registered, or be None).

        Called by ``__call__``; it does not register the composite itself.

        Parameters
        ----------
        input : torch.Tensor or dict
            ``(N, *input_shape)`` floating point model input, or a dict of model inputs for a
            text model (needs a composite with an ``attribution_module``, such as
            :func:`~captum_dualxda.transformer_composite`).
        attr_output_fn : callable
            ``phi (N, d) -> relevance (N, d)`` (or a tensor broadcastable to it).

        Returns
        -------
        features : torch.Tensor
            ``(N, d)`` detached features.
        relevance : torch.Tensor
            ``(N, *input_shape)`` input relevance; ``(N, T)`` per token for a dict input.

        Raises
        ------
        ValueError
            The composite is registered to another model; the output relevance does not fit
            ``(N, d)``; a dict input without a composite that names where relevance lands.
        RuntimeError
            ``final_fc_layer`` is not reached, or the features do not depend on the input.
        UnsupportedModelError
            The composite's rules fail on a layer of the model (a backward hook error) or give
            non-finite relevance; the message names the layers they do not cover (attention,
            LayerNorm, softmax, ...).
        """
        self._check_composite()
        input = self._prepare_input(input)
        self._check_extra_input(input)
        times_input = self._flags.gradient_times_input
        text = isinstance(input, Mapping)
        target = self._flags.attribution_module if text else None
        if text and target is None:
            raise ValueError(
                "A dict `input` (token ids) has no gradient of its own: relevance must land on the input "
                "embeddings. Use `composite=captum_dualxda.transformer_composite(model)`."
            )
        leaves: List[torch.Tensor] = []

        def make_leaf(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
            leaves.append(output.detach().requires_grad_(True))
            return leaves[-1]

        # Rules attach only when grad mode is on and the layer input requires grad: make both
        # true even when the caller sits inside torch.no_grad().
        handle = target.register_forward_hook(make_leaf) if target is not None else None
        blocks: List[torch.Tensor] = []
        try:
            with torch.enable_grad():
                with self._probe(detach=False) as probe:
                    if not text:
                        leaves.append(input.requires_grad_(True))
                    taps = self._taps(detach=False)
                    try:
                        call_model(probe.run, input)
                        raw = probe.features()
                        if taps is not None:
                            blocks = self._blocks(taps, raw)
                    finally:
                        if taps is not None:
                            taps.remove()
                if handle is not None:
                    handle.remove()
                    handle = None
                # A head applied to every position: keep the position the model classifies (found
                # with one more pass, outside the probe that stops at the final layer).
                phi = raw if raw.ndim == 2 else raw[torch.arange(raw.shape[0]), self._positions(input, raw)]
                outputs = [phi] + blocks
                if blocks:
                    phi = torch.cat([phi] + [b.to(phi.dtype) for b in blocks], dim=1)
                if not phi.requires_grad or not leaves:
                    raise RuntimeError(
                        "The features at `final_fc_layer` do not depend on `input` (no gradient path); "
                        "nothing can be attributed."
                    )
                relevance_out = attr_output_fn(phi.detach())
                relevance_out = self._check_relevance(relevance_out, phi)
                if times_input:  # the output "gradient" whose product with phi is the relevance
                    nonzero = phi.detach() != 0
                    safe = torch.where(nonzero, phi.detach(), torch.ones_like(phi))
                    relevance_out = torch.where(nonzero, relevance_out / safe, torch.zeros_like(phi))
                leaf = leaves[0]
                # One block per captured layer input: each starts its part of the relevance there, all
                # in one backward pass (the sum of one pass per block, the rules being linear in it).
                widths = [t.shape[1] for t in outputs]
                grads = [g.to(t.dtype) for g, t in zip(relevance_out.split(widths, dim=1), outputs)]
                used = [(t, g) for t, g in zip(outputs, grads) if t.requires_grad]
                try:
                    (relevance,) = torch.autograd.grad(
                        tuple(t for t, _ in used), (leaf,), grad_outputs=tuple(g for _, g in used), allow_unused=True
                    )
                    if relevance is None:
                        relevance = torch.zeros_like(leaf)
                except RuntimeError as error:
                    if self.composite is None or "hook" not in str(error):
                        raise
                    raise UnsupportedModelError(unsupported_message(self.model, self.composite, str(error))) from error
        finally:
            if handle is not None:
                handle.remove()
        if times_input:
            relevance = leaf.detach() * relevance
        if text:
            relevance = relevance.sum(-1)  # one score per token
        if self.composite is not None and not bool(torch.isfinite(relevance).all()):
            raise UnsupportedModelError(
                unsupported_message(self.model, self.composite, "non-finite relevance (NaN or inf)")
            )
        return phi.detach(), relevance.detach()

    @staticmethod
    def _check_relevance(relevance_out: Any, phi: torch.Tensor) -> torch.Tensor:
        if not isinstance(relevance_out, torch.Tensor):
            relevance_out = torch.as_tensor(relevance_out)
        relevance_out = relevance_out.detach().to(device=phi.device, dtype=phi.dtype)
        if relevance_out.shape != phi.shape:
            try:
                relevance_out = relevance_out.expand(phi.shape)
            except RuntimeError:
                raise ValueError(
                    f"`attr_output` gave relevance of shape {tuple(relevance_out.shape)}, which does not fit "
                    f"the features of shape {tuple(phi.shape)} (N, d) at `final_fc_layer`."
                ) from None
        return relevance_out


# --------------------------------------------------------------------------------------------
# Pairing with DualDA
# --------------------------------------------------------------------------------------------
class XDAPairs(NamedTuple):
    """XDA explanations of DualDA pairs: test sample ``i`` and its ``k`` training partners.

    All tensors are detached and on the CPU.

    Attributes
    ----------
    scores : torch.Tensor
        ``(n_test, k)`` DualDA scores ``tau[i, m] = a_j^{c_i} phi(x_j).phi(x_i)`` with
        ``j = train_indices[i, m]``; dtype of the features (float32 or float64). For a fit with
        ``whiten`` or ``feature_layers``: ``a_j^{c_i} psi(x_j)^T M psi(x_i)`` with ``psi`` the scaled
        concatenated features and ``M = T T`` (``whiten``) or ``I``.
    train_relevance : torch.Tensor
        ``(n_test, k, *input_shape)`` heatmap of training image ``x_j``: why it supports
        (positive) or opposes (negative) the prediction on ``x_i``. For text (dict inputs):
        ``(n_test, k, T)``, one score per token of ``dualda.train_inputs(train_indices[i])``,
        right-padded with zeros to the longest.
    test_relevance : torch.Tensor
        ``(n_test, k, *input_shape)`` heatmap of test image ``x_i``: which of its parts match
        training image ``x_j``.
    feature_relevance : torch.Tensor
        ``(n_test, k, d)`` relevance at the feature layer, ``a_j^{c_i} phi(x_j) * phi(x_i)``
        (sums to ``scores`` along the last axis). With ``whiten`` or ``feature_layers`` the test
        side's, ``a_j^{c_i} psi(x_i) * (M psi(x_j))`` (the training side's, ``a_j^{c_i} psi(x_j) *
        (M psi(x_i))``, differs for a whitened fit and sums to the same score); with
        ``feature_layers`` ``d`` is the sum of the blocks' widths, ``phi`` first.
    train_indices : torch.Tensor
        ``(n_test, k)`` int64, the training partners.
    targets : torch.Tensor
        ``(n_test,)`` int64, the explained class ``c_i`` of each test sample.
    coefficients : torch.Tensor
        ``(n_test, k)`` the dual coefficients ``a_j^{c_i}``.
    """

    scores: torch.Tensor
    train_relevance: torch.Tensor
    test_relevance: torch.Tensor
    feature_relevance: torch.Tensor
    train_indices: torch.Tensor
    targets: torch.Tensor
    coefficients: torch.Tensor


def _ensemble_pairs(
    dualda: DualDA,
    xda: XDA,
    test_inputs: Any,
    targets: Any,
    train_indices: Any,
    feature_batch_size: int,
    show_progress: bool,
) -> XDAPairs:
    """:func:`xda_pairs` of a checkpoint ensemble: the mean of the pairs of every checkpoint."""
    ensemble = dualda.ensemble
    assert ensemble is not None
    if xda.model is not dualda.model:
        raise ValueError("`xda` explains a different model than `dualda` (xda.model is not dualda.model).")
    if xda.composite is not None and xda.composite.handles:
        raise ValueError(
            "`xda_pairs` of a checkpoint ensemble registers the composite once per checkpoint (its "
            "canonizers read the loaded weights): call it outside `with xda:`."
        )
    if targets is None:
        x = single_input(test_inputs, "test_inputs")
        targets = predict(
            xda.model, inputs_to(x, model_device(xda.model), detach=True), xda.final_fc_layer.out_features
        ).cpu()
    parts = ensemble.over_checkpoints(
        lambda member: xda_pairs(
            member,
            xda,
            test_inputs,
            targets,
            train_indices,
            feature_batch_size=feature_batch_size,
            show_progress=show_progress,
        )
    )
    return mean_of_tuples(parts, same=("train_indices", "targets"))


def _times(partner: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``attr_output`` of one pair: the features times ``partner`` (``tau``'s gradient with respect to them)."""
    return lambda phi: phi * partner


def _partner(phi: torch.Tensor, scale: Optional[torch.Tensor], transform: Optional[torch.Tensor]) -> torch.Tensor:
    """``scale * (M (phi * scale))`` row by row, ``M = T T`` for a whitened fit (else ``I``), in the
    dtype of ``phi``: the vector whose product with the other side's unscaled features ``phi``
    is that side's relevance (without the coefficient). ``phi`` itself without scale and transform.

    Parameters
    ----------
    phi : torch.Tensor
        ``(..., d)`` features as XDA sees them (``phi``, then the unscaled inputs of ``feature_layers``).
    scale : torch.Tensor, optional
        ``(d,)`` the fit's column scales (``DualDA.feature_scale``).
    transform : torch.Tensor, optional
        ``(d, d)`` the fit's symmetric whitening matrix ``T`` (``DualDA.feature_transform``).
    """
    if scale is None and transform is None:
        return phi
    psi = phi.double()
    s = None if scale is None else scale.to(phi.device, torch.float64)
    if s is not None:
        psi = psi * s
    if transform is not None:
        t = transform.to(phi.device, torch.float64)
        psi = (psi @ t) @ t
    if s is not None:
        psi = psi * s
    return psi.to(phi.dtype)


def _stack_padded(maps: List[torch.Tensor]) -> torch.Tensor:
    """Stack relevance maps; token maps of different lengths are right-padded with zeros."""
    if len({tuple(m.shape) for m in maps}) <= 1:
        return torch.stack(maps)
    length = max(m.shape[-1] for m in maps)
    return torch.stack([nn.functional.pad(m, (0, length - m.shape[-1])) for m in maps])


def xda_pairs(
    dualda: DualDA,
    xda: XDA,
    test_inputs: torch.Tensor,
    targets: Union[None, int, torch.Tensor],
    train_indices: Union[torch.Tensor, Any],
    *,
    feature_batch_size: int = 256,
    show_progress: bool = False,
) -> XDAPairs:
    """XDA heatmaps and DualDA scores for every test sample and each of its training partners.

    For test sample ``x_i`` (explained class ``c_i``) and partner ``x_j`` the relevance at the
    feature layer is ``R = a_j^{c_i} phi(x_j) * phi(x_i)`` (``R.sum() = tau``).  It is propagated
    into the training image (``train_relevance``) and into the test image (``test_relevance``).
    A whitened fit (``DualDA(whiten=...)``) scores ``a_j^{c_i} psi(x_j)^T T T psi(x_i)``: the test
    image's relevance at the features is then ``a_j^{c_i} psi(x_i) * (T T psi(x_j))`` and the
    training image's ``a_j^{c_i} psi(x_j) * (T T psi(x_i))``, each summing to the score. A fit with
    ``feature_layers`` (``psi = [phi, s_1 f_1, ...]``) needs an ``xda`` with the same
    ``feature_layers``: each block of that relevance starts from its layer's input, all in one
    backward pass, so a heatmap still sums to the score under conserving rules.
    The ``k`` partners of one test sample go through in one batched pass per side.  The
    composite is registered once for all pairs (unless it already is).

    Parameters
    ----------
    dualda : DualDA
        A fitted :class:`captum_dualxda.dualda.DualDA` (uses ``model``, ``final_fc_layer``,
        ``coefficients_at(indices, classes)``, ``n_classes``, ``train_inputs(indices)``,
        ``n_train``).
    xda : XDA
        Attributor on the same model and feature layer as ``dualda``.
    test_inputs : torch.Tensor or dict
        ``(n_test, *input_shape)`` float (a single ``(*input_shape)`` sample is not accepted:
        add the batch axis), or for a text model a dict of model inputs (``input_ids``,
        ``attention_mask``, ...; a ``labels`` entry is ignored) with a composite such as
        :func:`~captum_dualxda.transformer_composite`.
    targets : torch.Tensor or int or None
        ``(n_test,)`` int64 classes to explain (usually the predictions); an int is used for
        all; None = the model's predictions.
    train_indices : torch.Tensor or KMostInfluentialResults
        ``(n_test, k)`` int64 training indices (e.g. ``dualda.influence((x, t), k=k).indices``).
    feature_batch_size : int
        Batch size of the feature-only passes over the partners.
    show_progress : bool
        A tqdm bar over the test samples.

    Returns
    -------
    XDAPairs
        ``scores (n_test, k)``, ``train_relevance`` and ``test_relevance``
        ``(n_test, k, *input_shape)``, ``feature_relevance (n_test, k, d)``, plus the inputs used.
        The scores are computed from the features directly and agree with
        ``dualda.influence((test_inputs, targets))[i, train_indices[i]]``. For a checkpoint
        ensemble (``DualDA(..., checkpoints=...)``) every field is the mean over the
        checkpoints (each pair computed with its checkpoint loaded), so each heatmap still adds
        up to its ensemble score; ``targets=None`` takes the model's predictions as it stands.

    Raises
    ------
    captum_dualxda.exceptions.ModelChangedError
        The model's parameters or buffers changed since ``dualda`` was fitted (as for
        ``dualda.influence``): refit, or load the fitted weights back.
    ValueError
        ``xda`` explains another model or layer than ``dualda``; ``train_indices`` has the wrong
        shape or is out of range; ``targets`` has the wrong shape or is out of range; the
        features of the test inputs and of the partners differ in dimension.
    TypeError
        ``xda`` is not an :class:`XDA`; non-integer indices or targets.
    """
    if not isinstance(dualda, DualDA):
        raise TypeError(f"`dualda` must be a fitted captum_dualxda.DualDA, got {type(dualda).__name__}.")
    if not isinstance(xda, XDA):
        raise TypeError(f"`xda` must be an XDA attributor, got {type(xda).__name__}.")
    feature_batch_size = check_integer(feature_batch_size, "feature_batch_size", low=1)
    show_progress = check_flag(show_progress, "show_progress")
    if xda.feature_layers != dualda.feature_layers:
        raise ValueError(
            f"`xda` has feature_layers={xda.feature_layers}, `dualda` {dualda.feature_layers}: explain a fit with an "
            "XDA on the same features, `XDA(model, final_fc_layer, composite, "
            "feature_layers=dualda.feature_layers)`."
        )
    if dualda.ensemble is not None:
        return _ensemble_pairs(dualda, xda, test_inputs, targets, train_indices, feature_batch_size, show_progress)
    if xda.model is not dualda.model:
        raise ValueError("`xda` explains a different model than `dualda` (xda.model is not dualda.model).")
    if xda.final_fc_layer is not dualda.final_fc_layer:
        raise ValueError(
            "`xda` uses a different feature layer than `dualda` (xda.final_fc_layer is not dualda.final_fc_layer)."
        )
    dualda._check_model("xda_pairs")  # the coefficients belong to the weights of the fit
    x = single_input(test_inputs, "test_inputs")
    text = isinstance(x, Mapping)
    if isinstance(x, torch.Tensor) and x.ndim < 2:
        raise ValueError(f"`test_inputs` must be batched, shape (n_test, *input_shape), got {tuple(x.shape)}.")
    n_test = batch_size_of(x)
    device = model_device(xda.model)
    x = inputs_to(x, device, detach=True)

    n_train, n_classes = int(dualda.n_train), int(dualda.n_classes)
    idx = check_index_matrix(train_indices, n_test, n_train)
    k = idx.shape[1]

    if targets is None:
        targets_t = predict(xda.model, x, xda.final_fc_layer.out_features).cpu()
    else:
        targets_t = torch.as_tensor(targets)
        if torch.is_floating_point(targets_t):
            raise TypeError(f"`targets` must hold integer class indices, got dtype {targets_t.dtype}.")
        if targets_t.ndim == 0:
            targets_t = targets_t.expand(n_test)
        if targets_t.shape != (n_test,):
            raise ValueError(f"`targets` must have shape (n_test,) = ({n_test},), got {tuple(targets_t.shape)}.")
        targets_t = targets_t.long().cpu()
    if int(targets_t.min()) < 0 or int(targets_t.max()) >= n_classes:
        raise ValueError(
            f"`targets` must lie in [0, {n_classes}), got values in [{int(targets_t.min())}, {int(targets_t.max())}]."
        )

    sample = single_input(dualda.train_inputs(idx[0, :1]), "dualda.train_inputs(...)")
    if isinstance(sample, Mapping) != text:
        raise ValueError("`test_inputs` and the training inputs must both be tensors or both be dicts of model inputs.")
    if isinstance(x, torch.Tensor) and isinstance(sample, torch.Tensor) and sample.ndim != x.ndim:
        raise ValueError(
            f"`test_inputs` has shape {tuple(x.shape)} but a training input has shape {tuple(sample.shape)} "
            "(with batch axis): pass the test samples batched, (n_test, *input_shape)."
        )

    # Feature-only passes (no composite): the scores use the network's own features.
    phi_test = xda.features(x)
    flat = idx.reshape(-1)
    phi_train_parts = []
    for start in range(0, flat.numel(), feature_batch_size):
        batch_idx = flat[start : start + feature_batch_size]
        x_tr = single_input(dualda.train_inputs(batch_idx), "dualda.train_inputs(...)")
        phi_train_parts.append(xda.features(inputs_to(x_tr, device, detach=True)))
    phi_train = torch.cat(phi_train_parts).reshape(n_test, k, -1)
    if phi_train.shape[-1] != phi_test.shape[-1]:
        raise ValueError(
            f"`test_inputs` give features of dimension {phi_test.shape[-1]} but their training partners give "
            f"{phi_train.shape[-1]}: test and training inputs must have the same shape."
        )
    dtype = phi_test.dtype
    coef = dualda.coefficients_at(idx, targets_t[:, None]).to(device=device, dtype=dtype)  # (n_test, k)
    # The score is a_j psi(x_j)^T M psi(x) with psi = phi * scale (feature_layers) and M = T T (whiten)
    # or I. At the features XDA sees (phi, unscaled) the relevance of one side is its own features
    # times the "partner" vector scale * (M psi(other side)) a_j, which sums to the score.
    scale = dualda.feature_scale
    transform = dualda.feature_transform
    partner_test = _partner(phi_test, scale, transform)  # (n_test, d): scale * M psi(x_i)
    partner_train = _partner(phi_train, scale, transform)  # (n_test, k, d): scale * M psi(x_j)
    feature_relevance = coef[..., None] * partner_train * phi_test[:, None, :]  # (n_test, k, d), test side
    scores = feature_relevance.sum(-1)

    train_heat: List[torch.Tensor] = []
    test_heat: List[torch.Tensor] = []

    def run_all() -> None:
        for i in tqdm(range(n_test), desc="XDA pairs", disable=not show_progress, leave=False):
            a_i = coef[i][:, None]  # (k, 1)
            partner_for_train = a_i * partner_test[i][None, :]  # (k, d)
            partner_for_test = a_i * partner_train[i]  # (k, d)
            x_tr = inputs_to(single_input(dualda.train_inputs(idx[i]), "dualda.train_inputs(...)"), device, detach=True)
            _, r_tr = xda(x_tr, _times(partner_for_train))
            _, r_te = xda(repeat_row(x, i, k), _times(partner_for_test))
            train_heat.append(r_tr.cpu())
            test_heat.append(r_te.cpu())

    if xda.composite is not None and not xda.composite.handles:
        with xda:
            run_all()
    else:
        run_all()
    dualda._absorb_model_changes()

    return XDAPairs(
        scores=scores.cpu(),
        train_relevance=_stack_padded(train_heat),
        test_relevance=_stack_padded(test_heat),
        feature_relevance=feature_relevance.cpu(),
        train_indices=idx,
        targets=targets_t,
        coefficients=coef.cpu(),
    )
