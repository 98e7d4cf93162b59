"""Temporary: ``solver/bdcd.py`` still imports from here until the solver step of the restructuring."""

from ._utils.validation import check_flag, check_integer

__all__ = ["check_flag", "check_integer"]
