"""DualDA on one GPU, in one command: the block solver against the CPU solvers, end to end.

Run from the repository root on a machine with a CUDA GPU::

    python benchmarks/gpu.py --out gpu.md          # about 4-5 minutes on one GPU
    python benchmarks/gpu.py --tiny --device cpu   # seconds: the same code at toy sizes (tests)

Everything is synthetic, so nothing is downloaded. Sections (``--sections``, comma separated):

``solver``
    Crammer-Singer fits on class-clustered synthetic features like a CNN's penultimate layer
    (``benchmarks/solver.py``'s ``synthetic_features``: non-negative, mean squared norm 100,
    5 % label noise) of shape ``n = 200,000 x d = 512, K = 10`` and the shape where the block
    solver needed the most iterations before (``20,000 x 128 x 10``), for
    ``C = 1e-5 .. 1``: our block solver (``backend="bdcd"``) on the GPU, the backend that
    ``backend="auto"`` picks for the GPU problem, and, in separate single-threaded processes
    running beside it on the host's CPU cores, our sequential solver (``"sequential"``) and
    scikit-learn's LIBLINEAR (``LinearSVC(multi_class="crammer_singer")``, the method's authors'
    solver). CPU fits that do not finish within ``--cpu-budget`` seconds are reported as
    ``> budget``; GPU fits get an iteration cap derived from the time per iteration of the
    first fit so that one fit takes at most ``--fit-budget`` seconds (reported unconverged).
``imagenet``
    The block solver with row-sparse dual variables at ImageNet shape,
    ``1,281,167 x 2048 x 1000`` synthetic features generated on the GPU (10.5 GB of float32).
``e2e``
    ``DualDA`` end to end on the GPU: a ResNet-18 on ``50,000`` synthetic 32x32 images
    (CIFAR size) and a ResNet-50 on ``10,000`` synthetic 224x224 images, both randomly
    initialised, whose last layer is set so that the network's predictions are the labels
    (up to 5 % flipped ones), like a trained network. Timed: one plain forward pass over the
    training set (the floor), the constructor (extraction + solve at the default ``C``), then
    2,000 test explanations as top-10 proponents and as the dense score matrix; then the solve
    alone on the extracted features for ``C = 1e-5 .. 1``.

Every row records the peak GPU memory of its step (``torch.cuda.max_memory_allocated``).
Times are wall-clock seconds with ``torch.cuda.synchronize()`` before the clock stops. The
markdown table goes to stdout and, with ``--out``, to a file, rewritten after every row so a
run stopped early still leaves its rows.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from solver import synthetic_features  # noqa: E402  (benchmarks/solver.py)

CS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
DEADLINE = [float("inf")]
"""``time.perf_counter()`` after which no new measurement starts (``--deadline``)."""


def past_deadline() -> bool:
    return time.perf_counter() > DEADLINE[0]


IMAGENET_CS = (1e-5, 1e-3)
TOL = 1e-4


@dataclass
class Sizes:
    """Problem sizes of one run (the full run's, or ``--tiny``'s for tests)."""

    solver_shapes: Tuple[Tuple[int, int, int], ...] = ((200_000, 512, 10), (20_000, 128, 10))
    imagenet: Tuple[int, int, int] = (1_281_167, 2048, 1000)
    cifar: Tuple[int, int] = (50_000, 32)  # images, pixels per side (ResNet-18)
    resnet50: Tuple[int, int] = (10_000, 224)  # images, pixels per side (ResNet-50)
    n_test: int = 2_000
    batch_size: int = 500


TINY = Sizes(
    solver_shapes=((600, 16, 4),),
    imagenet=(800, 16, 20),
    cifar=(64, 32),
    resnet50=(16, 32),
    n_test=8,
    batch_size=32,
)


@dataclass
class Row:
    """One measurement: a table row."""

    section: str
    case: str
    method: str
    C: Optional[float] = None
    seconds: Optional[float] = None
    n_iter: Optional[int] = None
    gap: Optional[float] = None
    converged: Optional[bool] = None
    peak_gpu_gb: Optional[float] = None
    note: str = ""


@dataclass
class Report:
    """The rows so far, written as markdown after every new row."""

    out: Optional[str]
    header: str
    rows: List[Row] = field(default_factory=list)

    def add(self, row: Row, echo: bool = True) -> None:
        self.rows.append(row)
        if echo:
            print(format_row(row), flush=True)
        if self.out is not None:
            with open(self.out + ".tmp", "w") as f:
                f.write(self.markdown())
            os.replace(self.out + ".tmp", self.out)

    def markdown(self) -> str:
        return self.header + "\n\n" + format_table(self.rows) + "\n"


COLUMNS = ("section", "case", "method", "C", "seconds", "passes", "rel. gap", "converged", "peak GPU GB", "note")


def _fmt(value: object, kind: str = "") -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if kind == "C":
        return f"{value:g}"
    if kind == "s":
        return f"{value:.3g}" if value < 100 else f"{value:.0f}"
    if kind == "gap":
        return f"{value:.1e}"
    if kind == "gb":
        return f"{value:.2f}"
    return str(value)


def format_row(row: Row) -> str:
    cells = (
        row.section,
        row.case,
        row.method,
        _fmt(row.C, "C"),
        _fmt(row.seconds, "s"),
        _fmt(row.n_iter),
        _fmt(row.gap, "gap"),
        _fmt(row.converged),
        _fmt(row.peak_gpu_gb, "gb"),
        row.note,
    )
    return "| " + " | ".join(cells) + " |"


def format_table(rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    return "\n".join(lines + [format_row(row) for row in rows])


# ----------------------------------------------------------------------------- timing helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def measured(device: torch.device) -> Iterator[Dict[str, float]]:
    """Wall-clock seconds and peak GPU memory (GB) of the block, synchronised."""
    result: Dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    yield result
    _sync(device)
    result["seconds"] = time.perf_counter() - start
    result["peak_gpu_gb"] = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None


# ----------------------------------------------------------------------------- CPU jobs
def cpu_job(spec: Dict[str, object]) -> Dict[str, object]:
    """One single-threaded CPU fit (run in a subprocess by :class:`CpuJobs`)."""
    x, y = synthetic_features(int(spec["n"]), int(spec["d"]), int(spec["k"]), 0.5, seed=int(spec["seed"]))
    C = float(spec["C"])
    if spec["method"] == "liblinear":
        from sklearn.svm import LinearSVC

        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            svc = LinearSVC(multi_class="crammer_singer", C=C, tol=TOL, max_iter=100_000, random_state=0).fit(x, y)
        seconds = time.perf_counter() - start
        from captum_dualxda.solver import make_problem, primal_objective

        problem = make_problem(torch.from_numpy(x), torch.from_numpy(y), C, True, 1.0)
        primal = primal_objective(problem, torch.from_numpy(svc.coef_), torch.from_numpy(svc.intercept_))
        return {"seconds": seconds, "n_iter": int(svc.n_iter_), "primal": float(primal)}
    from captum_dualxda.solver import fit_crammer_singer

    fit_crammer_singer(x[:200], y[:200], C=C, backend="sequential")  # load the compiled solver first
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fit_crammer_singer(x, y, C=C, tol=TOL, backend="sequential")
    return {
        "seconds": time.perf_counter() - start,
        "n_iter": result.n_iter,
        "gap": result.gap,
        "converged": result.converged,
        "primal": result.primal,
    }


class CpuJobs:
    """Single-threaded CPU fits in subprocesses, ``max_parallel`` at a time, each with a deadline.

    Each finished (or killed) job becomes a row of ``report`` as soon as :meth:`poll` sees it, so
    a run stopped early keeps the CPU results it has.
    """

    def __init__(self, report: Report, specs: List[Dict[str, object]], max_parallel: int) -> None:
        self.report = report
        self.pending = list(specs)
        self.running: List[Tuple[Dict[str, object], subprocess.Popen, float]] = []
        self.max_parallel = max(1, max_parallel)
        self.poll()

    def _add(self, spec: Dict[str, object], result: Optional[Dict[str, object]], note: str) -> None:
        case = f"{spec['n']:,} x {spec['d']} x {spec['k']}"
        method = f"{spec['method']} (CPU, 1 core)"
        if result is None:
            self.report.add(Row("solver", case, method, float(spec["C"]), note=note))
            return
        self.report.add(
            Row(
                "solver",
                case,
                method,
                float(spec["C"]),
                result["seconds"],
                result.get("n_iter"),
                result.get("gap"),
                result.get("converged"),
                note=f"primal {result['primal']:.6g}",
            )
        )

    def poll(self) -> None:
        still = []
        for spec, proc, started in self.running:
            if proc.poll() is not None:
                out, err = proc.communicate()
                if proc.returncode == 0:
                    self._add(spec, json.loads(out.strip().splitlines()[-1]), "")
                else:
                    last = err.strip().splitlines()[-1][:80] if err.strip() else f"exit code {proc.returncode}"
                    self._add(spec, None, "error: " + last)
            elif time.perf_counter() - started > float(spec["budget"]):
                proc.kill()
                proc.communicate()
                self._add(spec, None, f"> {float(spec['budget']):.0f} s budget")
            else:
                still.append((spec, proc, started))
        self.running = still
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
        while self.pending and len(self.running) < self.max_parallel:
            spec = self.pending.pop(0)
            proc = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--cpu-job", json.dumps(spec)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            self.running.append((spec, proc, time.perf_counter()))

    def wait(self) -> None:
        while self.pending or self.running:
            if past_deadline():
                for spec in self.pending:
                    self._add(spec, None, "skipped: --deadline")
                for spec, proc, _ in self.running:
                    proc.kill()
                    proc.communicate()
                    self._add(spec, None, "stopped: --deadline")
                self.pending, self.running = [], []
                return
            self.poll()
            time.sleep(0.2)


# ----------------------------------------------------------------------------- solver sections
def synthetic_features_torch(
    n: int, d: int, k: int, seed: int, device: torch.device, spread: float = 0.5, latent: int = 64
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``synthetic_features``' recipe generated on ``device`` in row chunks (float32, labels int64)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    means = torch.randn(k, latent, generator=generator, device=device) * spread
    mixing = torch.randn(latent, d, generator=generator, device=device) / latent**0.5
    labels = torch.randint(0, k, (n,), generator=generator, device=device)
    x = torch.empty(n, d, device=device)
    for rows in torch.arange(n, device=device).split(65536):
        z = means[labels[rows]] + torch.randn(len(rows), latent, generator=generator, device=device)
        x[rows] = torch.relu(z @ mixing + 0.5)
    x *= (100.0 / x.square().sum(1).mean()).sqrt()
    noisy = torch.rand(n, generator=generator, device=device) < 0.05
    labels[noisy] = torch.randint(0, k, (int(noisy.sum()),), generator=generator, device=device)
    return x, labels


def _seconds_per_pass(x: torch.Tensor, y: torch.Tensor, device: torch.device, passes: int = 3, **options) -> float:
    """Seconds per pass of a short fit at a large ``C`` (no pass converges there), for :func:`_cap`."""
    from captum_dualxda.solver import fit_crammer_singer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit_crammer_singer(x, y, C=1.0, tol=1e-12, max_iter=1, device=device, **options)  # warm-up
        with measured(device) as m:
            result = fit_crammer_singer(x, y, C=1.0, tol=1e-12, max_iter=passes, device=device, **options)
    return m["seconds"] / max(result.n_iter, 1)


def _cap(budget: float, seconds_per_pass: float, floor: int = 5) -> int:
    """Pass cap so that a fit takes about ``budget`` seconds at most."""
    return int(max(floor, min(100_000, budget / max(seconds_per_pass, 1e-9))))


def _gpu_fit(
    report: Report,
    section: str,
    case: str,
    method: str,
    x: torch.Tensor,
    y: torch.Tensor,
    C: float,
    device: torch.device,
    max_iter: int,
    **options,
) -> None:
    """One fit on ``device``, added to ``report`` (an error becomes a row too)."""
    from captum_dualxda.solver import fit_crammer_singer

    if past_deadline():
        report.add(Row(section, case, method, C, note="skipped: --deadline"))
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with measured(device) as m:
                result = fit_crammer_singer(x, y, C=C, tol=TOL, max_iter=max_iter, device=device, **options)
    except Exception as error:  # a failed fit is a result too; the run goes on
        report.add(Row(section, case, method, C, note=f"error: {type(error).__name__}: {str(error)[:80]}"))
        return
    note = result.backend if method == "auto" else ""
    if not result.converged:
        note = (note + "; " if note else "") + f"stopped at cap {max_iter}"
    report.add(
        Row(section, case, method, C, m["seconds"], result.n_iter, result.gap, result.converged, m["peak_gpu_gb"], note)
    )


def solver_section(
    report: Report,
    sizes: Sizes,
    device: torch.device,
    Cs: Sequence[float],
    fit_budget: float,
    jobs: CpuJobs,
    methods: Sequence[str],
) -> None:
    """GPU fits; the CPU fits of the same problems run in ``jobs`` meanwhile."""
    for n, d, k in sizes.solver_shapes:
        case = f"{n:,} x {d} x {k}"
        x_np, y_np = synthetic_features(n, d, k, 0.5, seed=0)
        x, y = torch.from_numpy(x_np).to(device), torch.from_numpy(y_np).to(device)
        seconds_per_pass = _seconds_per_pass(x, y, device, backend="bdcd")
        for C in sorted(Cs):
            cap = _cap(fit_budget, seconds_per_pass)
            for method in methods:
                _gpu_fit(report, "solver", case, method, x, y, C, device, cap, backend=method)
                jobs.poll()
        del x, y


def cpu_specs(sizes: Sizes, Cs: Sequence[float], budget: float) -> List[Dict[str, object]]:
    """The CPU fits of the solver section, largest problems first."""
    return [
        dict(n=n, d=d, k=k, seed=0, C=C, method=method, budget=budget)
        for (n, d, k) in sizes.solver_shapes
        for C in Cs
        for method in ("liblinear", "sequential")
    ]


def imagenet_section(
    report: Report, sizes: Sizes, device: torch.device, Cs: Sequence[float], fit_budget: float
) -> None:
    n, d, k = sizes.imagenet
    case = f"{n:,} x {d} x {k} (row-sparse alpha)"
    try:
        with measured(device) as m:
            x, y = synthetic_features_torch(n, d, k, 0, device)
    except Exception as error:
        report.add(Row("imagenet", case, "generate", note=f"error: {type(error).__name__}: {str(error)[:80]}"))
        return
    report.add(Row("imagenet", case, "generate features", None, m["seconds"], peak_gpu_gb=m["peak_gpu_gb"]))
    seconds_per_pass = _seconds_per_pass(x, y, device, backend="bdcd", sparse_alpha=True)
    for C in sorted(Cs):
        _gpu_fit(
            report,
            "imagenet",
            case,
            "bdcd",
            x,
            y,
            C,
            device,
            _cap(fit_budget, seconds_per_pass),
            backend="bdcd",
            sparse_alpha=True,
        )
    del x, y


# ----------------------------------------------------------------------------- end to end
def _network(name: str, n_classes: int, device: torch.device) -> torch.nn.Module:
    import torchvision

    model = getattr(torchvision.models, name)(weights=None, num_classes=n_classes)
    return model.to(device).eval()


def _images(n: int, side: int, seed: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(n, 3, side, side, generator=generator, device=device)


def _plain_forward(model: torch.nn.Module, loader) -> None:
    with torch.inference_mode():
        for inputs, _ in loader:
            model(inputs)


def _make_labels_the_predictions(
    model: torch.nn.Module, loader, n_classes: int, device: torch.device, seed: int = 0
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Set ``model.fc`` so the network predicts balanced classes.

    Returns its predictions with 5 % flipped (the labels) and the features ``phi`` (input of ``fc``).
    """
    features: List[torch.Tensor] = []
    handle = model.fc.register_forward_hook(lambda module, args, out: features.append(args[0].detach()))
    try:
        _plain_forward(model, loader)
    finally:
        handle.remove()
    phi = torch.cat(features)
    generator = torch.Generator(device=device).manual_seed(seed)
    projection = torch.randn(n_classes, phi.shape[1], generator=generator, device=device)
    centred = phi - phi.mean(0)
    projection /= (centred @ projection.T).std(0)[:, None]
    with torch.no_grad():
        model.fc.weight.copy_(projection)
        model.fc.bias.copy_(-projection @ phi.mean(0))
    labels = (centred @ projection.T).argmax(1)
    flipped = torch.rand(len(labels), generator=generator, device=device) < 0.05
    labels[flipped] = torch.randint(0, n_classes, (int(flipped.sum()),), generator=generator, device=device)
    return labels, phi


