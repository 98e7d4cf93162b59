"""Validation of scalar arguments: one rule per kind of argument, used by every public entry point.

The rules follow the spirit of scikit-learn's ``check_scalar``:

- numbers are :class:`numbers.Real` / :class:`numbers.Integral`, so NumPy scalars
  (``np.float32(0.1)``, ``np.int64(5)``) are accepted like Python numbers and come back as
  ``float`` / ``int``; so are 0-d NumPy arrays and torch tensors (``x.abs().max()``), read
  through ``.item()``;
- booleans are refused where a number is expected (``True`` is not a count of bytes), and only
  booleans (``bool``, ``np.bool_``) are accepted where a flag is expected (the string ``"False"``
  is not False);
- NaN is always refused for real numbers, infinity unless the range allows it.

A value of the wrong type raises :class:`~captum_dualxda.exceptions.ArgumentTypeError` (a
``TypeError`` that is also a ``ValueError``: the package raised ``ValueError`` for such values
before, and code that catches it keeps working); a value of the right type outside its range
raises ``ValueError``. Every message names the argument, shows what was passed and says what is
expected.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Literal, Optional, overload

import numpy as np

from ..exceptions import ArgumentTypeError

__all__ = [
    "check_real",
    "check_positive",
    "check_non_negative",
    "check_integer",
    "check_flag",
    "check_seed",
    "SEED_RANGE",
]

#: Seeds every solver backend accepts: the range of ``torch.Generator.manual_seed``.
SEED_RANGE = (-(2**63), 2**64 - 1)


def _shown(value: Any) -> str:
    """``repr`` of ``value`` with its type, shortened for long values."""
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


def _unwrap(value: Any) -> Any:
    """The Python scalar inside a 0-d NumPy array or torch tensor; anything else unchanged."""
    if getattr(value, "ndim", None) == 0 and not isinstance(value, (numbers.Number, np.generic)):
        item = getattr(value, "item", None)
        if callable(item):
            return item()
    return value


def _range_text(low: Optional[float], high: Optional[float], low_inclusive: bool, high_inclusive: bool) -> str:
    if low is not None and high is not None:
        return f"in {'[' if low_inclusive else '('}{low:g}, {high:g}{']' if high_inclusive else ')'}"
    if low is not None:
        return f"{'>=' if low_inclusive else '>'} {low:g}"
    if high is not None:
        return f"{'<=' if high_inclusive else '<'} {high:g}"
    return ""


@overload
def check_real(
    value: Any,
    name: str,
    *,
    low: Optional[float] = ...,
    high: Optional[float] = ...,
    low_inclusive: bool = ...,
    high_inclusive: bool = ...,
    allow_inf: bool = ...,
    optional: Literal[False] = ...,
) -> float: ...
@overload
def check_real(
    value: Any,
    name: str,
    *,
    low: Optional[float] = ...,
    high: Optional[float] = ...,
    low_inclusive: bool = ...,
    high_inclusive: bool = ...,
    allow_inf: bool = ...,
    optional: bool,
) -> Optional[float]: ...
def check_real(
    value: Any,
    name: str,
    *,
    low: Optional[float] = None,
    high: Optional[float] = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    allow_inf: bool = False,
    optional: bool = False,
) -> Optional[float]:
    """``value`` as a float if it is a real number in the given range.

    Parameters
    ----------
    value : Any
        The argument; any :class:`numbers.Real` except booleans (Python or NumPy).
    name : str
        The argument's name, for the message.
    low, high : float, optional
        Bounds of the allowed range (None: unbounded on that side).
    low_inclusive, high_inclusive : bool
        Whether the bounds themselves are allowed.
    allow_inf : bool
        Accept ``+-inf`` (within the bounds); NaN is never accepted.
    optional : bool
        Accept None (returned as None).

    Returns
    -------
    float or None

    Raises
    ------
    ArgumentTypeError
        ``value`` is not a real number (or is a boolean).
    ValueError
        ``value`` is NaN, infinite (unless ``allow_inf``) or outside the range.
    """
    if value is None and optional:
        return None
    bounds = _range_text(low, high, low_inclusive, high_inclusive)
    expected = ("a finite real number" if not allow_inf else "a real number") + (f" {bounds}" if bounds else "")
    if optional:
        expected = f"None or {expected}"
    given, value = value, _unwrap(value)
    if _is_bool(value) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"`{name}` must be {expected}, got {_shown(given)}.")
    number = float(value)
    out_of_range = (
        math.isnan(number)
        or (not allow_inf and math.isinf(number))
        or (low is not None and (number < low or (number == low and not low_inclusive)))
        or (high is not None and (number > high or (number == high and not high_inclusive)))
    )
    if out_of_range:
        raise ValueError(f"`{name}` must be {expected}, got {_shown(given)}.")
    return number


@overload
def check_positive(value: Any, name: str, *, optional: Literal[False] = ...) -> float: ...
@overload
def check_positive(value: Any, name: str, *, optional: bool) -> Optional[float]: ...
def check_positive(value: Any, name: str, *, optional: bool = False) -> Optional[float]:
    """``value`` as a float if it is a finite real number ``> 0`` (see :func:`check_real`)."""
    return check_real(value, name, low=0.0, low_inclusive=False, optional=optional)


@overload
def check_non_negative(value: Any, name: str, *, optional: Literal[False] = ...) -> float: ...
@overload
def check_non_negative(value: Any, name: str, *, optional: bool) -> Optional[float]: ...
def check_non_negative(value: Any, name: str, *, optional: bool = False) -> Optional[float]:
    """``value`` as a float if it is a finite real number ``>= 0`` (see :func:`check_real`)."""
    return check_real(value, name, low=0.0, optional=optional)


@overload
def check_integer(
    value: Any,
    name: str,
    *,
    low: Optional[int] = ...,
    high: Optional[int] = ...,
    optional: Literal[False] = ...,
    what: str = ...,
) -> int: ...
@overload
def check_integer(
    value: Any, name: str, *, low: Optional[int] = ..., high: Optional[int] = ..., optional: bool, what: str = ...
) -> Optional[int]: ...
def check_integer(
    value: Any,
    name: str,
    *,
    low: Optional[int] = None,
    high: Optional[int] = None,
    optional: bool = False,
    what: str = "an integer",
) -> Optional[int]:
    """``value`` as an int if it is an integer in ``low..high`` (bounds included).

    Parameters
    ----------
    value : Any
        Any :class:`numbers.Integral` except booleans (Python or NumPy); floats are refused
        even when whole (``1e5``): pass ``int(1e5)``.
    name : str
        The argument's name, for the message.
    low, high : int, optional
        Smallest and largest allowed value (None: unbounded on that side).
    optional : bool
        Accept None (returned as None).
    what : str
        What the value is, for the message (e.g. ``"a number of bytes"``).

    Returns
    -------
    int or None

    Raises
    ------
    ArgumentTypeError
        ``value`` is not an integer (or is a boolean).
    ValueError
        ``value`` is outside ``low..high``.
    """
    if value is None and optional:
        return None
    if low is not None and high is not None:
        bounds = f"in {low}..{high}"
    elif low is not None:
        bounds = f">= {low}"
    elif high is not None:
        bounds = f"<= {high}"
    else:
        bounds = ""
    expected = what + (f" {bounds}" if bounds else "")
    if optional:
        expected = f"None or {expected}"
    given, value = value, _unwrap(value)
    if _is_bool(value) or not isinstance(value, numbers.Integral):
        whole = (
            isinstance(value, numbers.Real)
            and not _is_bool(value)
            and math.isfinite(value)
            and float(value).is_integer()
        )
        hint = f" (pass int({value!r}))" if whole else ""
        raise ArgumentTypeError(f"`{name}` must be {expected}, got {_shown(given)}{hint}.")
    number = int(value)
    if (low is not None and number < low) or (high is not None and number > high):
        raise ValueError(f"`{name}` must be {expected}, got {_shown(given)}.")
    return number


@overload
def check_flag(value: Any, name: str, *, optional: Literal[False] = ...) -> bool: ...
@overload
def check_flag(value: Any, name: str, *, optional: bool) -> Optional[bool]: ...
def check_flag(value: Any, name: str, *, optional: bool = False) -> Optional[bool]:
    """``value`` as a bool if it is ``True`` or ``False`` (Python or NumPy booleans only).

    Raises
    ------
    ArgumentTypeError
        Anything else (``0``/``1``, strings such as ``"False"``, ...), naming the argument.
    """
    if value is None and optional:
        return None
    given, value = value, _unwrap(value)
    if not _is_bool(value):
        expected = "None, True or False" if optional else "True or False"
        raise ArgumentTypeError(f"`{name}` must be {expected}, got {_shown(given)}.")
    return bool(value)


def check_seed(value: Any, name: str = "seed", *, low: int = SEED_RANGE[0], high: int = SEED_RANGE[1]) -> int:
    """``value`` as an int if it is an integer seed in ``low..high`` (default: any seed torch accepts)."""
    return check_integer(value, name, low=low, high=high)
