"""captum_dualxda: DualXDA data attribution for PyTorch, on Captum and Zennit.

- :class:`DualDA`: training-data attribution from a Crammer-Singer SVM's dual variables, a
  Captum ``DataInfluence`` next to ``TracInCPFast``.
- :class:`XDA` and :func:`xda_pairs`: Zennit LRP heatmaps of why a training sample matters for a
  test prediction, in both images.
- :func:`transformer_composite`: the Zennit composite (CP-LRP / AttnLRP rules) that makes XDA work on
  transformers (Hugging Face BERT, Llama, GPT-2; torchvision and timm ViTs).
- :func:`fit_crammer_singer`: the solver underneath (numba on CPU, PyTorch on GPU).
- :func:`rank_label_issues`: training samples ordered by how likely their label is wrong, with a
  yes/no flag (:class:`LabelIssues`).
- :mod:`captum_dualxda.visualization`: figures of proponents, opponents and heatmaps.
"""

from .dualda import DualDA
from .label_issues import LabelIssues, rank_label_issues
from .lrp.composites import transformer_composite
from .solver import CrammerSingerResult, fit_crammer_singer
from .xda import XDA, XDAPairs, xda_pairs

__version__ = "0.1.0"

__all__ = [
    "DualDA",
    "XDA",
    "XDAPairs",
    "xda_pairs",
    "transformer_composite",
    "fit_crammer_singer",
    "CrammerSingerResult",
    "rank_label_issues",
    "LabelIssues",
]
