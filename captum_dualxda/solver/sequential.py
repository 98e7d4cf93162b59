"""Compiled sequential dual method with shrinking (numba): the CPU backend.

A port of the algorithm of LIBLINEAR's ``Solver_MCSVM_CS`` (Keerthi et al. 2008; docs/solver.md 2):
samples are visited one at a time in a random order, each sample's block of ``K`` dual variables is
minimised exactly (the sort-based subproblem of docs/solver.md 2.2 step 4) and ``W`` is updated
immediately. Two kinds of shrinking skip work that cannot change anything soon:

* class shrinking: a class whose ``alpha`` sits at its bound and whose gradient is below the
  smallest free gradient of the sample is moved behind the sample's active class list
  (``alpha_index`` swaps), so neither its score nor its update is computed again in this phase;
* sample shrinking: a sample with at most one active class leaves the active sample set.

The shrinking tolerance starts at ``max(10 tol, 1)`` and is halved down to ``tol``; every change of
it reactivates all samples and classes, and a pass can only end the solve if it ran over
everything. Unlike LIBLINEAR, its (stale) violation then only *proposes* stopping: we rebuild
``W = alpha^T X`` exactly and stop only if the continuous natural residual of every sample
(:mod:`.gap`) is ``<= tol``; otherwise all shrinking is undone and the passes continue.

Differences to LIBLINEAR that do not change the method: ``W`` is stored as ``(K, d)`` rows so that
the per-class scores ``w_m . x_i`` and the updates ``w_m += delta x_i`` are contiguous, vectorised
loops over the features; the intercept column is implicit; feature columns that are zero for every
sample (dead ReLU units) are dropped before solving (:func:`drop_zero_columns`: they add exact
zeros to every score, and LIBLINEAR's sparse rows skip them too); the subproblem finds the pivot
by partial selection instead of a full sort, and solves two active classes in closed form (same
result); the random order comes from our own SplitMix64 generator seeded by ``seed``.

The hot loop is written for the CPU and compiled as one function (the helpers are inlined, with
element indexing instead of array views): scores of four active classes at a time share the loads
of ``x_i`` (fastmath reassociation so LLVM vectorises the float64 sums), the next sample's
features and dual state are prefetched while the current one is solved when the active samples do
not fit in the core's cache, the shuffle draws its indices with a multiply-shift instead of a
division, and the class lists are int32 (``n K`` of them, as in LIBLINEAR). After each
reactivation of a large problem (a pass over everything of at least ``1e7`` multiply-adds), all
scores come from one matrix product and the shrinking rule is applied to them with a margin for
its rounding before the next pass (:func:`_screen_reactivated`), instead of one sample at a time.
docs/solver.md, "2.5 The cost of a pass", has the measurements.

Precision: features stay in their dtype (float32 is fine), ``alpha``, ``W`` and all arithmetic of
the subproblem are float64 (dot products accumulate in float64). Measured alternatives: a float32
``W`` state was no faster (mixed-precision updates) and drifted, so the exact check failed and
needed extra rounds (residual 1.1e-4 > tol 1e-4 at the first check, 4 checks at tol 1e-5); a
float32 copy of ``W`` used only to screen the classes that are certainly shrunk (with a rigorous
rounding bound) gave the same decisions but no measurable speed-up, so neither is used.

Cold start (docs/solver.md, "Cold start"): the kernels live in :mod:`._sequential_kernels` as
C-callable numba functions. Importing numba and initialising its compiler costs about a second in a
fresh process, more than a small solve, so after the first compile on a machine this module keeps
the kernels' machine code on disk and later processes call it through ctypes: numba is imported
only to compile. Where a C compiler driver is found when compiling (Linux), the code is also linked
into a shared library that later processes load with ctypes alone (about a millisecond); otherwise
they link the object file with llvmlite (tens of milliseconds).
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from .bdcd import BackendOutput
from .gap import OptimalityReport
from .problem import CrammerSingerProblem

if importlib.util.find_spec("numba") is None:  # the solver's fit falls back to the PyTorch backend
    raise ImportError("The sequential backend needs numba (pip install numba).")

__all__ = ["solve_sequential", "solve_subproblem", "evaluate_optimality_compiled", "drop_zero_columns"]

# Return codes of the pass kernel (the same constants as in ._sequential_kernels).
_CONTINUE, _PROPOSE_STOP, _MAX_ITER, _REACTIVATED = 0, 1, 2, 3
# Sizes of its schedule state ``ints`` and ``floats`` (N_INTS, N_FLOATS there; layout in solve_sequential).
_N_INTS, _N_FLOATS = 7, 4

# After a reactivation, shrink with scores from one matrix product (:func:`_screen_reactivated`)
# when the pass over everything would cost at least this many multiply-adds (n d K): below it, the
# product and the calls cost more than the scores they save (measured on the digits benchmark).
_SCREEN_MIN_WORK = 1e7
_SCREEN_BLOCK_ELEMENTS = 1 << 22  # rows of the product per call: at most this many scores

# ------------------------------------------------------------------------------------------------
# The compiled kernels: loaded from the on-disk cache with llvmlite, or compiled with numba.
# ------------------------------------------------------------------------------------------------

_CACHE_FORMAT = 4
"""Version of the cache file layout and of the entry points' C signatures (bump on change)."""

