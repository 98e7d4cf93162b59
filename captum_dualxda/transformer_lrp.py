"""LRP for transformers, as a Zennit composite: XDA on BERT, Llama, GPT-2 and Vision Transformers.

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
  (:func:`spread_bias`); ``zero_params=None``: ordinary gradient, each bias keeps
  ``b * gradient``. Position embeddings and class tokens are parameters added to the input and
  keep their share either way.

Attention of Hugging Face models is swapped through their public attention interface
(``AttentionInterface`` + ``set_attn_implementation``), ``nn.MultiheadAttention`` (torchvision's
ViT) and timm's ``Attention`` through their forward. ``transformers`` is imported only when a
Hugging Face model is given.
"""
from __future__ import annotations

import functools
import math
import types
from typing import Any, Callable, List, Optional

import torch
from torch import nn
from zennit.canonizers import Canonizer
from zennit.core import Composite

from ._utils.validation import check_positive

__all__ = ["TransformerComposite", "transformer_composite", "half_product", "half_matmul", "spread_bias"]

ATTENTION_NAME = "captum_dualxda_lrp"
"""Name under which the LRP attention function is registered with Hugging Face transformers."""

ATTENTION_RULES = ("cp", "attnlrp")
"""The rules for ``softmax(q k^T) v``: CP-LRP (attention weights constant) and AttnLRP."""


def _attention_name(rule: str) -> str:
    return ATTENTION_NAME if rule == "attnlrp" else f"{ATTENTION_NAME}_{rule}"


def half_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a * b`` whose gradient gives each operand half of the relevance (uniform rule)."""
    return 0.5 * (a * b.detach()) + 0.5 * (a.detach() * b)


def half_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` whose gradient gives each operand half of the relevance (uniform rule)."""
    return 0.5 * torch.matmul(a, b.detach()) + 0.5 * torch.matmul(a.detach(), b)


def lrp_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: Optional[torch.Tensor],
                  scaling: float, rule: str = "attnlrp") -> torch.Tensor:
    """``softmax(q k^T * scaling + mask) v`` with an LRP gradient, ``(N, heads, T, d_head)``.

    ``mask`` is additive (float) or boolean (True = attend), broadcastable to the scores.
    ``rule="attnlrp"``: the uniform rule on both products (the values get half of the relevance,
    the attention logits the other half through the softmax's gradient times input, which does
    not conserve it). ``rule="cp"`` (CP-LRP, Ali et al. 2022): the attention weights are
    constants, the values get all of the relevance (conservative); ``q`` and ``k`` get none.
    """
    if rule == "cp":
        query, key = query.detach(), key.detach()
    scores = half_matmul(query, key.transpose(-1, -2)) * scaling
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + mask
    weights = torch.softmax(scores.float(), dim=-1).to(query.dtype)
    if rule == "cp":
        return torch.matmul(weights, value)  # weights carry no gradient: all of it reaches the values
    return half_matmul(weights, value)


# ----------------------------------------------------------------------------------- canonizers
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

    def apply(self, root_module: nn.Module) -> List["ForwardCanonizer"]:
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

    def copy(self) -> "ForwardCanonizer":
        return ForwardCanonizer(self.matches, self.forward)


class HFAttentionCanonizer(Canonizer):
    """Switch a Hugging Face model to the LRP attention function (``rule``), and back."""

    def __init__(self, rule: str = "attnlrp") -> None:
        super().__init__()
        self.rule = rule
        self.model: Optional[nn.Module] = None
        self.previous: Optional[str] = None

    def apply(self, root_module: nn.Module) -> List["HFAttentionCanonizer"]:
        if getattr(getattr(root_module, "config", None), "_attn_implementation", None) is None:
            return []
        instance = HFAttentionCanonizer(self.rule)
        instance.register(root_module)
        return [instance]

    def register(self, model: nn.Module) -> None:
        _register_hf_attention(self.rule)
        self.model = model
        self.previous = model.config._attn_implementation
        model.set_attn_implementation(_attention_name(self.rule))
        if model.config._attn_implementation != _attention_name(self.rule):  # ignored: never run without the rule
            self.model = None
            raise RuntimeError(
                f"{type(model).__name__} did not switch to the LRP attention function; its attention would keep "
                "its plain gradient."
            )

    def remove(self) -> None:
        if self.model is not None:
            self.model.set_attn_implementation(self.previous)
        self.model = None


