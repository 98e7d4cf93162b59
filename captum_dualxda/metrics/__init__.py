"""Quality metrics for training-data attribution, usable on any score matrix.

Modules: :mod:`.scores` (measures on score arrays, any method's) and :mod:`.model` (measures
that run the model or read a DualDA fit).

Every function here accepts torch tensors or NumPy arrays (or anything ``np.asarray`` takes) and
returns NumPy arrays or Python floats, so the same code scores DualDA, Captum's ``TracInCP*``,
``ArnoldiInfluenceFunction``, or another library's output. Conventions follow Captum: a score
matrix has shape ``(n_test, n_train)`` and ``[i, j]`` is the score of training sample ``j`` for
test sample ``i``; higher means "more supporting".

Mislabel detection (per training sample scores, higher = more suspicious):
    :func:`mislabel_auc`, :func:`mislabel_detection_curve`; score sources
    :func:`mislabel_scores` (DualDA self-influence or surrogate hinge loss) and the baseline
    :func:`training_loss` (the network's own cross-entropy on its training labels).
Class detection:
    :func:`class_detection`, :func:`class_detection_from_indices`,
    :func:`random_class_detection` (the exact expectation of a random ranking).
Sparsity of attributions:
    :func:`zero_fraction`, :func:`hoyer_sparsity`.
Counterfactual quality (do the scores predict retraining?):
    :func:`lds` (linear datamodeling score) and its result :class:`LDSResult`.
Surrogate fidelity (does the SVM on ``phi`` behave like the network?):
    :func:`logit_fidelity` (two logit matrices), :func:`surrogate_fidelity` (a DualDA + inputs).

Choosing ``C`` lives in :mod:`captum_dualxda.choose_c` (``sweep_C``, ``SweepRow``,
``format_markdown``).
"""

from .model import mislabel_scores, surrogate_fidelity, training_loss
from .scores import (
    Fidelity,
    LDSResult,
    class_detection,
    class_detection_from_indices,
    hoyer_sparsity,
    lds,
    logit_fidelity,
    mislabel_auc,
    mislabel_detection_curve,
    random_class_detection,
    zero_fraction,
)

__all__ = [
    "mislabel_auc",
    "mislabel_detection_curve",
    "mislabel_scores",
    "training_loss",
    "class_detection",
    "class_detection_from_indices",
    "random_class_detection",
    "zero_fraction",
    "hoyer_sparsity",
    "LDSResult",
    "lds",
    "Fidelity",
    "logit_fidelity",
    "surrogate_fidelity",
]
