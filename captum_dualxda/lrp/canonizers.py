"""Canonizers that give a model's modules the LRP rules of :mod:`.rules`, for one attribution.

A Zennit canonizer changes a model for the duration of an attribution and changes it back.
:class:`ForwardCanonizer` replaces the ``forward`` of matching modules by one with the same output
and an LRP gradient (LayerNorm, RMSNorm, smooth activations, gated MLPs, Hugging Face
classification heads, ``nn.MultiheadAttention``, timm's attention, and every bias-carrying
``nn.Linear``, ``Conv1D`` and convolution); :class:`HFAttentionCanonizer` switches a Hugging Face
model to the LRP attention function through its attention interface. The forwards are the
functions below; :func:`~captum_dualxda.lrp.composites.transformer_composite` assembles them.
"""

from __future__ import annotations

import functools
import math
import types
from typing import Any, Callable, List, Optional

import torch
from torch import nn
from zennit.canonizers import Canonizer

from .rules import IdentityRuleTanh, SpreadBiasLinear, affine, half_product, identity_rule, lrp_attention, spread_bias

__all__ = ["ATTENTION_NAME", "ForwardCanonizer", "HFAttentionCanonizer", "transformer_canonizers"]

ATTENTION_NAME = "captum_dualxda_lrp"
"""Name under which the LRP attention function is registered with Hugging Face transformers."""


def _attention_name(rule: str) -> str:
    return ATTENTION_NAME if rule == "attnlrp" else f"{ATTENTION_NAME}_{rule}"


class ForwardCanonizer(Canonizer):
    """Replace the ``forward`` of matching modules for the duration of an attribution.

    Parameters
    ----------
    matches : callable
        ``module -> bool``, which modules to change.
    forward : callable
        ``(module, *args, **kwargs) -> output``, bound to each matching module as its forward.
    """

    def __init__(self, matches: Callable[[nn.Module], bool], forward: Callable[..., Any]) -> None:
        super().__init__()
        self.matches = matches
        self.forward = forward
        self.module: Optional[nn.Module] = None

    def apply(self, root_module: nn.Module) -> List[ForwardCanonizer]:
        instances = []
        for module in root_module.modules():
            if self.matches(module):
                instance = self.copy()
                instance.register(module)
                instances.append(instance)
        return instances

    def register(self, module: nn.Module) -> None:
        self.module = module
        module.forward = types.MethodType(self.forward, module)

    def remove(self) -> None:
        if self.module is not None and "forward" in vars(self.module):
            del self.module.forward  # back to the class's forward
        self.module = None

    def copy(self) -> ForwardCanonizer:
        return ForwardCanonizer(self.matches, self.forward)


class HFAttentionCanonizer(Canonizer):
    """Switch a Hugging Face model to the LRP attention function (``rule``), and back."""

    def __init__(self, rule: str = "attnlrp") -> None:
        super().__init__()
        self.rule = rule
        self.model: Any = None  # a Hugging Face PreTrainedModel while registered
        self.previous: Optional[str] = None

    def apply(self, root_module: nn.Module) -> List[HFAttentionCanonizer]:
        if getattr(getattr(root_module, "config", None), "_attn_implementation", None) is None:
            return []
        instance = HFAttentionCanonizer(self.rule)
        instance.register(root_module)
        return [instance]

    def register(self, model: nn.Module) -> None:
        _register_hf_attention(self.rule)
        self.model = model
        config: Any = model.config
        self.previous = config._attn_implementation
        self.model.set_attn_implementation(_attention_name(self.rule))
        if config._attn_implementation != _attention_name(self.rule):  # ignored: never run without the rule
            self.model = None
            raise RuntimeError(
                f"{type(model).__name__} did not switch to the LRP attention function; its attention would keep "
                "its plain gradient."
            )

    def remove(self) -> None:
        if self.model is not None:
            self.model.set_attn_implementation(self.previous)
        self.model = None


def _register_hf_attention(rule: str) -> None:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import eager_mask

    def attention(
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        scaling: Optional[float] = None,
        dropout: float = 0.0,
        **kwargs: Any,
    ):
        groups = getattr(module, "num_key_value_groups", 1)
        if groups > 1:  # grouped-query attention: repeat the key and value heads
            key = key.repeat_interleave(groups, dim=1)
            value = value.repeat_interleave(groups, dim=1)
        scale = scaling if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
        mask = (
            attention_mask[:, :, :, : key.shape[-2]]
            if attention_mask is not None and attention_mask.ndim == 4
            else attention_mask
        )
        output = lrp_attention(query, key, value, mask, scale, rule)
        return output.transpose(1, 2).contiguous(), None

    AttentionInterface.register(_attention_name(rule), attention)
    AttentionMaskInterface.register(_attention_name(rule), eager_mask)


