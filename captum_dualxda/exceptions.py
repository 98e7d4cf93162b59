"""Every exception and warning class of the package, in one place.

This module imports nothing from the rest of the package, so every layer (the solver included)
may raise these. The classes are also importable where users meet them:
``captum_dualxda.xda.UnsupportedModelError``, ``captum_dualxda.solver.ConvergenceWarning``.
"""

from __future__ import annotations

__all__ = [
    "ArgumentTypeError",
    "ConvergenceWarning",
    "ModelChangedError",
    "UnsupportedModelError",
    "FeaturesReached",
    "UnreadableState",
]


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type (a ``TypeError`` that is also a ``ValueError``).

    The package raised ``ValueError`` for such values before; code that catches it keeps working.
    """


class ConvergenceWarning(UserWarning):
    """The solver stopped at ``max_iter`` before reaching ``tol``."""


class ModelChangedError(RuntimeError):
    """The model's parameters or buffers hold other values than when the fit was made."""


class UnsupportedModelError(RuntimeError):
    """The composite's rules cannot propagate relevance through some layers of the model."""


class FeaturesReached(Exception):
    """Raised by a stopping probe's hook once ``phi`` is captured, to end the forward pass early.

    Control flow inside the package (:class:`~captum_dualxda._core.probe.ModelProbe`); it never
    reaches the user.
    """


class UnreadableState(Exception):
    """An object in the data whose state cannot be read for a fingerprint.

    Raised inside :class:`~captum_dualxda._core.cache.Fingerprint` and turned into a
    ``TypeError`` that names the object; it never reaches the user.

    Parameters
    ----------
    kind : str
        The object's qualified class name.
    reason : str
        Why its state cannot be read.

    Attributes
    ----------
    owners : list of str
        The objects holding it, inner first (filled in as the error travels outwards).
    """

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(kind)
        self.kind, self.reason = kind, reason
        self.owners: list[str] = []
