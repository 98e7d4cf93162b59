"""The block solver (``backend="bdcd"``) against the sequential one: iterations and time versus C, n, K.

Run from the repository root::

    python benchmarks/bdcd.py                                   # CPU, the default grid
    python benchmarks/bdcd.py --device cuda --out bdcd_gpu.md   # the same grid on a GPU
    python benchmarks/bdcd.py --sizes 20000x128x10 --Cs 1e-3,0.1 --methods bdcd,sequential

Another script can import :func:`run` and :func:`markdown`::

    from bdcd import run, markdown     # with benchmarks/ on sys.path
    rows = run("cuda", [(20_000, 128, 10)], [1e-3, 0.1])
    print(markdown(rows))

Methods (``--methods``, comma separated):

``bdcd``
    ``fit_crammer_singer(..., backend="bdcd")`` on ``device``: the accelerated block solver
    (momentum with restarts, docs/solver.md 4b) with its default block size (256 rows on CPU,
    4096 on accelerators).
``bdcd-plain``
    The same without acceleration (``acceleration=False``): the block solver as it was before.
``bdcd-b1024``, ``bdcd-plain-b1024``, ... (any ``-b<rows>`` suffix)
    The same with an explicit block size.
``sequential``
    ``backend="sequential"`` (numba, shrinking) on the CPU, whatever ``device`` is: the
    alternative that ``backend="auto"`` weighs against the block solver on an accelerator. The
    features are copied to the CPU before the clock starts.
``auto``
    ``backend="auto"`` with the features on ``device``; the row records the backend it chose.

Every fit solves to the same certified stopping rule (largest natural residual ``<= tol``,
default 1e-4, checked exactly over all samples) from ``alpha = 0``, seed 0. A fit that reaches
``--max-iter`` passes is reported with "no" under "converged" (its iterations are a lower
bound). Times are wall-clock seconds of the whole ``fit_crammer_singer`` call (validation, solve,
dust clean-up and the final certificate), synchronised on CUDA, after a warm-up fit that loads
numba's cached kernels and initialises CUDA. Data: ``benchmarks/solver.py``'s
``synthetic_features(n, d, K, 0.5, seed=0)`` (non-negative, class-clustered, 5 % label noise,
mean squared norm 100), generated once per shape on the CPU in float32.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import sys
import time
import warnings
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from solver import synthetic_features  # noqa: E402  (benchmarks/solver.py)

from captum_dualxda.solver import fit_crammer_singer  # noqa: E402
from captum_dualxda.solver.fit import ConvergenceWarning, available_backends, choose_backend  # noqa: E402

DEFAULT_SIZES: Tuple[Tuple[int, int, int], ...] = ((20_000, 128, 10),)
DEFAULT_CS: Tuple[float, ...] = (1e-3, 1e-2, 1e-1)
DEFAULT_METHODS: Tuple[str, ...] = ("bdcd", "bdcd-plain", "sequential", "auto")

Row = Dict[str, object]


def _parse_method(method: str) -> Tuple[str, Dict[str, object]]:
    """``(backend, options)`` for a method name of the module docstring."""
    match = re.fullmatch(r"(bdcd(?:-plain)?)(?:-b(\d+))?|sequential|auto", method)
    if match is None:
        raise ValueError(
            f"Unknown method {method!r}: expected 'bdcd', 'bdcd-plain', either with '-b<rows>', 'sequential' or 'auto'."
        )
    if method in ("sequential", "auto"):
        return method, {}
    options: Dict[str, object] = {"acceleration": match.group(1) == "bdcd"}
    if match.group(2):
        options["block_size"] = int(match.group(2))
    return "bdcd", options


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _warm_up(device: torch.device) -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 8, generator=g), torch.arange(64) % 3
    for backend in available_backends():
        fit_crammer_singer(x, y, backend=backend)
    if device.type != "cpu":
        fit_crammer_singer(x.to(device), y.to(device), backend="bdcd")
        _sync(device)


def fit_row(
    features: torch.Tensor,
    labels: torch.Tensor,
    C: float,
    method: str,
    device: Union[str, torch.device],
    *,
    tol: float = 1e-4,
    max_iter: int = 100_000,
) -> Row:
    """Time one fit of ``method`` (module docstring) and return its table row.

    Parameters
    ----------
    features : torch.Tensor
        ``(n, d)`` float32 CPU features.
    labels : torch.Tensor
        ``(n,)`` int64 CPU labels.
    C : float
    method : str
    device : str or torch.device
        Where ``bdcd`` and ``auto`` run (``sequential`` always runs on the CPU).
    tol : float
    max_iter : int

    Returns
    -------
    dict
        ``method``, ``backend`` (the one that ran), ``C``, ``n_iter``, ``seconds``,
        ``converged``, ``gap`` (relative duality gap), ``residual``, ``restarts``,
        ``block_size``.
    """
    device = torch.device(device)
    backend, options = _parse_method(method)
    where = torch.device("cpu") if backend == "sequential" else device
    x, y = features.to(where), labels.to(where)
    _sync(where)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = fit_crammer_singer(x, y, C=C, tol=tol, max_iter=max_iter, backend=backend, **options)
    _sync(where)
    seconds = time.perf_counter() - start
    return dict(
        method=method,
        backend=result.backend,
        C=float(C),
        n_iter=int(result.n_iter),
        seconds=seconds,
        converged=bool(result.converged),
        gap=float(result.gap),
        residual=float(result.residual),
        restarts=result.stats.get("restarts"),
        block_size=result.stats.get("block_size"),
    )


def run(
    device: Union[str, torch.device],
    sizes: Sequence[Tuple[int, int, int]] = DEFAULT_SIZES,
    Cs: Sequence[float] = DEFAULT_CS,
    methods: Sequence[str] = DEFAULT_METHODS,
    *,
    tol: float = 1e-4,
    max_iter: int = 100_000,
    echo: bool = False,
) -> List[Row]:
    """Fit every method on every shape and ``C``; one row per fit.

    Parameters
    ----------
    device : str or torch.device
        ``"cpu"`` or an accelerator (``"cuda"``): where the block solver runs.
    sizes : sequence of (int, int, int)
        ``(n, d, K)`` shapes of the synthetic features.
    Cs : sequence of float
    methods : sequence of str
        Names from the module docstring.
    tol : float
        Stopping tolerance of every fit.
    max_iter : int
        Pass cap of every fit (capped fits are reported unconverged).
    echo : bool
        Print each row to stderr as it is measured.

    Returns
    -------
    list of dict
        :func:`fit_row`'s rows with ``n``, ``d``, ``K``, ``device`` and ``auto_choice`` (what
        :func:`~captum_dualxda.solver.fit.choose_backend` picks for the problem on ``device``)
        added.
    """
    device = torch.device(device)
    for method in methods:
        _parse_method(method)  # fail before any work
    _warm_up(device)
    rows: List[Row] = []
    for n, d, k in sizes:
        x_np, y_np = synthetic_features(int(n), int(d), int(k), 0.5, seed=0)
        x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
        squared_norm = float((x.double() ** 2).sum(1).mean())
        for C in Cs:
            choice = choose_backend(device, int(n), int(d), int(k), float(C), squared_norm, tuple(available_backends()))
            for method in methods:
                row = fit_row(x, y, float(C), method, device, tol=tol, max_iter=max_iter)
                row.update(n=int(n), d=int(d), K=int(k), device=str(device), auto_choice=choice)
                rows.append(row)
                if echo:
                    print(_format(row), file=sys.stderr, flush=True)
    return rows


HEADER = (
    "| n x d x K | C | method | backend | converged | iterations | seconds | s / iteration "
    "| rel. gap | restarts | block |"
)


def _format(row: Row) -> str:
    restarts = "" if row.get("restarts") is None else str(row["restarts"])
    block = "" if row.get("block_size") is None else str(row["block_size"])
    where = "CPU" if row["backend"] == "sequential" else str(row["device"])
    return (
        f"| {row['n']:,} x {row['d']} x {row['K']} | {row['C']:g} | {row['method']} | {row['backend']} ({where}) "
        f"| {'yes' if row['converged'] else 'no'} | {row['n_iter']:,} | {row['seconds']:.2f} "
        f"| {row['seconds'] / max(1, int(row['n_iter'])) * 1e3:.2f} ms | {row['gap']:.1e} | {restarts} | {block} |"
    )


def environment() -> str:
    """One line: date, machine, load, torch and device (for the table's caption)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (
        f"{datetime.datetime.now():%Y-%m-%d %H:%M}, {platform.machine()}, {os.cpu_count()} CPUs{gpu}, "
        f"1-min load average {load:.1f}, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )


def markdown(rows: Sequence[Row], caption: Optional[str] = None) -> str:
    """The rows as a markdown table, with ``caption`` (default: :func:`environment`) above it.

    Besides each fit's numbers, the last column of the summary below the table gives, per shape
    and ``C``, the ratio of the plain block solver's iterations to the accelerated one's
    (when both ran with the same block size).
    """
    lines = [caption if caption is not None else environment(), "", HEADER, "|" + "---|" * 11]
    lines += [_format(row) for row in rows]
    ratios = []
    for row in rows:
        if row["method"].startswith("bdcd-plain"):
            accelerated = row["method"].replace("bdcd-plain", "bdcd")
            for other in rows:
                if (
                    other["method"] == accelerated
                    and other["C"] == row["C"]
                    and (other["n"], other["d"], other["K"]) == (row["n"], row["d"], row["K"])
                ):
                    bound = "" if row["converged"] else ">= "
                    ratios.append(
                        f"{row['n']:,} x {row['d']} x {row['K']}, C = {row['C']:g}, {accelerated}: plain "
                        f"{row['n_iter']:,} / accelerated {other['n_iter']:,} = {bound}"
                        f"{int(row['n_iter']) / max(1, int(other['n_iter'])):.1f}x fewer iterations"
                    )
    choices = sorted({(r["n"], r["d"], r["K"], r["C"], r["auto_choice"]) for r in rows})
    if ratios:
        lines += ["", "Iterations saved by the acceleration:", ""] + [f"- {r}" for r in ratios]
    lines += ["", f'`backend="auto"` on {rows[0]["device"] if rows else "?"}:', ""]
    lines += [f"- {n:,} x {d} x {k}, C = {c:g}: {choice}" for n, d, k, c, choice in choices]
    return "\n".join(lines) + "\n"


def _parse_sizes(text: str) -> List[Tuple[int, int, int]]:
    sizes = []
    for part in text.split(","):
        pieces = part.lower().strip().split("x")
        if len(pieces) != 3 or not all(p.strip().isdigit() for p in pieces):
            raise argparse.ArgumentTypeError(f"sizes must look like 20000x128x10, got {part!r}")
        sizes.append(tuple(int(p) for p in pieces))
    return sizes


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="where the block solver runs (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--sizes", type=_parse_sizes, default=list(DEFAULT_SIZES), help="n x d x K, comma separated")
    parser.add_argument("--Cs", default=",".join(f"{c:g}" for c in DEFAULT_CS), help="comma separated")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma separated (module docstring)")
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--max-iter", type=int, default=100_000, help="pass cap of every fit")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default=None, help="also write the markdown table to this file")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    Cs = [float(c) for c in args.Cs.split(",") if c.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for method in methods:
        try:
            _parse_method(method)
        except ValueError as error:
            parser.error(str(error))
    caption_start = environment()
    rows = run(args.device, args.sizes, Cs, methods, tol=args.tol, max_iter=args.max_iter, echo=True)
    caption = (
        f"Started {caption_start}; finished with 1-min load average "
        f"{os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan'):.1f}. "
        f"tol {args.tol:g}, pass cap {args.max_iter:,}."
    )
    text = markdown(rows, caption)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