def _layer_norm(module: nn.LayerNorm, x: torch.Tensor, zero_bias: bool = False, epsilon: float = 1e-6) -> torch.Tensor:
    dims = tuple(range(-len(module.normalized_shape), 0))
    centred = x - x.mean(dims, keepdim=True)
    std = (centred.pow(2).mean(dims, keepdim=True) + module.eps).sqrt().detach()
    y = centred / std
    if module.weight is not None:
        y = y * module.weight
    if module.bias is None:
        return y
    if not zero_bias:
        return y + module.bias
    # Output k is sum_j w_k / std (delta_kj - 1/n) x_j; the sizes of those terms add up to
    # |w_k| / std ((1 - 2/n) |x_k| + mean_j |x_j|).
    n = math.prod(module.normalized_shape)
    size = (1.0 - 2.0 / n) * x.abs() + x.abs().mean(dims, keepdim=True)
    scale = (module.weight.detach().abs() if module.weight is not None else 1.0) / std
    return spread_bias(y, module.bias, size * scale, epsilon)


def _has_bias(module: nn.Module) -> bool:
    return isinstance(getattr(module, "bias", None), torch.Tensor)


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) and _has_bias(module)


def _linear(module: nn.Linear, x: torch.Tensor, epsilon: float = 1e-6) -> torch.Tensor:
    return affine(x, module.weight, module.bias, True, epsilon)


def _is_hf_conv1d(module: nn.Module) -> bool:
    """Hugging Face's ``Conv1D`` (GPT-2): ``x @ weight + bias``, weight ``(in, out)``."""
    return (
        type(module).__name__ == "Conv1D"
        and type(module).__module__.startswith("transformers")
        and _has_bias(module)
        and hasattr(module, "nf")
    )


def _hf_conv1d(module: nn.Module, x: torch.Tensor, epsilon: float = 1e-6) -> torch.Tensor:
    return SpreadBiasLinear.apply(x, module.weight.T, module.bias, epsilon)


def _is_conv(module: nn.Module) -> bool:
    return isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and _has_bias(module)


def _conv(module: Any, x: torch.Tensor, epsilon: float = 1e-6) -> torch.Tensor:
    z = module._conv_forward(x, module.weight, None)
    size = module._conv_forward(x.abs(), module.weight.detach().abs(), None)
    return spread_bias(z, module.bias.view(-1, *([1] * (z.ndim - 2))), size, epsilon)


def _rms_norm(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6))
    dtype = x.dtype
    x32 = x.float()
    factor = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps).detach()
    y = (x32 * factor).to(dtype)
    weight = getattr(module, "weight", None)
    return y * weight if weight is not None else y


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm)


def _is_rms_norm(module: nn.Module) -> bool:
    return type(module).__name__.endswith("RMSNorm")


_ACTIVATION_TYPES = (nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Mish, nn.ELU, nn.Softplus)


def _is_activation(module: nn.Module) -> bool:
    name = type(module).__name__
    return isinstance(module, _ACTIVATION_TYPES) or (
        type(module).__module__.startswith("transformers.activations") and "Activation" in name
    )


