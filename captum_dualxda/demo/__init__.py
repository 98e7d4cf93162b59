"""The main job: DualXDA end to end on scikit-learn's digits, with nothing to download.

``python -m captum_dualxda demo --out DIR`` (see :mod:`captum_dualxda.__main__`) calls
:func:`run_demo`, which

1. loads scikit-learn's 8x8 digits (bundled with scikit-learn), scales them to ``[0, 1]``, splits
   them into training and test data and flips a fraction of the TRAINING labels (deterministic
   for the seed; every flipped label really changes);
2. trains a small CNN (conv + batch norm) on the noisy labels;
3. fits :class:`~captum_dualxda.DualDA` on its penultimate features (the input of the
   final ``nn.Linear``);
4. explains the predictions on the whole test set (top proponents and opponents) and, for a few
   test samples, computes XDA heatmaps and writes one figure each;
5. ranks the training samples by DualDA self-influence (the paper's choice) and with
   :func:`~captum_dualxda.rank_label_issues` (the held-out margin of a small-``C`` SVM
   surrogate, with a yes/no flag), and measures how well each finds the flipped labels (ROC AUC, share found in
   the top 10 %, the flag's precision and recall, a detection curve figure).

Modules: :mod:`.data` (:func:`load_digits_data`), :mod:`.model` (:class:`DigitsCNN`,
:func:`train_cnn`), :mod:`.run` (:func:`run_demo`), :mod:`.report` (:class:`DemoResult`),
:mod:`.figures` and :mod:`.outputs` (the output directory). The pieces are public so the
tutorials and tests can reuse them; the mislabel metrics are :mod:`captum_dualxda.metrics`'
:func:`~captum_dualxda.metrics.mislabel_auc` and
:func:`~captum_dualxda.metrics.mislabel_detection_curve`. With ``flip_rate=0`` nothing is
flipped: the mislabel rows of the summary read "n/a" and no detection curve is drawn.
"""

from ..solver.settings import DEFAULT_C
from .data import DigitsData, load_digits_data
from .model import DEFAULT_EPOCHS, DigitsCNN, train_cnn
from .outputs import OUTPUT_MANIFEST, check_out_dir
from .report import DemoResult
from .run import DEMO_SEED_RANGE, check_demo_arguments, run_demo

__all__ = [
    "DigitsData",
    "DigitsCNN",
    "DemoResult",
    "load_digits_data",
    "train_cnn",
    "run_demo",
    "check_demo_arguments",
    "check_out_dir",
    "DEFAULT_C",
    "DEFAULT_EPOCHS",
    "DEMO_SEED_RANGE",
    "OUTPUT_MANIFEST",
]
