"""Peak memory of a DualDA fit versus n and d, in memory and out of core; solver time per epoch.

Each configuration runs in a fresh subprocess. A sampling thread reads ``/proc/self/status``
every 20 ms and records the peak of ``RssAnon`` (heap and tensors: what the fit really needs)
and of ``RssFile`` (pages of memory-mapped files, which the kernel can drop at any time). The
training set is read row by row from a memory-mapped .npy file (file-backed pages), so the data
itself is not anonymous memory: what RssAnon measures is the fit. glibc is told to return freed
blocks (``MALLOC_MMAP_THRESHOLD_``), so the peak is live memory, not allocator retention.

Usage::

    python benchmarks/memory.py                 # grid of n, d; both paths
    python benchmarks/memory.py --epoch-time    # seconds per pass at n=200,000, d=512, K=100
    python benchmarks/memory.py --solver-scale  # the block (GPU) solver at n=1,000,000, d=2048,
                                                # K=1000 on this CPU: peak memory, time per pass
    python benchmarks/memory.py --solver-scale --n 50000 --dense   # same, dense alpha
    python benchmarks/memory.py --solver-scale --device cuda        # the big case on a GPU
    python benchmarks/memory.py --quick         # small smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import warnings

import numpy as np

PREDICT_DOC = "4nd (features, float32) + 12nK (alpha float64 + int32 class index) + 4 n_sv d (support features)"


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as stream:
        for line in stream:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class PeakSampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.anon = self.file = 0

    def run(self) -> None:
        while not self.stop.is_set():
            self.anon = max(self.anon, _status_kb("RssAnon"))
            self.file = max(self.file, _status_kb("RssFile"))
            time.sleep(0.02)


def write_data(path: str, n: int, d: int, k: int) -> None:
    """Non-negative class-clustered float32 features in a .npy file, written in chunks."""
    rng = np.random.default_rng(0)
    means = rng.random((k, d)) * 2
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    for start in range(0, n, 20000):
        y = np.arange(start, min(n, start + 20000)) % k
        out[start : start + len(y)] = np.maximum(means[y] + rng.standard_normal((len(y), d)), 0) / np.sqrt(d)
    out.flush()


def child(n: int, d: int, k: int, out_of_core: bool, data_path: str) -> dict:
    import torch
    from torch import nn
    from torch.utils.data import Dataset

    from captum_dualxda import DualDA

    torch.set_num_threads(1)

    class OnDisk(Dataset):
        """Rows of a memory-mapped .npy file (file-backed pages, not anonymous memory)."""

        def __init__(self, path: str) -> None:
            self.x = np.load(path, mmap_mode="r")
            self.y = np.arange(n) % k

        def __len__(self) -> int:
            return n

        def __getitem__(self, j: int):
            return torch.from_numpy(np.array(self.x[j])), int(self.y[j])

    model = nn.Sequential(nn.Identity(), nn.Linear(d, k))
    data = OnDisk(data_path)
    # Warm up what is not the fit: allocator pools of one pass over the generated data, and the
    # JIT of the solver (a tiny fit), so the baseline already contains them.
    for _ in torch.utils.data.DataLoader(data, batch_size=4096):
        pass
    from captum_dualxda.solver import fit_crammer_singer

    fit_crammer_singer(torch.rand(50, d), torch.arange(50) % k, C=1e-3)
    base = _status_kb("RssAnon")
    sampler = PeakSampler()
    sampler.start()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dualda = DualDA(
            model,
            "1",
            data,
            C=1e-3,
            batch_size=4096,
            max_iter=5,
            cache_dir=cache if out_of_core else None,
            memory_budget=0 if out_of_core else None,
        )
    elapsed = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    n_sv = int(dualda.support_indices.numel())
    predicted = 4 * n * d * (0 if out_of_core else 1) + 12 * n * k + 4 * n_sv * d
    return {
        "n": n,
        "d": d,
        "K": k,
        "out_of_core": out_of_core,
        "n_sv": n_sv,
        "peak_anon_mb": (sampler.anon - base) / 1024,
        "peak_file_mb": sampler.file / 1024,
        "predicted_mb": predicted / 2**20,
        "features_mb": 4 * n * d / 2**20,
        "seconds": elapsed,
    }


def epoch_time(n: int, d: int, k: int) -> None:
    import torch

    from captum_dualxda.solver import fit_crammer_singer

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, k, (n,), generator=g)
    means = torch.rand(k, d, generator=g) * 2
    x = torch.empty(n, d)
    for start in range(0, n, 20000):
        block = y[start : start + 20000]
        x[start : start + 20000] = (means[block] + torch.randn(len(block), d, generator=g)).clamp_min(0) / d**0.5
    rows = []
    for backend, passes in [("sequential", [1, 3]), ("bdcd", [1])]:
        for max_iter in passes:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                start = time.perf_counter()
                res = fit_crammer_singer(x, y, C=1e-3, max_iter=max_iter, backend=backend)
                elapsed = time.perf_counter() - start
            rows.append((backend, max_iter, elapsed, res.time))
    print(f"Solver time per pass, n={n:,}, d={d}, K={k}, C=1e-3, float32 features, {os.cpu_count()} CPU cores")
    print("| backend | passes | wall s (incl. final certificate) | s per pass |")
    print("|---|---|---|---|")
    for backend, passes, wall, _ in rows:
        print(f"| {backend} | {passes} | {wall:.1f} | {wall / passes:.1f} |")


def solver_scale(n: int, d: int, k: int, passes: int, sparse: bool, device: str = "cpu") -> dict:
    """One ``"bdcd"`` solve of ``passes`` passes on generated features held in memory.

    Features: ``relu(z M + 0.5)``, ``z = mu_y + N(0, I_64)``, rescaled to mean ``||x||^2 = 100``
    (as ``benchmarks/solver.py``), generated in chunks straight into one float32 tensor. The peak
    is anonymous memory above the baseline taken after the features exist, i.e. what the solver
    adds to the features. On a CUDA ``device`` the features are generated on the CPU, moved
    there, and the peak is ``torch.cuda.max_memory_allocated`` above the features.
    """
    import torch

    from captum_dualxda.solver import fit_crammer_singer

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, k, (n,), generator=g)
    centres = torch.randn(k, 64, generator=g)
    mix = torch.randn(64, d, generator=g) / 8
    x = torch.empty(n, d)
    for start in range(0, n, 20000):
        block = y[start : start + 20000]
        x[start : start + 20000] = ((centres[block] + torch.randn(len(block), 64, generator=g)) @ mix + 0.5).clamp_min(
            0
        )
    scale = float(torch.cat([x[i : i + 20000].pow(2).sum(1) for i in range(0, n, 20000)]).mean()) ** 0.5 / 10
    for start in range(0, n, 20000):
        x[start : start + 20000] /= scale
    x, y = x.to(device), y.to(device)
    cuda = x.device.type == "cuda"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit_crammer_singer(
            torch.rand(50, d, device=device), torch.arange(50, device=device) % k, C=1e-3, backend="bdcd", max_iter=1
        )  # warm-up
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    base = _status_kb("RssAnon")
    sampler = PeakSampler()
    sampler.start()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        res = fit_crammer_singer(x, y, C=1e-3, backend="bdcd", max_iter=passes, sparse_alpha=sparse)
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    peak = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20 if cuda else (sampler.anon - base) / 1024
    capacity = getattr(res.alpha, "capacity", None)
    alpha_bytes = 12 * n * capacity if sparse else 8 * n * k
    return {
        "n": n,
        "d": d,
        "K": k,
        "passes": passes,
        "sparse": sparse,
        "capacity": capacity,
        "wall_s": elapsed,
        "solver_s": res.time,
        "gap": res.gap,
        "features_mb": 4 * n * d / 2**20,
        "peak_anon_mb": peak,
        "device": str(x.device),
        "alpha_mb": alpha_bytes / 2**20,
        "n_sv": int(res.support_indices.numel()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--epoch-time", action="store_true")
    parser.add_argument("--solver-scale", action="store_true")
    parser.add_argument("--n", type=int, default=1_000_000, help="--solver-scale: samples")
    parser.add_argument("--d", type=int, default=2048, help="--solver-scale: feature dimension")
    parser.add_argument("--k", type=int, default=1000, help="--solver-scale: classes")
    parser.add_argument("--passes", type=int, default=1, help="--solver-scale: solver passes")
    parser.add_argument("--dense", action="store_true", help="--solver-scale: dense alpha")
    parser.add_argument("--device", default="cpu", help="--solver-scale: where to solve (e.g. cuda)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(**json.loads(args.child))))
        return
    if args.solver_scale:
        import torch

        r = solver_scale(args.n, args.d, args.k, args.passes, not args.dense, args.device)
        where = r["device"] if r["device"] != "cpu" else f"{torch.get_num_threads()} CPU threads"
        print(
            f"# bdcd (the GPU backend) on {where}, C=1e-3, "
            f"{time.strftime('%Y-%m-%d')}; wall time includes input checks and the final exact certificate"
        )
        memory = "peak CUDA memory above features MB" if r["device"] != "cpu" else "peak anon above features MB"
        print(f"| n | d | K | alpha | passes | wall s | features MB | alpha MB | {memory} | relative gap |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        layout = f"row-sparse, {r['capacity']} slots" if r["sparse"] else "dense"
        print(
            f"| {r['n']:,} | {r['d']} | {r['K']} | {layout} | {r['passes']} | {r['wall_s']:.1f} | "
            f"{r['features_mb']:.0f} | {r['alpha_mb']:.0f} | {r['peak_anon_mb']:.0f} | {r['gap']:.3g} |"
        )
        return
    if args.epoch_time:
        epoch_time(20_000 if args.quick else 200_000, 512, 100)
        return
    grid = (
        [(20_000, 128), (40_000, 128)]
        if args.quick
        else [(50_000, 256), (100_000, 256), (100_000, 512), (200_000, 512)]
    )
    print(
        f"# DualDA fit memory, K=10, C=1e-3, 5 solver passes; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores, {time.strftime('%Y-%m-%d')}"
    )
    print(f"# prediction: {PREDICT_DOC} (out of core: without the 4nd term)")
    print("| n | d | features MB | path | peak anon MB | predicted MB | peak mapped-file MB | s |")
    print("|---|---|---|---|---|---|---|---|")
    tmp = tempfile.mkdtemp()
    for n, d in grid:
        for out_of_core in (False, True):
            data_path = os.path.join(tmp, f"data-{n}-{d}.npy")
            if not os.path.exists(data_path):
                write_data(data_path, n, d, 10)
            spec = json.dumps({"n": n, "d": d, "k": 10, "out_of_core": out_of_core, "data_path": data_path})
            env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
            raw = subprocess.run(
                [sys.executable, __file__, "--child", spec], check=True, capture_output=True, text=True, env=env
            ).stdout
            r = json.loads(raw.strip().splitlines()[-1])
            print(
                f"| {n:,} | {d} | {r['features_mb']:.0f} | {'out of core' if out_of_core else 'in memory'} | "
                f"{r['peak_anon_mb']:.0f} | {r['predicted_mb']:.0f} | {r['peak_file_mb']:.0f} | {r['seconds']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
