"""Helpers every layer uses: argument validation, model inputs, bounded-memory passes, arrays.

Nothing here imports from the rest of the package except :mod:`captum_dualxda.exceptions`, so
the solver, the DualDA machinery and the tools can all use it.
"""
