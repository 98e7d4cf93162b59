"""Command line: ``python -m captum_dualxda demo [--out DIR] ...`` (also installed as ``dualxda``).

The summary table goes to stdout, progress bars to stderr; ``--no-progress`` turns them off.
Exit codes: 0 success, 2 invalid arguments (including an ``--out`` that is not a writable
directory or holds files the demo did not write), checked before any training.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from typing import Optional, Sequence

__all__ = ["main", "build_parser"]


def _integer(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with its ``demo`` subcommand."""
    from .demo import DEFAULT_C, DEFAULT_EPOCHS

    parser = argparse.ArgumentParser(
        prog="python -m captum_dualxda",
        description="DualXDA: sparse, efficient and explainable training-data attribution (Captum + Zennit).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    demo = sub.add_parser(
        "demo",
        help="train a CNN on scikit-learn's digits with flipped labels, explain it, find the flips",
        description=(
            "Train a small CNN on scikit-learn's 8x8 digits (no download) with a fraction of the "
            "training labels flipped, fit DualDA on its penultimate features, explain test predictions "
            "with proponents/opponents and XDA heatmaps, and rank training samples by self-influence "
            "to find the flipped labels. Prints a summary table; writes PNG figures and "
            "self_influence.csv into --out."
        ),
    )
    demo.add_argument(
        "--out",
        default="demo_out",
        metavar="DIR",
        help="directory for figures and self_influence.csv (created; default: demo_out); must be "
        "empty or hold only an earlier demo run's outputs, which are replaced",
    )
    demo.add_argument(
        "--flip-rate",
        type=float,
        default=0.1,
        metavar="R",
        help="fraction of training labels flipped, in [0, 1) (default: 0.1)",
    )
    demo.add_argument(
        "--C",
        type=float,
        default=DEFAULT_C,
        dest="C",
        help=f"SVM regularisation of DualDA, > 0 (default: {DEFAULT_C:g})",
    )
    demo.add_argument(
        "--k",
        type=_integer,
        default=4,
        help="proponents and opponents shown per explained test sample, >= 1 (default: 4)",
    )
    demo.add_argument("--seed", type=_integer, default=0, help="random seed, in 0..2**63-1 (default: 0)")
    demo.add_argument(
        "--n-explain",
        type=_integer,
        default=3,
        metavar="N",
        help="test samples explained with an XDA figure, >= 0 (default: 3)",
    )
    demo.add_argument(
        "--epochs",
        type=_integer,
        default=DEFAULT_EPOCHS,
        help=f"training epochs of the CNN, >= 1 (default: {DEFAULT_EPOCHS})",
    )
    demo.add_argument(
        "--n-train",
        type=_integer,
        default=None,
        metavar="N",
        help="use only the first N training samples (default: all 1348)",
    )
    demo.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    demo.set_defaults(parser=demo)  # errors then show the demo's own usage line
    return parser


def _out_problem(out: str) -> Optional[str]:
    """Why ``out`` cannot be the output directory, or None if it can (it is created if missing)."""
    from ._core.cache import check_writable_dir

    path = os.path.abspath(out)
    if os.path.exists(path) and not os.path.isdir(path):
        return f"{path!r} exists and is not a directory"
    try:
        check_writable_dir(path, "out")
    except ValueError as error:
        cause = error.__cause__
        if isinstance(cause, OSError) and cause.strerror:
            return f"{path!r} cannot be created ({cause.strerror})"
        return f"{path!r} is not a writable directory"
    return None


def _validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Check every setting before any training; ``parser.error`` exits with code 2.

    The checks are :func:`~captum_dualxda.demo.check_demo_arguments` (the same as
    :func:`~captum_dualxda.demo.run_demo`'s), reported under the option's name.
    """
    from .demo import check_demo_arguments, check_out_dir

    try:
        check_demo_arguments(args.flip_rate, args.C, args.k, args.n_explain, args.epochs, args.n_train, args.seed)
    except ValueError as error:
        name = re.search(r"`(\w+)`", str(error))
        option = "--" + name.group(1).replace("_", "-") if name else "demo"
        parser.error(f"argument {option}: {error}")
    problem = _out_problem(args.out)
    if problem is not None:
        parser.error(f"argument --out: {problem}; pass a writable directory (it is created if missing)")
    try:
        check_out_dir(args.out, "out")
    except ValueError as error:
        parser.error(f"argument --out: {error}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; return the exit code (0 ok, 2 bad arguments).

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    int
    """
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
        _validate(getattr(args, "parser", parser), args)
    except SystemExit as exit_:  # argparse errors (2) and --help (0)
        return int(exit_.code) if isinstance(exit_.code, int) else 2

    if args.command == "demo":
        from .demo import run_demo

        start = time.perf_counter()
        result = run_demo(
            args.out,
            flip_rate=args.flip_rate,
            C=args.C,
            k=args.k,
            seed=args.seed,
            n_explain=args.n_explain,
            epochs=args.epochs,
            n_train=args.n_train,
            show_progress=not args.no_progress,
        )
        print(result.summary())
        print(f"wrote {len(result.files)} files to {os.path.abspath(args.out)}:")
        for path in result.files.values():
            print(f"  {os.path.basename(path)}")
        print(f"total time {time.perf_counter() - start:.1f} s")
        sys.stdout.flush()
        return 0
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover - argparse rejects it first
    return 2


if __name__ == "__main__":
    sys.exit(main())
