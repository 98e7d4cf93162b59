"""captum_dualxda: DualXDA data attribution for PyTorch, on Captum and Zennit."""
from .solver import CrammerSingerResult, fit_crammer_singer

__version__ = "0.1.0"

__all__ = ["fit_crammer_singer", "CrammerSingerResult"]
