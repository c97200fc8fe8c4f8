"""Import structure: lower layers never import higher ones; nothing but ``cli.py`` imports ``commands``.

Every module is parsed with :mod:`ast` (nothing is imported), so imports inside functions count
as much as top-level ones: a lazy import of a higher layer is still an upward dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"

# What the ground floor may never import (ARCHITECTURE.md: data is the ground floor).
ABOVE_DATA = ("curation", "phantom", "models", "diffusion", "pipelines", "generation", "training", "evaluation",
              "downstream", "reader_study", "release", "demo", "commands",
              # loose top-level modules being folded into pipelines/, generation/, demo/
              "pipeline", "control_pipeline", "control_outputs", "demo_control", "cli")
# The phantom stands on data alone.
PHANTOM_MAY_IMPORT = ("chexgen.phantom", "chexgen.data", "chexgen.errors", "chexgen.utils")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path, name: str | None = None) -> set[str]:
    """Every module ``path`` imports, absolute, with ``from X import y`` also giving ``X.y``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = (name or "").split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{alias.name}" for alias in node.names)
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            out.add(node.args[0].value)
    return out


def src_modules() -> dict[str, set[str]]:
    return {module_name(p, SRC): imported_modules(p, module_name(p, SRC)) for p in sorted((SRC / "chexgen").rglob("*.py"))}


def _is(mod: str, package: str) -> bool:
    return mod == package or mod.startswith(package + ".")


def commands_importers(modules: dict[str, set[str]]) -> dict[str, list[str]]:
    return {name: sorted(m for m in imports if _is(m, "chexgen.commands"))
            for name, imports in modules.items()
            if name != "chexgen.cli" and not _is(name, "chexgen.commands")
            and any(_is(m, "chexgen.commands") for m in imports)}


def test_the_scanner_sees_lazy_relative_and_from_imports(tmp_path):
    pkg = tmp_path / "chexgen" / "data"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    mod = pkg / "thing.py"
    mod.write_text("import numpy\nfrom . import labels\nfrom ..curation import report_writer\n"
                   "def f():\n    from chexgen.commands.generate import run\n"
                   "    import importlib\n    return importlib.import_module('chexgen.models.vae')\n")
    found = imported_modules(mod, module_name(mod, tmp_path))
    assert {"numpy", "chexgen.data.labels", "chexgen.curation.report_writer", "chexgen.commands.generate",
            "chexgen.commands.generate.run", "chexgen.models.vae"} <= found
    assert commands_importers({"chexgen.data.thing": found}) == {
        "chexgen.data.thing": ["chexgen.commands.generate", "chexgen.commands.generate.run"]}


def test_only_cli_imports_commands_in_the_library():
    assert commands_importers(src_modules()) == {}


def test_tests_and_benchmarks_do_not_import_commands():
    offenders = {}
    for folder in ("tests", "benchmarks", "scripts", "docs"):
        for path in sorted((REPO / folder).rglob("*.py")):
            found = sorted(m for m in imported_modules(path) if _is(m, "chexgen.commands"))
            if found:
                offenders[str(path.relative_to(REPO))] = found
    assert offenders == {}


def test_data_imports_no_higher_layer():
    modules = src_modules()
    data = {n: i for n, i in modules.items() if _is(n, "chexgen.data")}
    assert "chexgen.data.vocabulary" in data and "chexgen.data.manifest" in data
    bad = {n: sorted(m for m in imports if any(_is(m, f"chexgen.{up}") for up in ABOVE_DATA))
           for n, imports in data.items()}
    assert {n: b for n, b in bad.items() if b} == {}


def test_phantom_stands_on_data_alone():
    modules = src_modules()
    phantom = {n: i for n, i in modules.items() if _is(n, "chexgen.phantom")}
    assert "chexgen.phantom.cohort" in phantom
    bad = {n: sorted(m for m in imports if _is(m, "chexgen") and m != "chexgen"
                     and not any(_is(m, ok) for ok in PHANTOM_MAY_IMPORT))
           for n, imports in phantom.items()}
    assert {n: b for n, b in bad.items() if b} == {}
    assert not any(_is(m, "chexgen.curation") for imports in phantom.values() for m in imports)


def test_scripts_and_benchmarks_import_only_modules_that_exist():
    """A module moved in the library must not leave a benchmark or script importing its old name (such
    imports sit inside functions and fail only when that code runs)."""
    import ast
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    missing = []
    for path in sorted([*root.glob("benchmarks/*.py"), *root.glob("scripts/*.py"), *root.glob("docs/**/*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level
                     else [])
            for name in names:
                if name.split(".")[0] != "chexgen":
                    continue
                try:
                    found = importlib.util.find_spec(name) is not None
                except ModuleNotFoundError:  # a parent package is missing
                    found = False
                if not found:
                    missing.append(f"{path.relative_to(root)}:{node.lineno}: {name}")
    assert not missing, missing
