"""The package's shape: the public import paths users rely on, and no import cycle between its modules."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import Dict, List, Optional, Set

import pytest

import captum_dualxda

PACKAGE = Path(captum_dualxda.__file__).parent
NAME = "captum_dualxda"


# ---------------------------------------------------------------------------------------- public paths
PUBLIC = {
    "captum_dualxda": [
        "DualDA",
        "XDA",
        "XDAPairs",
        "xda_pairs",
        "transformer_composite",
        "fit_crammer_singer",
        "CrammerSingerResult",
        "rank_label_issues",
        "LabelIssues",
    ],
    "captum_dualxda.solver": [
        "fit_crammer_singer",
        "fit_crammer_singer_path",
        "available_backends",
        "ConvergenceWarning",
        "DEFAULT_C",
        "CrammerSingerProblem",
        "CrammerSingerResult",
        "make_problem",
        "support_mask",
        "project_crammer_singer",
        "RowSparseDual",
        "dual_rows",
        "dual_to_dense",
        "evaluate_optimality",
        "primal_objective",
    ],
    "captum_dualxda.metrics": [
        "mislabel_auc",
        "mislabel_detection_curve",
        "mislabel_scores",
        "training_loss",
        "class_detection",
        "class_detection_from_indices",
        "random_class_detection",
        "zero_fraction",
        "hoyer_sparsity",
        "LDSResult",
        "lds",
        "Fidelity",
        "logit_fidelity",
        "surrogate_fidelity",
    ],
    "captum_dualxda.choose_c": ["sweep_C", "SweepRow", "format_markdown"],
    "captum_dualxda.visualization": [
        "to_captum_image",
        "heatmap_rgb",
        "image_for_display",
        "InfluentialSamples",
        "plot_explanation",
        "explain_figure",
        "text_pair_records",
        "show_text_pair",
        "plot_text_pair",
    ],
    "captum_dualxda.xda": ["XDA", "XDAPairs", "xda_pairs", "UnsupportedModelError"],
    "captum_dualxda.dualda": ["DualDA"],
    "captum_dualxda.label_issues": [
        "rank_label_issues",
        "LabelIssues",
        "estimated_issue_count",
        "LABEL_ISSUES_C",
        "LABEL_ISSUES_FOLDS",
    ],
    "captum_dualxda.demo": [
        "DigitsData",
        "DigitsCNN",
        "DemoResult",
        "load_digits_data",
        "train_cnn",
        "run_demo",
        "check_demo_arguments",
        "check_out_dir",
        "DEFAULT_C",
        "DEFAULT_EPOCHS",
    ],
    "captum_dualxda.__main__": ["main", "build_parser"],
    "captum_dualxda.exceptions": ["UnsupportedModelError", "ModelChangedError", "ConvergenceWarning"],
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_every_public_import_path_still_works(module):
    imported = importlib.import_module(module)
    missing = [name for name in PUBLIC[module] if not hasattr(imported, name)]
    assert not missing, f"{module} lacks {missing}"
    exported = getattr(imported, "__all__", None)
    if exported is not None and module != "captum_dualxda.__main__":
        assert not set(PUBLIC[module]) - set(exported) - {"LABEL_ISSUES_C"}


def test_the_quanda_adapter_keeps_its_path():
    """``captum_dualxda.quanda.DualDAExplainer`` (quanda itself is optional: checked by the source)."""
    tree = ast.parse((PACKAGE / "quanda.py").read_text())
    assert "DualDAExplainer" in {node.name for node in tree.body if isinstance(node, ast.ClassDef)}


def test_the_top_level_names_are_the_same_objects_as_their_homes():
    from captum_dualxda import XDA, DualDA, fit_crammer_singer, rank_label_issues
    from captum_dualxda.dualda import DualDA as dualda_home
    from captum_dualxda.label_issues import rank_label_issues as label_issues_home
    from captum_dualxda.solver import fit_crammer_singer as solver_home
    from captum_dualxda.xda import XDA as xda_home

    assert (DualDA, XDA, fit_crammer_singer, rank_label_issues) == (
        dualda_home,
        xda_home,
        solver_home,
        label_issues_home,
    )


# ---------------------------------------------------------------------------------------- import cycles
def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> Dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _resolve(importer: str, is_package: bool, level: int, module: Optional[str]) -> str:
    if level == 0:
        return module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _imports(name: str, path: Path, modules: Dict[str, Path]) -> Set[str]:
    """The package's modules ``name`` imports anywhere in its source (functions and ``TYPE_CHECKING`` too).

    ``from a import b`` counts as importing ``a.b`` when that is a module, else ``a``; the parent
    packages Python imports on the way are not counted (every module would import the top level).
    """
    targets: Set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, is_package, node.level, node.module)
            for alias in node.names:
                targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {target for target in targets if target in modules and target != name}


def _cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    state: Dict[str, int] = {}  # 1: on the stack, 2: done
    stack: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle_through_a_function_local_import(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert _cycle(graph) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    source = "def f():\n    from .b import g\n"
    (tmp_path / "a.py").write_text(source)
    assert _imports("p.a", tmp_path / "a.py", {"p.a": tmp_path / "a.py", "p.b": tmp_path / "b.py"}) == {"p.b"}


def test_no_import_cycle_between_the_package_modules():
    """Imports only point down the layers (docs/architecture.md), also those inside functions."""
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_utilities_import_nothing_else_from_the_package():
    modules = _modules()
    for name, path in modules.items():
        if name.startswith(f"{NAME}._utils"):
            outside = {
                t
                for t in _imports(name, path, modules)
                if not t.startswith(f"{NAME}._utils") and t != f"{NAME}.exceptions"
            }
            assert not outside, f"{name} imports {outside}"


def test_the_solver_imports_nothing_from_the_layers_above_it():
    modules = _modules()
    allowed = (f"{NAME}.solver", f"{NAME}._utils", f"{NAME}.exceptions")
    for name, path in modules.items():
        if name.startswith(f"{NAME}.solver"):
            outside = {t for t in _imports(name, path, modules) if not t.startswith(allowed)}
            assert not outside, f"{name} imports {outside}"


def test_the_core_imports_no_public_face_or_tool():
    modules = _modules()
    faces = {
        f"{NAME}.{m}"
        for m in ("dualda", "xda", "label_issues", "choose_c", "quanda", "metrics", "visualization", "demo", "__main__")
    }
    for name, path in modules.items():
        if name.startswith((f"{NAME}._core", f"{NAME}.lrp")):
            above = {t for t in _imports(name, path, modules) if t in faces or t.rsplit(".", 1)[0] in faces}
            assert not above, f"{name} imports {above}"


def _all_of(path: Path) -> Optional[Set[str]]:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return None


def test_modules_import_only_the_names_another_module_exports():
    """``__all__`` is the boundary between modules: a name imported from a sibling is in its ``__all__``."""
    modules = _modules()
    outside = []
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = _resolve(name, path.name == "__init__.py", node.level, node.module)
            if base not in modules:
                continue
            exported = _all_of(modules[base])
            for alias in node.names:
                if f"{base}.{alias.name}" not in modules and (exported is None or alias.name not in exported):
                    outside.append(f"{name}: {alias.name} from {base}")
    assert not outside, outside


def test_docs_architecture_names_every_module():
    """``docs/architecture.md`` has a line for every file of the package, under its folder's heading."""
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    sections = {}
    folder = ""
    for line in text.splitlines():
        if line.startswith("### "):
            folder = line.split("`")[1].rstrip("/") if "`" in line else ""
        elif line.startswith("| `") and folder is not None:
            sections.setdefault(folder, set()).add(line.split("`")[1])
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.name == "__init__.py" and len(relative.parts) > 1:
            continue  # a subpackage's __init__ re-exports its modules' names
        folder = "/".join(relative.parts[:-1])
        assert relative.name in sections.get(folder, set()), f"docs/architecture.md lacks {relative}"


def test_the_top_level_holds_the_faces_and_tools_only():
    """At most a dozen modules at the top level; the machinery lives in folders named after their layer."""
    modules = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(modules) <= 12, modules
    folders = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").is_file()}
    assert folders == {"_core", "_utils", "demo", "lrp", "metrics", "solver", "visualization"}