def _identity_activation(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return identity_rule(x, type(module).forward(module, x))


def _is_classification_head(module: nn.Module) -> bool:
    """Hugging Face sequence heads ``out_proj(act(dense(x)))`` (RoBERTa, XLM-R, Longformer, BART,
    T5, ...), whose activation is a function call (``torch.tanh``), not a module to canonize."""
    return (
        type(module).__module__.startswith("transformers.")
        and type(module).__name__.endswith("ClassificationHead")
        and isinstance(getattr(module, "dense", None), nn.Linear)
        and isinstance(getattr(module, "out_proj", None), nn.Linear)
    )


def _classification_head(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    with IdentityRuleTanh():
        return type(module).forward(module, *args, **kwargs)


def _is_gated_mlp(module: nn.Module) -> bool:
    return all(hasattr(module, name) for name in ("gate_proj", "up_proj", "down_proj", "act_fn"))


def _gated_mlp(module: Any, x: torch.Tensor) -> torch.Tensor:
    return module.down_proj(half_product(module.act_fn(module.gate_proj(x)), module.up_proj(x)))


def _multihead_attention(
    module: nn.MultiheadAttention,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_padding_mask: Optional[torch.Tensor] = None,
    need_weights: bool = True,
    attn_mask: Optional[torch.Tensor] = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
    rule: str = "attnlrp",
    zero_bias: bool = False,
    epsilon: float = 1e-6,
):
    """``nn.MultiheadAttention`` (self-attention, packed projections) with an LRP gradient."""
    if module.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    length, batch, embed = query.shape
    heads, head_dim = module.num_heads, embed // module.num_heads
    weight, bias = module.in_proj_weight, module.in_proj_bias
    w_q, w_k, w_v = weight.chunk(3)
    b_q, b_k, b_v = bias.chunk(3) if bias is not None else (None, None, None)
    q = affine(query, w_q, b_q, zero_bias, epsilon)
    k = affine(key, w_k, b_k, zero_bias, epsilon)
    v = affine(value, w_v, b_v, zero_bias, epsilon)

    def split(t: torch.Tensor) -> torch.Tensor:  # (L, N, E) -> (N, heads, L, head_dim)
        return t.reshape(t.shape[0], batch, heads, head_dim).permute(1, 2, 0, 3)

    mask = None
    if key_padding_mask is not None:
        mask = (
            ~key_padding_mask.bool()[:, None, None, :]
            if key_padding_mask.dtype == torch.bool
            else key_padding_mask[:, None, None, :]
        )
    if attn_mask is not None:
        extra = ~attn_mask if attn_mask.dtype == torch.bool else attn_mask
        mask = extra if mask is None else (mask & extra if mask.dtype == torch.bool else mask + extra)
    out = lrp_attention(split(q), split(k), split(v), mask, 1.0 / math.sqrt(head_dim), rule)  # (N, heads, L, hd)
    out = out.permute(2, 0, 1, 3).reshape(length, batch, embed)
    out = module.out_proj(out)
    if module.batch_first:
        out = out.transpose(0, 1)
    return out, None


def _is_timm_attention(module: nn.Module) -> bool:
    return (
        type(module).__module__.startswith("timm.") and type(module).__name__ == "Attention" and hasattr(module, "qkv")
    )


def _timm_attention(
    module: Any, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, rule: str = "attnlrp", **kwargs: Any
) -> torch.Tensor:
    batch, length, channels = x.shape
    qkv = module.qkv(x).reshape(batch, length, 3, module.num_heads, module.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = module.q_norm(q), module.k_norm(k)
    out = lrp_attention(q, k, v, attn_mask, module.scale, rule)
    out = out.transpose(1, 2).reshape(batch, length, -1)
    out = module.norm(out) if hasattr(module, "norm") else out
    return module.proj_drop(module.proj(out))


def transformer_canonizers(attention: str, zero_bias: bool, epsilon: float, hugging_face: bool) -> List[Canonizer]:
    """The canonizers of :func:`~captum_dualxda.lrp.composites.transformer_composite`.

    Parameters
    ----------
    attention : {"cp", "attnlrp"}
        The rule for ``softmax(q k^T) v`` (:func:`~captum_dualxda.lrp.rules.lrp_attention`).
    zero_bias : bool
        Spread each bias's relevance over the inputs (:func:`~captum_dualxda.lrp.rules.spread_bias`).
    epsilon : float
        Stabiliser of the bias's shares.
    hugging_face : bool
        Also switch a Hugging Face model's attention function (:class:`HFAttentionCanonizer`).
    """
    canonizers: List[Canonizer] = [
        ForwardCanonizer(_is_norm, functools.partial(_layer_norm, zero_bias=zero_bias, epsilon=epsilon)),
        ForwardCanonizer(_is_rms_norm, _rms_norm),
        ForwardCanonizer(_is_activation, _identity_activation),
        ForwardCanonizer(_is_gated_mlp, _gated_mlp),
        ForwardCanonizer(_is_classification_head, _classification_head),
        ForwardCanonizer(
            lambda m: isinstance(m, nn.MultiheadAttention),
            functools.partial(_multihead_attention, rule=attention, zero_bias=zero_bias, epsilon=epsilon),
        ),
        ForwardCanonizer(_is_timm_attention, functools.partial(_timm_attention, rule=attention)),
    ]
    if zero_bias:
        canonizers += [
            ForwardCanonizer(_is_linear, functools.partial(_linear, epsilon=epsilon)),
            ForwardCanonizer(_is_hf_conv1d, functools.partial(_hf_conv1d, epsilon=epsilon)),
            ForwardCanonizer(_is_conv, functools.partial(_conv, epsilon=epsilon)),
        ]
    if hugging_face:
        canonizers.append(HFAttentionCanonizer(attention))
    return canonizers
