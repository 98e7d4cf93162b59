"""Will a composite's rules explain this model? The checks XDA runs before any relevance pass.

- :func:`unsupported_layers`: layers Zennit's built-in rules do not cover (attention,
  normalisation by statistics of the input, smooth activations);
- :func:`missing_canonizer`: a BatchNorm or torchvision ResNet block without the canonizer that
  makes relevance conserve;
- :func:`check_attention_interface`: a Hugging Face model whose attention cannot be given an LRP
  rule (it does not go through the attention interface);
- :func:`registered_elsewhere`: a composite whose hooks sit on another model.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from torch import nn
from zennit.core import Composite

__all__ = [
    "unsupported_layers",
    "missing_canonizer",
    "check_attention_interface",
    "has_attention",
    "unsupported_message",
    "registered_elsewhere",
]


#: Layer types that Zennit's built-in rules do not propagate relevance through: attention and
#: normalisation by statistics of the input (a product of activations), smooth activations.
_UNSUPPORTED_TYPES: Tuple[type, ...] = (
    nn.MultiheadAttention,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.Softmax,
    nn.GELU,
    nn.SiLU,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
)
_UNSUPPORTED_NAMES = ("Attention", "LayerNorm", "RMSNorm", "Softmax")


def unsupported_layers(model: nn.Module) -> List[Tuple[str, str]]:
    """Layers of ``model`` that Zennit's built-in rules do not cover (attention, LayerNorm, ...).

    Parameters
    ----------
    model : nn.Module

    Returns
    -------
    list of (str, str)
        ``(dotted name, class name)`` of each such layer, outermost first (the submodules of a
        reported attention block are not listed again).
    """
    found: List[Tuple[str, str]] = []
    for name, module in model.named_modules():
        if any(name.startswith(parent + ".") for parent, _ in found):
            continue
        kind = type(module).__name__
        if isinstance(module, _UNSUPPORTED_TYPES) or any(part in kind for part in _UNSUPPORTED_NAMES):
            found.append((name, kind))
    return found


def has_attention(model: nn.Module) -> bool:
    return any(
        isinstance(m, (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer))
        or "Attention" in type(m).__name__
        for m in model.modules()
    )


def unsupported_message(model: nn.Module, composite: Composite, what: str) -> str:
    layers = unsupported_layers(model)
    listed = ", ".join(f"{name} ({kind})" for name, kind in layers[:6]) + (
        f" and {len(layers) - 6} more" if len(layers) > 6 else ""
    )
    reason = (
        f"its rules do not cover these layers of the model: {listed}. Zennit's composites handle "
        "convolutional and fully connected networks (Linear, Conv, BatchNorm merged by a canonizer, "
        "pooling, ReLU); attention, LayerNorm and softmax need rules of their own"
        if layers
        else "no layer known to be unsupported was found: check the composite's rules and epsilon"
    )
    return (
        f"XDA with composite {type(composite).__name__} failed: {what}; {reason}. For a model that these "
        "rules do not cover, pass `composite=None` (gradient times input: finite, and summing to the "
        "DualDA score for bias-free piecewise-linear networks only)."
    )


def _flat_canonizers(canonizers: Any) -> List[Any]:
    out: List[Any] = []
    for canonizer in canonizers or ():
        out.append(canonizer)
        out.extend(_flat_canonizers(getattr(canonizer, "canonizers", None)))
    return out


def missing_canonizer(model: nn.Module, composite: Optional[Composite]) -> Optional[str]:
    """Why ``composite`` will not conserve relevance on ``model`` for lack of a canonizer, or None.

    A BatchNorm layer needs a canonizer that merges it into the layer before it
    (``SequentialMergeBatchNorm``); torchvision's ResNet blocks need
    ``zennit.torchvision.ResNetCanonizer`` (their residual additions are invisible to rules
    otherwise). Without them heatmaps do not sum to the DualDA score, by orders of magnitude.

    Parameters
    ----------
    model : nn.Module
    composite : zennit.core.Composite or None

    Returns
    -------
    str or None
        A sentence naming the layers and the canonizer to add; None when nothing is missing.
    """
    if composite is None:
        return None
    canonizers = _flat_canonizers(getattr(composite, "canonizers", None))
    blocks = [
        name
        for name, m in model.named_modules()
        if type(m).__name__ in ("BasicBlock", "Bottleneck") and type(m).__module__.startswith("torchvision.")
    ]
    resnet_kinds = ("ResNetBasicBlockCanonizer", "ResNetBottleneckCanonizer")
    if blocks and not any(type(c).__name__ in resnet_kinds for c in canonizers):
        return (
            f"The model has torchvision ResNet blocks ({', '.join(blocks[:3])}{', ...' if len(blocks) > 3 else ''}) "
            "but the composite has no ResNet canonizer: heatmaps will not sum to the DualDA score. Pass "
            "`canonizers=[zennit.torchvision.ResNetCanonizer()]` to the composite."
        )
    norms = [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if norms and not canonizers:
        return (
            f"The model has BatchNorm layers ({', '.join(norms[:3])}{', ...' if len(norms) > 3 else ''}) but "
            "the composite has no canonizer: heatmaps will not sum to the DualDA score. Pass "
            "`canonizers=[zennit.canonizers.SequentialMergeBatchNorm()]` (or "
            "`zennit.torchvision.ResNetCanonizer()` for a torchvision ResNet) to the composite."
        )
    return None


def registered_elsewhere(composite: Composite, model: nn.Module) -> bool:
    """Whether ``composite`` is registered, but its rule hooks sit on modules outside ``model``.

    Zennit does not record which model a composite is bound to; this looks for the composite's
    hook objects among the forward hooks of ``model``'s modules.  A composite that only holds
    canonizers (no rule hooks) cannot be traced and is assumed to belong to ``model``.
    """
    if not composite.handles:
        return False
    hooks = list(getattr(composite, "hook_refs", ()))
    if not hooks:
        return False
    hook_ids = {id(hook) for hook in hooks}
    for module in model.modules():
        for registry in (module._forward_pre_hooks, module._forward_hooks):
            for fn in registry.values():
                owner = getattr(fn, "__self__", None)
                if owner is not None and id(owner) in hook_ids:
                    return False
    return True


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
        supported = (
            can_switch() if callable(can_switch) else bool(getattr(module, "_supports_attention_backend", False))
        )
        if not supported:
            raise ValueError(
                f"`model`: {type(module).__name__} computes attention in its own code instead of through Hugging "
                "Face's attention interface, so transformer_composite cannot give its attention an LRP rule and "
                "the heatmaps would not add up to tau. Models whose attention goes through the interface (BERT, "
                "RoBERTa, DistilBERT, Llama, Qwen, Mistral, GPT-2, ...) are supported."
            )