def check_attention_interface(model: nn.Module) -> None:
    """Refuse a Hugging Face model whose attention cannot be swapped for the LRP attention.

    The rules reach Hugging Face attention through its attention interface
    (``set_attn_implementation``). Models that compute attention in their own code (e.g. BigBird,
    RoFormer, DeBERTa-v2 in transformers 5) ignore the switch, so their attention would keep its
    plain gradient and heatmaps would silently miss ``tau``.

    Raises
    ------
    ValueError
        ``model`` or one of its sub-models does not support switching its attention function.
    """
    from transformers import PreTrainedModel

    for module in model.modules():
        if not isinstance(module, PreTrainedModel):
            continue
        can_switch = getattr(module, "_can_set_attn_implementation", None)
        supported = can_switch() if callable(can_switch) else bool(getattr(module, "_supports_attention_backend", False))
        if not supported:
            raise ValueError(
                f"`model`: {type(module).__name__} computes attention in its own code instead of through Hugging "
                "Face's attention interface, so transformer_composite cannot give its attention an LRP rule and "
                "the heatmaps would not add up to tau. Models whose attention goes through the interface (BERT, "
                "RoBERTa, DistilBERT, Llama, Qwen, Mistral, GPT-2, ...) are supported."
            )


def _register_hf_attention(rule: str) -> None:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import eager_mask

    def attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: Optional[torch.Tensor], scaling: Optional[float] = None, dropout: float = 0.0,
                  **kwargs: Any):
        groups = getattr(module, "num_key_value_groups", 1)
        if groups > 1:  # grouped-query attention: repeat the key and value heads
            key = key.repeat_interleave(groups, dim=1)
            value = value.repeat_interleave(groups, dim=1)
        scale = scaling if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
        mask = attention_mask[:, :, :, : key.shape[-2]] if attention_mask is not None and attention_mask.ndim == 4 else attention_mask
        output = lrp_attention(query, key, value, mask, scale, rule)
        return output.transpose(1, 2).contiguous(), None

    AttentionInterface.register(_attention_name(rule), attention)
    AttentionMaskInterface.register(_attention_name(rule), eager_mask)


def spread_bias(z: torch.Tensor, bias: torch.Tensor, magnitude: torch.Tensor, epsilon: float = 1e-6) -> torch.Tensor:
    """``z + bias`` in the forward pass; the bias's relevance goes to the inputs of ``z``.

    ``z = sum_j c_j`` is the bias-free part of an affine map, a sum of input contributions
    ``c_j = w_j x_j``, and ``magnitude = sum_j |c_j|`` (computed from ``|x|`` and ``|w|``, with
    gradient). Input times gradient then gives input ``j`` the relevance
    ``c_j g + |c_j| / (sum_k |c_k| + epsilon) * bias * g`` (``g`` the gradient at the output):
    its own contribution plus a share of the bias's relevance ``bias * g`` in proportion to the
    size of its contribution. Summed over the inputs that is ``(z + bias) g``, all of the
    output's relevance (up to ``epsilon``), and unlike ``c_j / z`` (the epsilon rule with the bias
    zeroed) the weights are never above 1 and the bias's shares all have one sign, so a ``z``
    that cancels to 0 neither blows up nor loses precision. Only where every contribution is 0
    does the bias keep its share.

    Parameters
    ----------
    z : torch.Tensor
        ``(*shape)`` floating point, the bias-free output, carrying the gradient to the inputs.
    bias : torch.Tensor
        Broadcastable to ``z``, same dtype.
    magnitude : torch.Tensor
        ``(*shape)``, ``sum_j |c_j|`` per output element (>= 0), carrying the gradient of ``|x|``.
    epsilon : float
        Added to ``magnitude`` in the denominator (> 0).

    Returns
    -------
    torch.Tensor
        ``(*shape)``, ``z + bias`` (up to float rounding), same dtype as ``z``.
    """
    y = z + bias
    share = ((y.detach().float() - z.detach().float()) / (magnitude.detach().float() + epsilon)).to(z.dtype)
    modified = z + magnitude * share
    return modified + (y.detach() - modified.detach())


