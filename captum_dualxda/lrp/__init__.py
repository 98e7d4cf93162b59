"""Zennit-side extensions, named as Zennit names them.

- :mod:`.rules`: LRP rules as functions (uniform rule for products, CP-LRP / AttnLRP attention,
  identity rule, the bias's relevance spread over the inputs);
- :mod:`.canonizers`: canonizers that put those rules into a model's modules for an attribution;
- :mod:`.composites`: :func:`transformer_composite`, the composite for transformers;
- :mod:`.checks`: whether a composite's rules cover a model (used by :class:`~captum_dualxda.XDA`).
"""

from .checks import missing_canonizer, unsupported_layers
from .composites import CompositeFlags, TransformerComposite, transformer_composite

__all__ = ["transformer_composite", "TransformerComposite", "CompositeFlags", "unsupported_layers", "missing_canonizer"]
