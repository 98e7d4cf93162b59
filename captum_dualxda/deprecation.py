"""Deprecation helpers: old call forms keep working for one release, with a DeprecationWarning."""
from __future__ import annotations

import functools
import inspect
import warnings
from typing import Any, Callable, TypeVar

__all__ = ["positional_deprecated", "renamed_arguments"]

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


def renamed_arguments(**renames: str) -> Callable[[F], F]:
    """Accept former keyword names (``old="new"``) for one release, with a DeprecationWarning.

    ``inspect.signature`` of the result is the function's own (new names only).
    """

    def decorate(function: F) -> F:
        owner = function.__qualname__.replace(".__init__", "")

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in renames.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{owner}() got both `{new}` and its former name `{old}`.")
                    warnings.warn(
                        f"`{old}` of {owner} is now called `{new}`; the old name will stop working in the next release.",
                        DeprecationWarning,
                        stacklevel=2,
                    )
                    kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