_KERNEL_SOURCE = Path(__file__).with_name("_sequential_kernels.py")

_ERROR_PATH_SYMBOLS = frozenset(
    {
        "numba_gil_ensure",
        "numba_gil_release",
        "numba_do_raise",
        "numba_unpickle",
        "numba_runtime_build_excinfo_struct",
        "NRT_Free",
        "NRT_MemInfo_call_dtor",
    }
)
"""Functions of numba's runtime that the compiled code names but can only call to report an
exception or free memory owned by an array; the kernels raise nothing and own no memory
(``._sequential_kernels``). Outside numba these symbols are bound to a trap."""

_P, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
_PROTOTYPES = {  # C signatures of ._sequential_kernels.compile_entry_points (pointer, int64, double)
    "squared_norms": ctypes.CFUNCTYPE(None, _P, _I, _I, _F, _P),
    "rebuild_weights": ctypes.CFUNCTYPE(None, _P, _I, _I, _F, _P, _I, _P, _P),
    "run_passes": ctypes.CFUNCTYPE(
        _I, _P, _I, _I, _P, _F, _F, _P, _P, _I, _P, _P, _P, _P, _P, _P, _P, _P, _P, _F, _I, _I, _P,
        _P, _P, _P, _P, _P, _I,
    ),
    "certificate": ctypes.CFUNCTYPE(_F, _P, _I, _I, _P, _F, _F, _P, _P, _I, _P, _P, _P, _P, _P),
    "subproblem": ctypes.CFUNCTYPE(None, _P, _F, _I, _F, _I, _P, _P),
    "screen": ctypes.CFUNCTYPE(None, _P, _I, _I, _F, _F, _P, _I, _P, _I, _P, _P, _P, _P, _F, _P),
}
_ENTRY_POINTS = tuple(_PROTOTYPES)


class _Kernels:
    """The six entry points for ``features`` of one dtype as ctypes functions (they release the GIL).

    ``origin`` is ``"library"`` (the cached shared library, loaded with ctypes alone), ``"cache"``
    (the cached object file, linked with llvmlite, without numba), ``"compiled"``
    (compiled here, written to the cache and loaded back from it) or ``"numba"`` (compiled here
    or loaded from numba's own cache, called at numba's addresses). ``owners`` keeps the code
    alive.
    """

    def __init__(self, feature_dtype: str, functions: Dict[str, Any], origin: str, owners: Tuple[Any, ...]):
        self.features = np.dtype(feature_dtype)
        self.squared_norms = functions["squared_norms"]
        self.rebuild_weights = functions["rebuild_weights"]
        self.run_passes = functions["run_passes"]
        self.certificate = functions["certificate"]
        self.subproblem = functions["subproblem"]
        self.screen = functions["screen"]
        self.origin = origin
        self._owners = owners


_LOADED: Dict[str, _Kernels] = {}
_LOCK = threading.Lock()


def _kernels(feature_dtype: str) -> _Kernels:
    """The kernels for ``float32`` or ``float64`` features: memoised, else from disk, else compiled."""
    kernels = _LOADED.get(feature_dtype)
    if kernels is None:
        with _LOCK:
            kernels = _LOADED.get(feature_dtype)
            if kernels is None:
                kernels = _load_cached(feature_dtype) or _compile(feature_dtype)
                _LOADED[feature_dtype] = kernels
    return kernels


def _cache_key(feature_dtype: str) -> Dict[str, Any]:
    """What the machine code depends on: our source, the toolchain, Python, the CPU, the dtype."""
    import llvmlite
    import llvmlite.binding as ll

    return {
        "format": _CACHE_FORMAT,
        "dtype": feature_dtype,
        "kernels": _kernel_source_digest(),
        "python": sys.implementation.cache_tag,
        "llvmlite": llvmlite.__version__,
        "numba": _installation_stamp("numba"),
        "triple": ll.get_process_triple(),
        "cpu": ll.get_host_cpu_name(),
        "features": ll.get_host_cpu_features().flatten(),
    }


@functools.lru_cache(maxsize=None)
def _kernel_source_digest() -> str:
    """SHA-256 of the kernels' source (part of every cache key)."""
    return hashlib.sha256(_KERNEL_SOURCE.read_bytes()).hexdigest()