class _SpreadBiasLinear(torch.autograd.Function):
    """``F.linear(x, weight, bias)`` with :func:`spread_bias`'s gradient, in one node.

    Gradient to ``x`` only: ``g W + sign(x) * ((g * share) |W|)`` with ``share = bias /
    (|x| |W|^T + epsilon)``, the same as :func:`spread_bias` on ``z = x W^T``, ``magnitude =
    |x| |W|^T`` (two matrix products each way, but no chain of element-wise autograd nodes).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, epsilon: float) -> torch.Tensor:
        weight, bias = weight.detach(), bias.detach()
        abs_weight = weight.abs()
        size = nn.functional.linear(x.abs(), abs_weight)
        share = (bias.float() / (size.float() + epsilon)).to(x.dtype)
        ctx.save_for_backward(x, weight, abs_weight, share)
        return nn.functional.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        x, weight, abs_weight, share = ctx.saved_tensors
        grad_x = torch.matmul(grad, weight) + torch.sign(x) * torch.matmul(grad * share, abs_weight)
        return grad_x, None, None, None


def _affine(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], zero_bias: bool,
            epsilon: float) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, the bias's relevance spread over ``x`` when ``zero_bias``."""
    if bias is None or not zero_bias:
        return nn.functional.linear(x, weight, bias)
    return _SpreadBiasLinear.apply(x, weight, bias, epsilon)


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
    return _affine(x, module.weight, module.bias, True, epsilon)


def _is_hf_conv1d(module: nn.Module) -> bool:
    """Hugging Face's ``Conv1D`` (GPT-2): ``x @ weight + bias``, weight ``(in, out)``."""
    return (type(module).__name__ == "Conv1D" and type(module).__module__.startswith("transformers")
            and _has_bias(module) and hasattr(module, "nf"))


def _hf_conv1d(module: nn.Module, x: torch.Tensor, epsilon: float = 1e-6) -> torch.Tensor:
    return _SpreadBiasLinear.apply(x, module.weight.T, module.bias, epsilon)


def _is_conv(module: nn.Module) -> bool:
    return isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and _has_bias(module)


def _conv(module: nn.Module, x: torch.Tensor, epsilon: float = 1e-6) -> torch.Tensor:
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


