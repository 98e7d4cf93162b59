"""Deprecation helpers: old call forms keep working for one release, with a DeprecationWarning."""
from __future__ import annotations

import functools
import inspect
import warnings
from typing import Any, Callable, Dict, TypeVar

__all__ = ["positional_deprecated", "renamed_argument"]

F = TypeVar("F", bound=Callable[..., Any])


def positional_deprecated(function: F) -> F:
    """Accept, with a DeprecationWarning, positional values for ``function``'s keyword-only parameters.

    The keyword-only parameters are taken in their declared order, the order in which they were
    positional before. ``inspect.signature`` of the result is ``function``'s own.
    """
    signature = inspect.signature(function)
    positional = [p.name for p in signature.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    keyword_only = [p.name for p in signature.parameters.values() if p.kind == p.KEYWORD_ONLY]

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if len(args) > len(positional):
            extra = args[len(positional):]
            if len(extra) > len(keyword_only):
                raise TypeError(f"{function.__qualname__}() takes at most {len(positional) + len(keyword_only)} arguments.")
            names = keyword_only[: len(extra)]
            warnings.warn(
                f"Passing {', '.join(names)} of {function.__qualname__.replace('.__init__', '')} by position is "
                "deprecated and will stop working in the next release; pass them by keyword.",
                DeprecationWarning,
                stacklevel=2,
            )
            for name, value in zip(names, extra):
                if name in kwargs:
                    raise TypeError(f"{function.__qualname__}() got multiple values for argument {name!r}.")
                kwargs[name] = value
            args = args[: len(positional)]
        return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def renamed_argument(kwargs: Dict[str, Any], old: str, new: str, value: Any, owner: str) -> Any:
    """``value``, or the value passed under the old name ``old`` (with a DeprecationWarning).

    Parameters
    ----------
    kwargs : dict
        The extra keyword arguments of the call; ``old`` is removed from it.
    old, new : str
        The former and the current parameter name.
    value : Any
        What was passed under ``new`` (None when nothing was).
    owner : str
        The function's name, for the messages.

    Raises
    ------
    TypeError
        Both names were given, or another unexpected keyword remains.
    """
    if old in kwargs:
        if value is not None:
            raise TypeError(f"{owner}() got both `{new}` and its former name `{old}`.")
        warnings.warn(f"`{old}` of {owner} is now called `{new}`; the old name will stop working in the next release.",
                      DeprecationWarning, stacklevel=3)
        value = kwargs.pop(old)
    if kwargs:
        raise TypeError(f"{owner}() got an unexpected keyword argument {next(iter(kwargs))!r}.")
    return value