def _installation_stamp(module: str) -> List[int]:
    """Size and modification time of an installed package's ``__init__`` (changes on reinstall)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return []
    stat = os.stat(spec.origin)
    return [stat.st_size, stat.st_mtime_ns]


def _write_files(folder: Path, files: List[Tuple[str, bytes]]) -> bool:
    """Publish ``files`` (name, content) in ``folder``, in order, each atomically.

    Each is written to a temporary name, then all are renamed in order (parallel processes may
    race; readers never see a partial file). False, with nothing left behind, where the folder
    cannot be written.
    """
    token = f"{os.getpid()}.{uuid.uuid4().hex}"
    temporaries: List[Path] = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files:
            temporaries.append(folder / f".{name}.{token}")
            with open(temporaries[-1], "xb") as file:  # permissions from the umask, like numba's cache
                file.write(data)
        for (name, _), temporary in zip(files, temporaries):
            os.replace(temporary, folder / name)
    except OSError:  # read-only or full
        for temporary in temporaries:
            with contextlib.suppress(OSError):
                temporary.unlink()
        return False
    return True


def _cache_dirs() -> List[Path]:
    """Where the machine code is kept, in order of preference (numba's rules for its own cache)."""
    override = os.environ.get("NUMBA_CACHE_DIR")
    if override:
        return [Path(override) / "captum_dualxda"]
    user = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return [Path(__file__).with_name("__pycache__"), Path(user) / "captum_dualxda"]


def _cache_name(key: Dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return f"sequential_kernels.{key['dtype']}.{digest}.bin"


def _load_cached(feature_dtype: str) -> Optional[_Kernels]:
    """Machine code from the cache: a shared library (no llvmlite), else object code linked with
    llvmlite (no numba); ``None`` if absent or stale."""
    if not _own_cache_possible():
        return None
    kernels = _load_library(feature_dtype)
    if kernels is not None:
        return kernels
    try:
        key = _cache_key(feature_dtype)
        name = _cache_name(key)
        for folder in _cache_dirs():
            path = folder / name
            if path.is_file():
                header, objects = _read_cache_file(path)
                if header.get("key") == key:
                    return _link(feature_dtype, objects, header["symbols"], "cache")
    except Exception:  # unreadable, foreign or truncated file, llvmlite API change: compile instead
        return None
    return None


def _read_cache_file(path: Path) -> Tuple[Dict[str, Any], List[bytes]]:
    """Header and object files of a cache file; raises ``ValueError`` if it is damaged."""
    data = path.read_bytes()
    end = data.index(b"\n")
    header = json.loads(data[:end].decode())
    payload = data[end + 1 :]
    if hashlib.sha256(payload).hexdigest() != header["sha256"] or sum(header["sizes"]) != len(payload):
        raise ValueError(f"damaged cache file {path}")
    offsets = np.cumsum([0, *header["sizes"]])
    return header, [payload[a:b] for a, b in zip(offsets[:-1], offsets[1:])]


def _write_cache_file(header: Dict[str, Any], objects: List[bytes]) -> Optional[Path]:
    """Write atomically (parallel processes may race) into the first writable cache folder.

    Layout: one line of JSON (``key``, entry ``symbols``, ``stubs``, ``sizes`` and ``sha256`` of
    the objects), then the object files back to back.
    """
    payload = b"".join(objects)
    header = dict(header, sizes=[len(o) for o in objects], sha256=hashlib.sha256(payload).hexdigest())
    data = json.dumps(header, sort_keys=True).encode() + b"\n" + payload
    name = _cache_name(header["key"])
    for folder in _cache_dirs():  # the first writable one
        if _write_files(folder, [(name, data)]):
            return folder / name
    return None


def _link(feature_dtype: str, objects: List[bytes], symbols: Dict[str, str], origin: str) -> Optional[_Kernels]:
    """Load object files into a private MCJIT engine and wrap the entry points with ctypes.

    What the code names outside itself is either in the process (Python's C API, the C library)
    or one of numba's runtime functions on the error path, which the second object defines as
    traps (:func:`_trap_object`). They are defined in this engine only: LLVM's global symbol
    table is left alone, so numba, if it runs in this process too, keeps its own definitions.
    """
    if set(symbols) != set(_ENTRY_POINTS):
        return None
    import llvmlite.binding as ll

    ll.initialize_native_target()
    ll.initialize_native_asmprinter()
    machine = ll.Target.from_default_triple().create_target_machine(jit=True)  # owned by the engine
    engine = ll.create_mcjit_compiler(ll.parse_assembly(""), machine)
    for code in objects:
        engine.add_object_file(ll.ObjectFileRef.from_data(code))
    engine.finalize_object()
    functions = {}
    for entry, symbol in symbols.items():
        address = engine.get_function_address(symbol)
        if not address:
            return None
        functions[entry] = _PROTOTYPES[entry](address)
    return _Kernels(feature_dtype, functions, origin, (engine,))


# A shared library of the same machine code, linked once by the system's C compiler driver where
# there is one: later processes then load it with ctypes alone, without importing llvmlite (whose
# import and LLVM initialisation cost 30-80 ms, more than a small solve). Its key is read without
# llvmlite: the CPU from /proc/cpuinfo, so this path is Linux only; elsewhere the object file above
# is used.

_CPUINFO_FIELDS = frozenset(
    {"vendor_id", "cpu family", "model", "model name", "stepping", "flags", "features", "cpu implementer",
     "cpu architecture", "cpu variant", "cpu part", "cpu revision", "isa", "uarch", "cpu"}
)
"""Lines of /proc/cpuinfo that identify the CPU model and its instruction set extensions."""


def _cpu_identity() -> Optional[str]:
    """SHA-256 of the first processor's model and feature lines of /proc/cpuinfo (None: not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None
    first = text.split("\n\n", 1)[0]
    lines = []
    for line in first.splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() in _CPUINFO_FIELDS:
            lines.append(f"{name.strip().lower()}:{' '.join(value.split())}")
    if not lines:
        return None
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _library_key(feature_dtype: str) -> Optional[Dict[str, Any]]:
    """What the shared library depends on, read without llvmlite; None where it cannot be used."""
    cpu = _cpu_identity()
    if cpu is None:
        return None
    return {
        "format": _CACHE_FORMAT,
        "dtype": feature_dtype,
        "kernels": _kernel_source_digest(),
        "python": sys.implementation.cache_tag,
        "numba": _installation_stamp("numba"),
        "llvmlite": _installation_stamp("llvmlite"),
        "machine": platform.machine(),
        "cpu": cpu,
    }


def _library_paths(folder: Path, key: Dict[str, Any]) -> Tuple[Path, Path]:
    """The shared library and its header (key, entry symbols, SHA-256) in ``folder``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    stem = f"sequential_kernels.{key['dtype']}.{digest}"
    return folder / f"{stem}.so", folder / f"{stem}.json"


def _load_library(feature_dtype: str) -> Optional[_Kernels]:
    """The kernels from the cached shared library, loaded with ctypes; None if absent or stale."""
    try:
        key = _library_key(feature_dtype)
        if key is None:
            return None
        for folder in _cache_dirs():
            library_path, header_path = _library_paths(folder, key)
            if not header_path.is_file():
                continue
            header = json.loads(header_path.read_text())
            if header.get("key") != key or set(header.get("symbols", ())) != set(_ENTRY_POINTS):
                continue
            if hashlib.sha256(library_path.read_bytes()).hexdigest() != header.get("sha256"):
                continue  # damaged, or replaced by a parallel process after the header was read
            library = ctypes.CDLL(str(library_path))
            functions = {
                entry: _PROTOTYPES[entry](ctypes.cast(getattr(library, symbol), ctypes.c_void_p).value)
                for entry, symbol in header["symbols"].items()
            }
            return _Kernels(feature_dtype, functions, "library", (library,))
    except Exception:  # unreadable header, missing symbol, loader error: use the object file
        return None
    return None


def _c_compiler() -> Optional[str]:
    """A C compiler driver on PATH to link with (``cc``, ``gcc`` or ``clang``), or None."""
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _build_library(feature_dtype: str, module: Any, stubs: List[str], symbols: Dict[str, str],
                   key: Dict[str, Any]) -> Optional[_Kernels]:
    """Link the kernels' LLVM module (position-independent code) into a cached shared library.

    Returns the kernels loaded from it, or None if there is no compiler driver, linking fails, or
    no cache folder is writable; nothing half-written is left behind.
    """
    library_key = _library_key(feature_dtype)
    compiler = _c_compiler()
    if library_key is None or compiler is None:
        return None
    import llvmlite.binding as ll

    machine = ll.Target.from_triple(key["triple"]).create_target_machine(
        cpu=key["cpu"], features=key["features"], opt=3, reloc="pic", codemodel="default"
    )
    objects = [machine.emit_object(module), _trap_object(stubs, machine)]
    with tempfile.TemporaryDirectory(prefix="captum-dualxda-link-") as scratch:
        inputs = []
        for number, code in enumerate(objects):
            inputs.append(os.path.join(scratch, f"part{number}.o"))
            Path(inputs[-1]).write_bytes(code)
        output = os.path.join(scratch, "kernels.so")
        # -z text: refuse code that would need patching at load time (not position independent)
        command = [compiler, "-shared", "-Wl,-z,text", "-o", output, *inputs]
        done = subprocess.run(command, capture_output=True, timeout=120, check=False)
        if done.returncode != 0 or not os.path.isfile(output):
            return None
        data = Path(output).read_bytes()
    header = {"key": library_key, "symbols": symbols, "sha256": hashlib.sha256(data).hexdigest()}
    for folder in _cache_dirs():  # the first writable one
        library_path, header_path = _library_paths(folder, library_key)
        # the library first: a header always names a complete file
        files = [(library_path.name, data), (header_path.name, json.dumps(header, sort_keys=True).encode())]
        if _write_files(folder, files):
            return _load_library(feature_dtype)
    return None


def _trap_object(names: List[str], machine: Any) -> bytes:
    """An object file defining each of ``names`` as a function that traps (illegal instruction)."""
    import llvmlite.binding as ll

    body = "".join(f'define void @"{name}"() {{\n  call void @llvm.trap()\n  unreachable\n}}\n' for name in names)
    module = ll.parse_assembly("declare void @llvm.trap()\n" + body)
    module.triple = ll.get_process_triple()
    return machine.emit_object(module)


def _resolvable_in_process(symbol: str, process: ctypes.CDLL) -> bool:
    """Whether the dynamic linker finds ``symbol`` in ``process`` (``CDLL(None)``), i.e. without numba."""
    try:
        getattr(process, symbol)
    except AttributeError:
        return False
    return True


def _own_cache_possible() -> bool:
    """Whether numba compiles for exactly this machine's CPU and the code can be loaded here.

    Python's C API is looked up in the process, which is done on Linux and macOS. The environment
    variables that make numba target another CPU model leave the caching to numba.
    """
    overrides = ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", "NUMBA_ENABLE_AVX")
    return os.name == "posix" and not any(name in os.environ for name in overrides)


def _compile(feature_dtype: str) -> _Kernels:
    """Compile with numba, save the machine code, and load it back the way later processes will.

    Where the machine code cannot be kept (:func:`_own_cache_possible`), numba's own cache is
    used instead: later processes then import numba to load it, as before.
    """
    from . import _sequential_kernels

    own_cache = _own_cache_possible()
    entries = _sequential_kernels.compile_entry_points(feature_dtype, cache=not own_cache)
    kernels = None
    if own_cache:
        try:
            kernels = _save_and_reload(feature_dtype, entries)
        except Exception:  # numba internals changed, or the code is not self-contained: no cache
            kernels = None
    if kernels is None:
        functions = {name: _PROTOTYPES[name](entries[name].address) for name in _ENTRY_POINTS}
        kernels = _Kernels(feature_dtype, functions, "numba", (entries,))
    return kernels


def _save_and_reload(feature_dtype: str, entries: Dict[str, Any]) -> Optional[_Kernels]:
    """One object file with all entry points, emitted by numba's own JIT target machine."""
    libraries = [entries[name]._library for name in _ENTRY_POINTS]
    codegen = libraries[0]._codegen
    key = _cache_key(feature_dtype)
    if tuple(codegen.magic_tuple()) != (key["triple"], key["cpu"], key["features"]):
        return None  # numba targets another CPU model (NUMBA_CPU_NAME, ...): not this machine's code
    module = libraries[0]._final_module.clone()
    for library in libraries[1:]:
        module.link_in(library._final_module.clone())
    external = [
        value.name
        for value in [*module.functions, *module.global_variables]
        if value.is_declaration and not value.name.startswith("llvm.")
    ]
    process = ctypes.CDLL(None)
    stubs = sorted(name for name in external if not _resolvable_in_process(name, process))
    if not set(stubs) <= _ERROR_PATH_SYMBOLS:
        return None  # the kernels call numba's runtime on a normal path: they need numba
    pristine = module.clone()  # for the shared library: emitting may change a module
    objects = [codegen._tm.emit_object(module), _trap_object(stubs, codegen._tm)]
    symbols = {name: entries[name].native_name for name in _ENTRY_POINTS}
    kernels = _link(feature_dtype, objects, symbols, "compiled")
    if kernels is None or not _same_results(kernels, entries):
        return None
    _write_cache_file({"key": key, "symbols": symbols, "stubs": stubs}, objects)
    try:
        library = _build_library(feature_dtype, pristine, stubs, symbols, key)
    except Exception:  # no usable toolchain: later processes link the object file with llvmlite
        library = None
    if library is not None and _same_results(library, entries):
        # this process runs the same machine code as every later one
        return _Kernels(feature_dtype, {name: getattr(library, name) for name in _ENTRY_POINTS}, "compiled",
                        library._owners)
    return kernels


def _same_results(kernels: _Kernels, entries: Dict[str, Any]) -> bool:
    """Smoke test of loaded code against numba's: a subproblem with a shrunk true class."""
    b = np.array([0.3, -1.0, 0.7, 0.2])
    work = np.empty(4)
    results = []
    for function in (kernels.subproblem, _PROTOTYPES["subproblem"](entries["subproblem"].address)):
        results.append(np.empty(4))
        function(b.ctypes.data, 2.0, 5, 0.5, 4, results[-1].ctypes.data, work.ctypes.data)
    return bool(np.array_equal(results[0], results[1]) and abs(results[0].sum() + 0.5) < 1e-12)


# ------------------------------------------------------------------------------------------------
# The solver on top of the kernels.
# ------------------------------------------------------------------------------------------------


def _address(array: np.ndarray, dtype: Any) -> int:
    """Address of a C-contiguous ``dtype`` buffer (the kernels read raw memory: checked first)."""
    if array.dtype != dtype or not array.flags.c_contiguous:
        raise TypeError(
            f"internal error: the compiled kernels need a C-contiguous {np.dtype(dtype)} array, got "
            f"{array.dtype} (C-contiguous: {array.flags.c_contiguous})."
        )
    return array.ctypes.data


def solve_subproblem(
    shifted: np.ndarray, curvature: float, y_position: int, C: float
) -> np.ndarray:
    """LIBLINEAR's per-sample subproblem (compiled), for testing and reuse.

    Parameters
    ----------
    shifted : np.ndarray
        ``(size,)`` float64 ``B[m] = G[m] - A_i alpha_i[m]`` over the active classes.
    curvature : float
        ``A_i > 0``.
    y_position : int
        Position of the true class among the active ones; ``>= size`` if it is shrunk (then it
        holds ``alpha = C`` and the active entries sum to ``-C``).
    C : float
        Upper bound of the true class.

    Returns
    -------
    np.ndarray
        ``(size,)`` float64 new ``alpha`` values of the active classes.
    """
    b = np.ascontiguousarray(shifted, dtype=np.float64).reshape(-1)
    out = np.empty_like(b)
    work = np.empty_like(b)
    kernels = next(iter(_LOADED.values()), None) or _kernels("float64")
    kernels.subproblem(
        b.ctypes.data, float(curvature), int(y_position), float(C), b.shape[0], out.ctypes.data, work.ctypes.data
    )
    return out


# Features without their all-zero columns are copied only while the copy stays this small, and
# only when at least this fraction of the columns is all zero.
_COMPACT_MAX_BYTES = 1 << 30
_COMPACT_MIN_DEAD_FRACTION = 1 / 16


def drop_zero_columns(x: np.ndarray, *, chunk_rows: int = 4096) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """``x`` without the columns that are zero in every row, when that saves enough work.

    A column that is zero for every sample (a ReLU unit that never fires, common in penultimate
    layers) adds an exact zero to every dot product of the solver and its column of ``W`` stays
    zero, so the dual solution does not depend on it: dropping it changes no result and removes
    its share of every pass's arithmetic (60 of 128 units are dead in the digits CNN of
    ``benchmarks/solver.py``). Dense features are recognised from their first rows.

    Parameters
    ----------
    x : np.ndarray
        ``(n, d)`` float32 or float64, C-contiguous.
    chunk_rows : int
        Rows scanned at a time (no ``(n, d)`` temporaries).

    Returns
    -------
    features : np.ndarray
        ``x`` itself when fewer than ``d / 16`` columns are all zero, all are, or the compact copy
        would exceed 1 GiB; otherwise a C-contiguous ``(n, d')`` copy of the other columns, in
        their order.
    columns : np.ndarray or None
        ``(d',)`` int64 indices of the kept columns in ``x``; ``None`` when ``x`` is returned.
    """
    n, d = x.shape
    live = np.zeros(d, dtype=bool)
    for start in range(0, n, chunk_rows):
        live |= np.any(x[start : start + chunk_rows], axis=0)
        if d - np.count_nonzero(live) < _COMPACT_MIN_DEAD_FRACTION * d:
            return x, None
    columns = np.flatnonzero(live)
    if columns.size == 0 or n * columns.size * x.itemsize > _COMPACT_MAX_BYTES:
        return x, None
    return np.ascontiguousarray(np.compress(live, x, axis=1)), columns


def _prepare(
    problem: CrammerSingerProblem,
) -> Tuple[np.ndarray, Optional[np.ndarray], np.ndarray, np.ndarray, _Kernels]:
    """CPU numpy arrays: ``(n, d')`` features (own dtype; all-zero columns dropped when worth it)
    with the kept columns' indices (``None``: all kept; see :func:`drop_zero_columns`), ``(n,)``
    int64 labels, ``(n,)`` float64 ``A_i``."""
    x = np.ascontiguousarray(problem.features.detach().cpu().numpy())
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    x, columns = drop_zero_columns(x)
    y = np.ascontiguousarray(problem.labels.detach().cpu().numpy(), dtype=np.int64)
    kernels = _kernels(x.dtype.name)
    sq = np.empty(x.shape[0])
    s = float(problem.intercept_scaling)
    kernels.squared_norms(_address(x, kernels.features), x.shape[0], x.shape[1], s, _address(sq, np.float64))
    return x, columns, y, sq, kernels


def _rebuild_weights(
    kernels: _Kernels, x: np.ndarray, s: float, alpha: np.ndarray, weight: np.ndarray, bias_weight: np.ndarray
) -> None:
    """``weight = alpha^T x`` and ``bias_weight = s alpha.sum(0)`` in float64 (in place)."""
    kernels.rebuild_weights(
        _address(x, kernels.features), x.shape[0], x.shape[1], s, _address(alpha, np.float64), alpha.shape[1],
        _address(weight, np.float64), _address(bias_weight, np.float64),
    )


def _certificate(
    kernels: _Kernels, x: np.ndarray, y: np.ndarray, s: float, c: float, sq: np.ndarray,
    alpha: np.ndarray, weight: np.ndarray, bias_weight: np.ndarray, residuals: np.ndarray,
) -> float:
    """Natural residuals into ``residuals`` (``(n,)`` float64); returns the primal's hinge-loss sum."""
    k = alpha.shape[1]
    scratch = np.empty((4, k))
    all_classes = np.arange(k, dtype=np.int32)
    return kernels.certificate(
        _address(x, kernels.features), x.shape[0], x.shape[1], _address(y, np.int64), s, c, _address(sq, np.float64),
        _address(alpha, np.float64), k, _address(weight, np.float64), _address(bias_weight, np.float64),
        _address(residuals, np.float64), _address(scratch, np.float64), _address(all_classes, np.int32),
    )


def evaluate_optimality_compiled(problem: CrammerSingerProblem, alpha: torch.Tensor) -> OptimalityReport:
    """Compiled CPU twin of :func:`.gap.evaluate_optimality` (same quantities, one pass, no copies).

    Parameters
    ----------
    problem : CrammerSingerProblem
        Features are used on the CPU (copied there if needed).
    alpha : torch.Tensor
        ``(n, K)`` float64 feasible dual variables.

    Returns
    -------
    OptimalityReport
        ``weight`` ``(K, d)`` and ``bias_weight`` ``(K,)`` float64 CPU tensors, primal, dual,
        gap, relative gap and the largest natural residual.
    """
    x, columns, y, sq, kernels = _prepare(problem)
    a = np.ascontiguousarray(alpha.detach().cpu().numpy(), dtype=np.float64)
    s = float(problem.intercept_scaling)
    weight = np.zeros((problem.n_classes, x.shape[1]))
    bias_weight = np.zeros(problem.n_classes)
    _rebuild_weights(kernels, x, s, a, weight, bias_weight)
    residuals = np.empty(x.shape[0])
    loss = _certificate(kernels, x, y, s, float(problem.C), sq, a, weight, bias_weight, residuals)
    sq_w = float((weight * weight).sum() + (bias_weight * bias_weight).sum())
    primal = 0.5 * sq_w + problem.C * loss
    dual = -0.5 * sq_w + float(a[np.arange(a.shape[0]), y].sum())
    if columns is not None:  # the dropped columns of W are exactly zero
        full = np.zeros((problem.n_classes, problem.n_features))
        full[:, columns] = weight
        weight = full
    return OptimalityReport(
        weight=torch.from_numpy(weight),
        bias_weight=torch.from_numpy(bias_weight),
        primal=primal,
        dual=dual,
        gap=primal - dual,
        relative_gap=(primal - dual) / max(abs(primal), 1e-300),
        residual=float(residuals.max()) if residuals.size else 0.0,
    )


def _screen_reactivated(
    kernels: _Kernels, x: np.ndarray, s: float, c: float, sq: np.ndarray, alpha: np.ndarray, weight: np.ndarray,
    bias_weight: np.ndarray, state: Tuple[np.ndarray, ...], scratch: np.ndarray,
) -> None:
    """Shrink after a reactivation with all scores from one matrix product, before the next pass.

    The pass over everything that follows a reactivation computes ``K`` scores per sample one
    sample at a time, mostly to shrink them again. A matrix product (BLAS, in the features' dtype)
    computes them far faster; the kernel then applies the shrinking rule with a margin that
    covers the product's rounding, and samples left with one class leave the active set. The
    pass that follows runs over the rest, as LIBLINEAR's would after shrinking them itself.
    Shrinking only decides what the next passes visit: the stopping check is exact either way.
    """
    alpha_index, class_active, y_index, order, ints = state
    n, k = alpha.shape
    unit_roundoff = float(np.finfo(x.dtype).eps) / 2
    margin = (x.shape[1] + 2) * unit_roundoff * float(np.sqrt((weight * weight).sum(1)).max())
    weight_t = np.ascontiguousarray(weight.T, dtype=x.dtype)  # (d, K) in the features' dtype
    rows = max(1, _SCREEN_BLOCK_ELEMENTS // k)
    for start in range(0, n, rows):
        scores = np.ascontiguousarray(x[start : start + rows] @ weight_t)
        kernels.screen(
            _address(scores, kernels.features), start, scores.shape[0], s, c, _address(sq, np.float64), n,
            _address(alpha, np.float64), k, _address(bias_weight, np.float64), _address(alpha_index, np.int32),
            _address(class_active, np.int64), _address(y_index, np.int64), margin, _address(scratch, np.float64),
        )
    keep = class_active[order] > 1
    keep |= sq[order] <= 0.0  # the pass kernel keeps (and skips) samples with A_i = 0
    order[:] = np.concatenate([order[keep], order[~keep]])
    ints[1] = int(keep.sum())


def solve_sequential(
    problem: CrammerSingerProblem,
    *,
    tol: float,
    max_iter: int,
    seed: int,
    alpha0: Optional[torch.Tensor] = None,
    show_progress: bool = False,
    acceleration: bool = True,
) -> BackendOutput:
    """Solve the Crammer-Singer dual with the compiled sequential method with shrinking (CPU).

    Parameters
    ----------
    problem : CrammerSingerProblem
        Validated problem; features are copied to the CPU if needed (float32 or float64).
    tol : float
        LIBLINEAR's ``eps``: drives the shrinking schedule; the solve stops only when the
        exact largest natural residual ``max_i r_i`` over all samples is ``<= tol``.
    max_iter : int
        Maximum number of passes.
    seed : int
        Seed of the sample order; equal seeds give bitwise equal results on the same machine.
    alpha0 : torch.Tensor, optional
        ``(n, K)`` float64 feasible starting point (warm start); ``W`` starts at
        ``alpha0^T [X, s]``.
    show_progress : bool
        Show a tqdm bar over passes.
    acceleration : bool
        End every pass with momentum and restarts (module docstring; docs/solver.md 2.6): one
        more float64 ``(n, K)`` copy of ``alpha`` in memory. ``False``: the plain method, as
        LIBLINEAR runs it (for comparisons).

    Returns
    -------
    BackendOutput
        ``alpha`` ``(n, K)`` float64 tensor in input order (on the problem's device, i.e. the CPU
        unless features on an accelerator were passed explicitly to this backend), passes made,
        whether the exact check passed, and ``stats["restarts"]`` (restarts of the momentum).
    """
    x, _, y, sq, kernels = _prepare(problem)
    n, k = problem.n_samples, problem.n_classes
    s, c = float(problem.intercept_scaling), float(problem.C)
    if alpha0 is None:
        alpha = np.zeros((n, k))
    else:
        alpha = np.array(alpha0.detach().cpu().numpy(), dtype=np.float64, order="C", copy=True)
    weight = np.zeros((k, x.shape[1]))
    bias_weight = np.zeros(k)
    if alpha0 is not None:
        _rebuild_weights(kernels, x, s, alpha, weight, bias_weight)
    alpha_index = np.tile(np.arange(k, dtype=np.int32), (n, 1))  # int32 like LIBLINEAR: n*K*4 bytes
    class_active = np.full(n, k, dtype=np.int64)
    y_index = y.copy()
    order = np.arange(n, dtype=np.int64)
    # the schedule state (layout in ._sequential_kernels): passes, active samples, "the pass ran over
    # everything", passes since the momentum restarted, rows in touched_list, "the pass started from
    # an extrapolated point", restarts; the shrinking tolerance, the running sum_i alpha_i^{y_i},
    # and that sum and the dual objective at the last accepted point
    ints = np.array([0, n, 1, 1, 0, 0, 0], dtype=np.int64)
    own = _own_sum(alpha, y)
    floats = np.array([max(10.0 * tol, 1.0), own, np.inf, own])
    assert ints.shape == (_N_INTS,) and floats.shape == (_N_FLOATS,)
    # momentum state: the last accepted point (rows outside touched_list equal alpha) and its W
    previous = alpha.copy() if acceleration else np.zeros((1, k))
    weight_previous = weight.copy()
    bias_previous = bias_weight.copy()
    touched = np.zeros(n if acceleration else 1, dtype=np.int32)
    touched_list = np.zeros(n if acceleration else 1, dtype=np.int64)
    rng = np.array([np.uint64(int(seed) % 2**64) ^ np.uint64(0x5DEECE66D)], dtype=np.uint64)
    scratch = np.empty((4, k))
    residuals = np.empty(n)
    # the state arrays never move: their addresses are taken once
    state = (
        _address(x, kernels.features), n, x.shape[1], _address(y, np.int64), s, c, _address(sq, np.float64),
        _address(alpha, np.float64), k, _address(weight, np.float64), _address(bias_weight, np.float64),
        _address(alpha_index, np.int32), _address(class_active, np.int64), _address(y_index, np.int64),
        _address(order, np.int64), _address(ints, np.int64), _address(floats, np.float64), _address(rng, np.uint64),
        float(tol), int(max_iter),
    )
    momentum = (
        _address(previous, np.float64), _address(weight_previous, np.float64), _address(bias_previous, np.float64),
        _address(touched, np.int32), _address(touched_list, np.int64), int(bool(acceleration)),
    )
    scratch_address = _address(scratch, np.float64)
    screen = float(n) * x.shape[1] * k >= _SCREEN_MIN_WORK
    state_arrays = (alpha_index, class_active, y_index, order, ints)
    chunk = 1 if show_progress else max_iter  # with a bar: grow chunks to ~0.1 s per call
    converged = False
    # no bar object at all without progress: tqdm's first bar in a process costs about a millisecond
    bar = tqdm(total=max_iter, desc="DualDA solver (sequential)", leave=False) if show_progress else None
    with bar if bar is not None else contextlib.nullcontext():
        while True:
            before = int(ints[0])
            started = time.perf_counter()
            code = kernels.run_passes(*state, chunk, scratch_address, *momentum)
            if bar is not None:
                bar.update(int(ints[0]) - before)
                if time.perf_counter() - started < 0.1:
                    chunk = min(2 * chunk, max_iter)
            if code == _MAX_ITER:
                break
            if code == _REACTIVATED and screen:
                _screen_reactivated(kernels, x, s, c, sq, alpha, weight, bias_weight, state_arrays, scratch)
            if code == _PROPOSE_STOP:
                _rebuild_weights(kernels, x, s, alpha, weight, bias_weight)
                _certificate(kernels, x, y, s, c, sq, alpha, weight, bias_weight, residuals)
                worst = float(residuals.max())
                if worst <= tol:
                    converged = True
                    if bar is not None:  # converged: the bar ends full, not at n_iter / max_iter
                        bar.total = bar.n
                        bar.set_postfix(residual=f"{worst:.2e}", converged=True)
                    break
                if bar is not None:
                    bar.set_postfix(residual=f"{worst:.2e}")
                class_active[:] = k  # undo all shrinking (the kernels' _reactivate)
                ints[1] = n
                ints[2] = 1
                floats[1] = _own_sum(alpha, y)  # W was rebuilt: the running sum starts afresh too
            if int(ints[0]) >= max_iter:
                break
    result = torch.from_numpy(alpha).to(problem.features.device)  # no copy on CPU
    return BackendOutput(alpha=result, n_iter=int(ints[0]), converged=converged, stats={"restarts": int(ints[6])})


def _own_sum(alpha: np.ndarray, y: np.ndarray) -> float:
    """``sum_i alpha_i^{y_i}`` (the linear part of the dual objective)."""
    return float(alpha[np.arange(alpha.shape[0]), y].sum())