def _identity_rule(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``y = f(x)`` element-wise, with the identity rule's gradient ``f(x) / x`` (0 where ``x = 0``)."""
    nonzero = x.abs() > 1e-12
    ratio = torch.where(nonzero, y / torch.where(nonzero, x, torch.ones_like(x)), torch.zeros_like(y))
    return x * ratio.detach()


def _identity_activation(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return _identity_rule(x, type(module).forward(module, x))


def _is_classification_head(module: nn.Module) -> bool:
    """Hugging Face sequence heads ``out_proj(act(dense(x)))`` (RoBERTa, XLM-R, Longformer, BART,
    T5, ...), whose activation is a function call (``torch.tanh``), not a module to canonize."""
    return (type(module).__module__.startswith("transformers.") and type(module).__name__.endswith("ClassificationHead")
            and isinstance(getattr(module, "dense", None), nn.Linear) and isinstance(getattr(module, "out_proj", None), nn.Linear))


class _IdentityRuleTanh(torch.overrides.TorchFunctionMode):
    """Within this mode ``torch.tanh(x)`` has the identity rule's gradient ``tanh(x) / x``."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in (torch.tanh, torch.Tensor.tanh) and not kwargs:
            # the mode is off inside its own handler: func is the ordinary tanh
            return _identity_rule(args[0], func(args[0]))
        return func(*args, **kwargs)


def _classification_head(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    with _IdentityRuleTanh():
        return type(module).forward(module, *args, **kwargs)


def _is_gated_mlp(module: nn.Module) -> bool:
    return all(hasattr(module, name) for name in ("gate_proj", "up_proj", "down_proj", "act_fn"))


def _gated_mlp(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return module.down_proj(half_product(module.act_fn(module.gate_proj(x)), module.up_proj(x)))


def _multihead_attention(module: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         key_padding_mask: Optional[torch.Tensor] = None, need_weights: bool = True,
                         attn_mask: Optional[torch.Tensor] = None, average_attn_weights: bool = True,
                         is_causal: bool = False, rule: str = "attnlrp", zero_bias: bool = False,
                         epsilon: float = 1e-6):
    """``nn.MultiheadAttention`` (self-attention, packed projections) with an LRP gradient."""
    if module.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    length, batch, embed = query.shape
    heads, head_dim = module.num_heads, embed // module.num_heads
    weight, bias = module.in_proj_weight, module.in_proj_bias
    w_q, w_k, w_v = weight.chunk(3)
    b_q, b_k, b_v = bias.chunk(3) if bias is not None else (None, None, None)
    q = _affine(query, w_q, b_q, zero_bias, epsilon)
    k = _affine(key, w_k, b_k, zero_bias, epsilon)
    v = _affine(value, w_v, b_v, zero_bias, epsilon)

    def split(t: torch.Tensor) -> torch.Tensor:  # (L, N, E) -> (N, heads, L, head_dim)
        return t.reshape(t.shape[0], batch, heads, head_dim).permute(1, 2, 0, 3)

    mask = None
    if key_padding_mask is not None:
        mask = ~key_padding_mask.bool()[:, None, None, :] if key_padding_mask.dtype == torch.bool else key_padding_mask[:, None, None, :]
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
    return type(module).__module__.startswith("timm.") and type(module).__name__ == "Attention" and hasattr(module, "qkv")


def _timm_attention(module: nn.Module, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, rule: str = "attnlrp",
                    **kwargs: Any) -> torch.Tensor:
    batch, length, channels = x.shape
    qkv = module.qkv(x).reshape(batch, length, 3, module.num_heads, module.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = module.q_norm(q), module.k_norm(k)
    out = lrp_attention(q, k, v, attn_mask, module.scale, rule)
    out = out.transpose(1, 2).reshape(batch, length, -1)
    out = module.norm(out) if hasattr(module, "norm") else out
    return module.proj_drop(module.proj(out))


# ----------------------------------------------------------------------------------- composite
class TransformerComposite(Composite):
    """Zennit composite of AttnLRP canonizers; XDA computes relevance as ``input * gradient``.

    Attributes
    ----------
    handles_attention : bool
        True: :class:`~captum_dualxda.xda.XDA` accepts models with attention under it.
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


def transformer_composite(model: nn.Module, attention: str = "cp", zero_params: Optional[str] = "bias",
                          epsilon: float = 1e-6) -> TransformerComposite:
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
        embeddings and class token take (text heatmaps include the position embeddings). ``"attnlrp"`` (AttnLRP): half of the relevance to the
        values, half through the softmax to queries and keys; the softmax's gradient-times-input
        rule does not conserve relevance, and on trained models it loses most of that half
        (``benchmarks/README.md`` measures both).
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
        not go through the attention interface (:func:`check_attention_interface`).
    """
    if attention not in ATTENTION_RULES:
        raise ValueError(f"`attention` must be one of {ATTENTION_RULES}, got {attention!r}.")
    if not (zero_params is None or (isinstance(zero_params, str) and zero_params == "bias")):
        raise ValueError(f"`zero_params` must be 'bias' or None, got {zero_params!r}.")
    epsilon = check_positive(epsilon, "epsilon")
    zero_bias = zero_params == "bias"
    canonizers: List[Canonizer] = [
        ForwardCanonizer(_is_norm, functools.partial(_layer_norm, zero_bias=zero_bias, epsilon=epsilon)),
        ForwardCanonizer(_is_rms_norm, _rms_norm),
        ForwardCanonizer(_is_activation, _identity_activation),
        ForwardCanonizer(_is_gated_mlp, _gated_mlp),
        ForwardCanonizer(_is_classification_head, _classification_head),
        ForwardCanonizer(lambda m: isinstance(m, nn.MultiheadAttention),
                         functools.partial(_multihead_attention, rule=attention, zero_bias=zero_bias, epsilon=epsilon)),
        ForwardCanonizer(_is_timm_attention, functools.partial(_timm_attention, rule=attention)),
    ]
    if zero_bias:
        canonizers += [
            ForwardCanonizer(_is_linear, functools.partial(_linear, epsilon=epsilon)),
            ForwardCanonizer(_is_hf_conv1d, functools.partial(_hf_conv1d, epsilon=epsilon)),
            ForwardCanonizer(_is_conv, functools.partial(_conv, epsilon=epsilon)),
        ]
    is_hf = hasattr(getattr(model, "config", None), "_attn_implementation")
    if is_hf:
        check_attention_interface(model)
        canonizers.append(HFAttentionCanonizer(attention))
    return TransformerComposite(canonizers, _embedding_output_module(model) if is_hf else None)
