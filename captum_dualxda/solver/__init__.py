"""Crammer-Singer multiclass SVM solvers that return the dual variables DualDA needs.

Modules: :mod:`.settings` (:class:`~.settings.SolverSettings`, the settings of one fit; ``DEFAULT_C``),
:mod:`.problem` (validated inputs, result), :mod:`.projection` (exact per-sample update),
:mod:`.gap` (objectives, duality gap, natural residual), :mod:`.sparse_dual` (row-sparse dual
variables for large ``n K``), :mod:`.backend` (the contract every backend keeps), :mod:`.bdcd`
(PyTorch block backend, CPU/GPU), :mod:`.sequential` (compiled sequential backend with
shrinking, CPU; its machine code cached by :mod:`.machine_code`) and :mod:`.fit` (the entry
point).
"""

from .fit import ConvergenceWarning, available_backends, fit_crammer_singer, fit_crammer_singer_path
from .gap import evaluate_optimality, primal_objective
from .problem import CrammerSingerProblem, CrammerSingerResult, make_problem, support_mask
from .projection import project_crammer_singer
from .settings import DEFAULT_C
from .sparse_dual import RowSparseDual, dual_rows, dual_to_dense

__all__ = [
    "fit_crammer_singer",
    "fit_crammer_singer_path",
    "available_backends",
    "ConvergenceWarning",
    "DEFAULT_C",
    "CrammerSingerProblem",
    "CrammerSingerResult",
    "make_problem",
    "support_mask",
    "project_crammer_singer",
    "RowSparseDual",
    "dual_rows",
    "dual_to_dense",
    "evaluate_optimality",
    "primal_objective",
]