def end_to_end_case(
    report: Report,
    case: str,
    network: str,
    n: int,
    side: int,
    sizes: Sizes,
    device: torch.device,
    Cs: Sequence[float],
    fit_budget: float,
    max_iter: int,
) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from captum_dualxda import DualDA

    n_classes = 10
    model = _network(network, n_classes, device)
    images = _images(n, side, 0, device)
    loader = DataLoader(
        TensorDataset(images, torch.zeros(n, dtype=torch.long, device=device)), batch_size=sizes.batch_size
    )
    labels, features = _make_labels_the_predictions(model, loader, n_classes, device)
    train_set = TensorDataset(images, labels)
    train_loader = DataLoader(train_set, batch_size=sizes.batch_size)
    with measured(device) as m:
        _plain_forward(model, train_loader)
    forward = m["seconds"]
    report.add(Row("e2e", case, "plain forward pass (floor)", None, forward, peak_gpu_gb=m["peak_gpu_gb"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with measured(device) as m:
            dualda = DualDA(model, "fc", train_loader, max_iter=max_iter)
    stats = dualda.fit_stats
    report.add(
        Row(
            "e2e",
            case,
            "DualDA(...) fit",
            dualda.C,
            m["seconds"],
            stats.get("n_iter"),
            stats.get("gap"),
            stats.get("converged"),
            m["peak_gpu_gb"],
            f"{m['seconds'] / forward:.2f}x forward; extraction {stats['extraction_time']:.3g} s, "
            f"solve {stats['time']:.3g} s ({stats['backend']}), {stats['n_support']:,} SV",
        )
    )
    test_images = _images(sizes.n_test, side, 1, device)
    with torch.inference_mode():
        targets = torch.cat([model(chunk).argmax(1) for chunk in test_images.split(sizes.batch_size)])
    test_loader = DataLoader(TensorDataset(test_images, targets), batch_size=sizes.batch_size)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Class\(es\) .* have no training sample")  # toy sizes
        with measured(device) as m:
            dualda.influence(test_loader, k=10)
        report.add(
            Row(
                "e2e", case, f"{sizes.n_test:,} explanations (top-10)", None, m["seconds"], peak_gpu_gb=m["peak_gpu_gb"]
            )
        )
        with measured(device) as m:
            scores = dualda.influence(test_loader)
        report.add(
            Row(
                "e2e",
                case,
                f"{sizes.n_test:,} explanations (dense scores)",
                None,
                m["seconds"],
                peak_gpu_gb=m["peak_gpu_gb"],
                note=f"{tuple(scores.shape)} matrix",
            )
        )
    del scores
    del dualda, images, test_images, model, test_loader, train_loader, loader
    seconds_per_pass = _seconds_per_pass(features, labels, device, backend="auto")
    for C in sorted(Cs):
        _gpu_fit(
            report,
            "e2e",
            case,
            "solve only (auto)",
            features,
            labels,
            C,
            device,
            _cap(fit_budget, seconds_per_pass),
            backend="auto",
        )


def e2e_section(
    report: Report, sizes: Sizes, device: torch.device, Cs: Sequence[float], fit_budget: float, max_iter: int = 100_000
) -> None:
    cases = (
        (f"ResNet-18, {sizes.cifar[0]:,} images {sizes.cifar[1]}x{sizes.cifar[1]}", "resnet18", *sizes.cifar),
        (
            f"ResNet-50, {sizes.resnet50[0]:,} images {sizes.resnet50[1]}x{sizes.resnet50[1]}",
            "resnet50",
            *sizes.resnet50,
        ),
    )
    for case, network, n, side in cases:
        if past_deadline():
            report.add(Row("e2e", case, "skipped: --deadline"))
            continue
        try:
            end_to_end_case(report, case, network, n, side, sizes, device, Cs, fit_budget, max_iter)
        except Exception as error:
            report.add(Row("e2e", case, "error", note=f"{type(error).__name__}: {str(error)[:100]}"))
        if device.type == "cuda":
            torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- main
def header(device: torch.device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        memory = torch.cuda.get_device_properties(device).total_memory / 2**30
        gpu = f"{name} ({memory:.0f} GiB)"
    else:
        gpu = "no GPU (CPU run)"
    return (
        f"{datetime.datetime.now():%Y-%m-%d %H:%M}, `python benchmarks/gpu.py`, {gpu}, host "
        f"{platform.machine()} with {os.cpu_count()} CPUs, torch {torch.__version__}, Python "
        f"{platform.python_version()}; tol {TOL:g}"
    )


def main(argv: Optional[Sequence[str]] = None) -> List[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="toy sizes (for tests; seconds on a CPU)")
    parser.add_argument("--sections", default="solver,imagenet,e2e")
    parser.add_argument("--Cs", default=",".join(f"{C:g}" for C in CS))
    parser.add_argument("--fit-budget", type=float, default=6.0, help="seconds one GPU fit may take (iteration cap)")
    parser.add_argument("--cpu-budget", type=float, default=150.0, help="seconds one CPU fit may take")
    parser.add_argument("--cpu-parallel", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    parser.add_argument("--gpu-methods", default="bdcd,auto", help="backends fitted on --device in the solver section")
    parser.add_argument("--e2e-max-iter", type=int, default=100_000, help="DualDA's max_iter in the e2e section")
    parser.add_argument(
        "--deadline",
        type=float,
        default=float("inf"),
        help="seconds after which no new measurement starts (rows say skipped)",
    )
    parser.add_argument("--out", default=None, help="also write the markdown table here")
    parser.add_argument("--cpu-job", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cpu_job is not None:
        print(json.dumps(cpu_job(json.loads(args.cpu_job))))
        return []
    device = torch.device(args.device)
    sizes = TINY if args.tiny else Sizes()
    Cs = [float(C) for C in args.Cs.split(",")]
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - {"solver", "imagenet", "e2e"}
    if unknown:
        parser.error(f"--sections: unknown {sorted(unknown)}; choose from solver, imagenet, e2e")
    report = Report(args.out, header(device))
    print(report.header, flush=True)
    start = time.perf_counter()
    DEADLINE[0] = start + args.deadline
    jobs = None
    if "solver" in sections:  # CPU fits run beside every GPU section, on the host's other cores
        jobs = CpuJobs(report, cpu_specs(sizes, Cs, args.cpu_budget), args.cpu_parallel)
        solver_section(report, sizes, device, Cs, args.fit_budget, jobs, args.gpu_methods.split(","))
    if "imagenet" in sections:
        imagenet_section(report, sizes, device, IMAGENET_CS, 2.5 * args.fit_budget)
    if "e2e" in sections:
        e2e_section(report, sizes, device, Cs, args.fit_budget, args.e2e_max_iter)
    if jobs is not None:
        jobs.wait()
    print(f"\ntotal {time.perf_counter() - start:.0f} s\n", flush=True)
    print(report.markdown())
    return report.rows


if __name__ == "__main__":
    main()
