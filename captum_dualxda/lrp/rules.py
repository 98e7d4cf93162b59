"""LRP rules as functions: each computes a layer's output, with a gradient whose product with the
input is the layer's LRP relevance (AttnLRP's gradient-times-input form, ``docs/method.md``).

- :func:`half_product`, :func:`half_matmul`: products of two activations, each operand gets half
  (the uniform rule);
- :func:`lrp_attention`: ``softmax(q k^T) v`` with CP-LRP's rule (attention weights constant) or
  AttnLRP's;
- :func:`identity_rule` (and :class:`IdentityRuleTanh` for ``torch.tanh`` calls): element-wise
  activations and normalisations pass relevance through unchanged;
- :func:`spread_bias`, :class:`SpreadBiasLinear`, :func:`affine`: a bias's relevance goes to the
  inputs in proportion to the size of their contributions (Zennit's ``zero_params="bias"`` in
  spirit).

The canonizers (:mod:`.canonizers`) put these rules into the modules of a model.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

__all__ = [
    "ATTENTION_RULES",
    "half_product",
    "half_matmul",
    "lrp_attention",
    "identity_rule",
    "IdentityRuleTanh",
    "spread_bias",
    "SpreadBiasLinear",
    "affine",
]

ATTENTION_RULES = ("cp", "attnlrp")
"""The rules for ``softmax(q k^T) v``: CP-LRP (attention weights constant) and AttnLRP."""


def half_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a * b`` whose gradient gives each operand half of the relevance (uniform rule)."""
    return 0.5 * (a * b.detach()) + 0.5 * (a.detach() * b)


def half_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` whose gradient gives each operand half of the relevance (uniform rule)."""
    return 0.5 * torch.matmul(a, b.detach()) + 0.5 * torch.matmul(a.detach(), b)


def lrp_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: Optional[torch.Tensor],
    scaling: float,
    rule: str = "attnlrp",
) -> torch.Tensor:
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
        is_bool = mask.dtype == torch.bool
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min) if is_bool else scores + mask
    weights = torch.softmax(scores.float(), dim=-1).to(query.dtype)
    if rule == "cp":
        return torch.matmul(weights, value)  # weights carry no gradient: all of it reaches the values
    return half_matmul(weights, value)


def identity_rule(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``y = f(x)`` element-wise, with the identity rule's gradient ``f(x) / x`` (0 where ``x = 0``)."""
    nonzero = x.abs() > 1e-12
    ratio = torch.where(nonzero, y / torch.where(nonzero, x, torch.ones_like(x)), torch.zeros_like(y))
    return x * ratio.detach()


class IdentityRuleTanh(torch.overrides.TorchFunctionMode):
    """Within this mode ``torch.tanh(x)`` has the identity rule's gradient ``tanh(x) / x``."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in (torch.tanh, torch.Tensor.tanh) and not kwargs:
            # the mode is off inside its own handler: func is the ordinary tanh
            return identity_rule(args[0], func(args[0]))
        return func(*args, **kwargs)


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


class SpreadBiasLinear(torch.autograd.Function):
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


def affine(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], zero_bias: bool, epsilon: float
) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, the bias's relevance spread over ``x`` when ``zero_bias``."""
    if bias is None or not zero_bias:
        return nn.functional.linear(x, weight, bias)
    return SpreadBiasLinear.apply(x, weight, bias, epsilon)
