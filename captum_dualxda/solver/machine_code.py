"""The sequential backend's machine code: compiled once per machine, cached on disk, loaded without numba.

Cold start (docs/solver.md, "Cold start"): the kernels live in :mod:`._sequential_kernels` and
:mod:`._sequential_entry_points` as C-callable numba functions. Importing numba and initialising
its compiler costs a noticeable time in a fresh process, more than a small solve, so after the
first compile on a machine this module keeps
the kernels' machine code on disk and later processes call it through ctypes: numba is imported
only to compile. Where a C compiler driver is found when compiling (Linux), the code is also linked
into a shared library that later processes load with ctypes alone; otherwise they link the object
file with llvmlite (slower; docs/solver.md has the times).
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
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

if importlib.util.find_spec("numba") is None:  # the solver's fit falls back to the PyTorch backend
    raise ImportError("The sequential backend needs numba (pip install numba).")

__all__ = ["Kernels", "kernels", "LOADED"]


_CACHE_FORMAT = 4
"""Version of the cache file layout and of the entry points' C signatures (bump on change)."""

_KERNEL_SOURCES = tuple(
    Path(__file__).with_name(name)
    for name in (
        "_kernel_primitives.py",
        "_momentum_kernels.py",
        "_sequential_kernels.py",
        "_sequential_entry_points.py",
    )
)

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
_PROTOTYPES = {  # C signatures of ._sequential_entry_points.compile_entry_points (pointer, int64, double)
    "squared_norms": ctypes.CFUNCTYPE(None, _P, _I, _I, _F, _P),
    "rebuild_weights": ctypes.CFUNCTYPE(None, _P, _I, _I, _F, _P, _I, _P, _P),
    "run_passes": ctypes.CFUNCTYPE(
        _I,
        _P,
        _I,
        _I,
        _P,
        _F,
        _F,
        _P,
        _P,
        _I,
        _P,
        _P,
        _P,
        _P,
        _P,
        _P,
        _P,
        _P,
        _P,
        _F,
        _I,
        _I,
        _P,
        _P,
        _P,
        _P,
        _P,
        _P,
        _I,
    ),
    "certificate": ctypes.CFUNCTYPE(_F, _P, _I, _I, _P, _F, _F, _P, _P, _I, _P, _P, _P, _P, _P),
    "subproblem": ctypes.CFUNCTYPE(None, _P, _F, _I, _F, _I, _P, _P),
    "screen": ctypes.CFUNCTYPE(None, _P, _I, _I, _F, _F, _P, _I, _P, _I, _P, _P, _P, _P, _F, _P),
}
_ENTRY_POINTS = tuple(_PROTOTYPES)


class Kernels:
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


LOADED: Dict[str, Kernels] = {}
_LOCK = threading.Lock()


def kernels(feature_dtype: str) -> Kernels:
    """The kernels for ``float32`` or ``float64`` features: memoised, else from disk, else compiled."""
    kernels = LOADED.get(feature_dtype)
    if kernels is None:
        with _LOCK:
            kernels = LOADED.get(feature_dtype)
            if kernels is None:
                kernels = _load_cached(feature_dtype) or _compile(feature_dtype)
                LOADED[feature_dtype] = kernels
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


@functools.cache
def _kernel_source_digest() -> str:
    """SHA-256 of the kernels' source (part of every cache key)."""
    return hashlib.sha256(b"".join(path.read_bytes() for path in _KERNEL_SOURCES)).hexdigest()


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


def _load_cached(feature_dtype: str) -> Optional[Kernels]:
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


def _link(feature_dtype: str, objects: List[bytes], symbols: Dict[str, str], origin: str) -> Optional[Kernels]:
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
    return Kernels(feature_dtype, functions, origin, (engine,))


# A shared library of the same machine code, linked once by the system's C compiler driver where
# there is one: later processes then load it with ctypes alone, without importing llvmlite (whose
# import and LLVM initialisation cost 30-80 ms, more than a small solve). Its key is read without
# llvmlite: the CPU from /proc/cpuinfo, so this path is Linux only; elsewhere the object file above
# is used.

_CPUINFO_FIELDS = frozenset(
    {
        "vendor_id",
        "cpu family",
        "model",
        "model name",
        "stepping",
        "flags",
        "features",
        "cpu implementer",
        "cpu architecture",
        "cpu variant",
        "cpu part",
        "cpu revision",
        "isa",
        "uarch",
        "cpu",
    }
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


def _load_library(feature_dtype: str) -> Optional[Kernels]:
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
                entry: _PROTOTYPES[entry](ctypes.cast(getattr(library, symbol), ctypes.c_void_p).value or 0)
                for entry, symbol in header["symbols"].items()
            }
            return Kernels(feature_dtype, functions, "library", (library,))
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


def _build_library(
    feature_dtype: str, module: Any, stubs: List[str], symbols: Dict[str, str], key: Dict[str, Any]
) -> Optional[Kernels]:
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


def _compile(feature_dtype: str) -> Kernels:
    """Compile with numba, save the machine code, and load it back the way later processes will.

    Where the machine code cannot be kept (:func:`_own_cache_possible`), numba's own cache is
    used instead: later processes then import numba to load it, as before.
    """
    from . import _sequential_entry_points

    own_cache = _own_cache_possible()
    entries: Dict[str, Any] = _sequential_entry_points.compile_entry_points(feature_dtype, cache=not own_cache)
    kernels = None
    if own_cache:
        try:
            kernels = _save_and_reload(feature_dtype, entries)
        except Exception:  # numba internals changed, or the code is not self-contained: no cache
            kernels = None
    if kernels is None:
        functions = {name: _PROTOTYPES[name](entries[name].address) for name in _ENTRY_POINTS}
        kernels = Kernels(feature_dtype, functions, "numba", (entries,))
    return kernels


def _save_and_reload(feature_dtype: str, entries: Dict[str, Any]) -> Optional[Kernels]:
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
        return Kernels(
            feature_dtype, {name: getattr(library, name) for name in _ENTRY_POINTS}, "compiled", library._owners
        )
    return kernels


def _same_results(kernels: Kernels, entries: Dict[str, Any]) -> bool:
    """Smoke test of loaded code against numba's: a subproblem with a shrunk true class."""
    b = np.array([0.3, -1.0, 0.7, 0.2])
    work = np.empty(4)
    results = []
    for function in (kernels.subproblem, _PROTOTYPES["subproblem"](entries["subproblem"].address)):
        results.append(np.empty(4))
        function(b.ctypes.data, 2.0, 5, 0.5, 4, results[-1].ctypes.data, work.ctypes.data)
    return bool(np.array_equal(results[0], results[1]) and abs(results[0].sum() + 0.5) < 1e-12)
