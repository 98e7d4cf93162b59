"""The transformer composite: XDA on BERT, Llama, GPT-2 and Vision Transformers, the Zennit way.

Zennit's built-in rules cover convolutional and fully connected networks; attention, LayerNorm
/ RMSNorm, smooth activations and gated MLPs need rules of their own. This module implements
them in the gradient-times-input form of AttnLRP (Achtibat et al., ICML 2024): for the duration of
an attribution, canonizers replace the forward of those modules by one with the same output and
a modified gradient, so that ``input * gradient`` is the LRP relevance (``docs/method.md``):

- attention ``softmax(q k^T) v``: by default CP-LRP's rule (Ali et al., ICML 2022), the attention
  weights are constants and the values get all of the relevance (conservative);
  ``attention="attnlrp"`` selects AttnLRP's, below;
- LayerNorm / RMSNorm (identity rule): the normalising factor ``1 / std`` is a constant;
- element-wise activations, GELU, SiLU, tanh (identity rule): the gradient is scaled by
  ``f(x) / x``, so relevance passes through unchanged;
  Hugging Face classification heads that call ``torch.tanh`` themselves (RoBERTa and others:
  ``out_proj(tanh(dense(x)))``) get it through a ``TorchFunctionMode`` around their forward;
- products of two activations (uniform rule): each operand gets half, in gated MLPs
  (``act(gate(x)) * up(x)``) and, with ``attention="attnlrp"``, in attention (``q`` and ``k`` a
  quarter, ``v`` a half; the softmax then passes its ordinary gradient times input, which is not
  conservative: on trained models most of the relevance sent into it is lost);
- biases (``zero_params="bias"``, the default; Zennit's ``zero_params="bias"`` in spirit: the
  biases take no relevance): every bias-carrying affine map ``y = z + b`` (``nn.Linear``, GPT-2's
  ``Conv1D``, the input projections of ``nn.MultiheadAttention``, convolutions such as a ViT's
  patch embedding, LayerNorm's shift) gives each input its own contribution's relevance plus a
  share of the bias's ``b * gradient`` in proportion to the size ``|w_j x_j|`` of its contribution
  (:func:`~captum_dualxda.lrp.rules.spread_bias`); ``zero_params=None``: ordinary gradient, each bias keeps
  ``b * gradient``. Position embeddings and class tokens are parameters added to the input and
  keep their share either way.

Attention of Hugging Face models is swapped through their public attention interface
(``AttentionInterface`` + ``set_attn_implementation``), ``nn.MultiheadAttention`` (torchvision's
ViT) and timm's ``Attention`` through their forward. ``transformers`` is imported only when a
Hugging Face model is given. The rules are in :mod:`.rules`, the canonizers that apply them in
:mod:`.canonizers`.

:class:`CompositeFlags` reads what any composite declares for XDA (``handles_attention``,
``gradient_times_input``, ``attribution_module``), so that user composites can declare them too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional

from torch import nn
from zennit.canonizers import Canonizer
from zennit.core import Composite

from .._utils.validation import check_flag, check_positive
from .canonizers import transformer_canonizers
from .checks import check_attention_interface
from .rules import ATTENTION_RULES

__all__ = ["TransformerComposite", "transformer_composite", "CompositeFlags", "ZERO_PARAMS"]


class TransformerComposite(Composite):
    """Zennit composite of AttnLRP canonizers; XDA computes relevance as ``input * gradient``.

    Attributes
    ----------
    handles_attention : bool
        True: :class:`~captum_dualxda.XDA` accepts models with attention under it.
    gradient_times_input : bool
        True: the relevance of an input is the input times its (modified) gradient.
    attribution_module : nn.Module or None
        For text models: the module whose output (the summed input embeddings) receives the
        relevance, one score per token after summing over the embedding dimension. None: the
        model input itself (pixels for a ViT).
    """

    handles_attention = True
    gradient_times_input = True

    def __init__(self, canonizers: List[Canonizer], attribution_module: Optional[nn.Module] = None) -> None:
        super().__init__(module_map=None, canonizers=canonizers)
        self.attribution_module = attribution_module


def _embedding_output_module(model: nn.Module) -> Optional[nn.Module]:
    """The module whose output is the sum of the token (and position) embeddings of a HF model."""
    base = getattr(model, "base_model", model)
    embeddings = getattr(base, "embeddings", None)
    if isinstance(embeddings, nn.Module) and not isinstance(embeddings, nn.Embedding):
        return embeddings  # BERT family: word + position + type embeddings, LayerNorm
    drop = getattr(base, "drop", None)
    if isinstance(drop, nn.Dropout) and hasattr(base, "wpe"):
        return drop  # GPT-2: token + position embeddings, then dropout
    get = getattr(model, "get_input_embeddings", None)
    return get() if callable(get) else None  # Llama family: rotary positions, token embeddings only


ZERO_PARAMS = ("bias", None)
"""Values of ``zero_params``: biases pass their relevance on (``"bias"``) or keep it (None)."""


def transformer_composite(
    model: nn.Module, attention: str = "cp", zero_params: Optional[str] = "bias", epsilon: float = 1e-6
) -> TransformerComposite:
    """A Zennit composite that makes XDA work on transformers (CP-LRP / AttnLRP rules).

    Supported: Hugging Face encoders (BERT family) and decoders (Llama family, GPT-2) through their
    attention interface, torchvision's ``VisionTransformer`` (``nn.MultiheadAttention``) and timm's
    ViT. Text models get relevance on their summed input embeddings (one score per token);
    vision models on pixels. Use it like any composite: ``XDA(model, "classifier",
    transformer_composite(model))``.

    Parameters
    ----------
    model : nn.Module
        The model to explain (the composite binds to it).
    attention : {"cp", "attnlrp"}
        The rule for ``softmax(q k^T) v``. ``"cp"`` (default; CP-LRP, Ali et al. 2022): the
        attention weights are constants and all relevance goes to the values, so with
        ``zero_params="bias"`` heatmaps add up to ``tau`` except for what a ViT's position
        embeddings and class token take (text heatmaps include the position embeddings).
        ``"attnlrp"`` (AttnLRP): half of the relevance to the values, half through the softmax to
        queries and keys; the softmax's gradient-times-input rule does not conserve relevance, and
        on trained models it loses most of that half (``benchmarks/README.md`` measures both).
    zero_params : {"bias", None}
        ``"bias"`` (default): biases take no relevance, as with Zennit's ``zero_params="bias"``.
        Each bias-carrying affine map ``y = z + b`` (``nn.Linear``, Hugging Face's ``Conv1D`` of
        GPT-2, ``nn.MultiheadAttention``'s input projections, ``nn.Conv1d/2d/3d`` such as a ViT's
        patch embedding, LayerNorm's shift) passes the bias's relevance ``b * gradient`` on to its
        inputs in proportion to the sizes ``|w_j x_j|`` of their contributions to ``z`` (not to
        the signed ``w_j x_j / z`` of the epsilon rule, which blows up where ``z`` cancels to 0;
        :func:`spread_bias`). None: the ordinary gradient, each bias keeps ``b * gradient`` (a
        few per cent each on trained models, both signs; ``benchmarks/README.md``). The forward
        pass is the same either way.
    epsilon : float
        Added to the summed contribution sizes in the denominator of the bias's shares (> 0,
        finite); only where every contribution is about 0 does a bias keep its share.

    Returns
    -------
    TransformerComposite

    Raises
    ------
    ValueError
        ``attention`` is not one of the rules; ``zero_params`` is not ``"bias"`` or None;
        ``epsilon`` is not a positive finite number; a Hugging Face model whose attention does
        not go through the attention interface (:func:`~captum_dualxda.lrp.checks.check_attention_interface`).
    """
    if attention not in ATTENTION_RULES:
        raise ValueError(f"`attention` must be one of {ATTENTION_RULES}, got {attention!r}.")
    if not (zero_params is None or (isinstance(zero_params, str) and zero_params == "bias")):
        raise ValueError(f"`zero_params` must be 'bias' or None, got {zero_params!r}.")
    epsilon = check_positive(epsilon, "epsilon")
    is_hf = hasattr(getattr(model, "config", None), "_attn_implementation")
    if is_hf:
        check_attention_interface(model)
    canonizers = transformer_canonizers(attention, zero_params == "bias", epsilon, hugging_face=is_hf)
    return TransformerComposite(canonizers, _embedding_output_module(model) if is_hf else None)


@dataclass(frozen=True)
class CompositeFlags:
    """What a composite declares for XDA, read once and checked (any composite may declare them).

    Attributes
    ----------
    handles_attention : bool
        Its rules cover attention (XDA refuses models with attention otherwise).
    gradient_times_input : bool
        Relevance is the input times the (modified) gradient; True without a composite.
    attribution_module : nn.Module or None
        For dict (token) inputs: the module whose output receives the relevance.
    """

    handles_attention: bool = False
    gradient_times_input: bool = True
    attribution_module: Optional[nn.Module] = None

    @classmethod
    def of(cls, composite: Optional[Composite]) -> CompositeFlags:
        """The flags of ``composite`` (attributes it does not declare take Zennit's defaults:
        no attention, the rules' own relevance, the input itself).

        Raises
        ------
        TypeError
            A declared flag that is not a boolean, or an ``attribution_module`` that is not a module.
        """
        if composite is None:
            return cls()
        module: Any = getattr(composite, "attribution_module", None)
        if module is not None and not isinstance(module, nn.Module):
            raise TypeError(
                f"`composite.attribution_module` must be an nn.Module or None, got {type(module).__name__}."
            )
        return cls(
            handles_attention=check_flag(getattr(composite, "handles_attention", False), "composite.handles_attention"),
            gradient_times_input=check_flag(
                getattr(composite, "gradient_times_input", False), "composite.gradient_times_input"
            ),
            attribution_module=module,
        )
