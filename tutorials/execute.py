"""Execute the tutorial notebooks in place, so they are committed with their outputs.

Usage (from the repository root)::

    python tutorials/execute.py                      # all notebooks, full settings
    python tutorials/execute.py tutorials/xda_heatmaps.ipynb

The test suite runs the same notebooks with ``DUALXDA_TUTORIAL_SMALL=1`` (small settings) and
does not write them back (tests/test_tutorials.py).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import List, Optional

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def execute(path: Path, kernel_name: str = "python3", timeout: int = 900) -> float:
    """Run every cell of ``path`` in a fresh kernel and write the notebook back; return seconds."""
    notebook = nbformat.read(str(path), as_version=4)
    start = time.perf_counter()
    NotebookClient(
        notebook, kernel_name=kernel_name, timeout=timeout, resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    elapsed = time.perf_counter() - start
    for cell in notebook.cells:  # timestamps only make diffs noisy
        cell.metadata.pop("execution", None)
    nbformat.write(notebook, str(path))
    return elapsed


def main(argv: Optional[List[str]] = None) -> int:
    paths = [Path(p) for p in (argv if argv is not None else sys.argv[1:])] or sorted(HERE.glob("*.ipynb"))
    if os.environ.get("DUALXDA_TUTORIAL_SMALL") == "1":
        print("DUALXDA_TUTORIAL_SMALL=1 is set: refusing to commit small-settings outputs.", file=sys.stderr)
        return 2
    for path in paths:
        print(f"{path}: executed in {execute(path):.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
