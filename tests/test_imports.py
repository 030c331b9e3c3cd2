"""The import rules of DESIGN.md, checked on the source (every import, module-level or inside a function).

Importing the bare package `posttrain` (for `__version__`) is allowed everywhere: its __init__ imports
nothing of ours.
"""
import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "posttrain"

# folder (or top-level module) -> the folders of ours it may import, besides itself.
ALLOWED = {
    "losses": set(),
    "data": set(),
    "models": {"data"},
    "generate": {"models", "data"},
    "merge": {"models", "data"},
    "train": {"models", "losses", "data"},
    "curate": {"generate", "models", "data"},
    "judge": {"generate", "curate", "models", "data"},
    "tinyworld": {"judge", "data"},
    "evaluate": {"judge", "generate", "curate", "models", "data"},
    "synth": {"judge", "generate", "curate", "models", "data"},
    "stages": {"losses", "data", "models", "generate", "merge", "train", "curate", "judge", "tinyworld", "evaluate", "synth"},
    "report": {"data"},
    "recipe": {"stages", "data"},
    "cli": {"recipe", "stages", "report", "data"},
    "__init__": set(),
}
# losses/ is "torch only": no third-party package but torch.
LOSSES_THIRD_PARTY = {"torch"}


def owner(path: Path) -> str:
    """The folder a module belongs to (`cli` / `__init__` for the package's top-level modules)."""
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, relative imports resolved."""
    package_parts = ["posttrain", *path.relative_to(PACKAGE).parent.parts]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package_parts[: len(package_parts) - (node.level - 1)]
                base = ".".join(parent + ([base] if base else []))
            if base == "posttrain":  # `from posttrain import data` imports the folder posttrain.data
                out.extend((node.lineno, f"posttrain.{alias.name}") for alias in node.names)
            else:
                out.append((node.lineno, base))
    return out


def violations() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        folder = owner(path)
        if folder not in ALLOWED:
            problems.append(f"{path.relative_to(PACKAGE.parent)}: {folder!r} is not in DESIGN.md's import table")
            continue
        for line, module in imported_modules(path):
            parts = module.split(".")
            where = f"{path.relative_to(PACKAGE.parent)}:{line}"
            if parts[0] == "posttrain":
                if len(parts) == 1 or (folder != "__init__" and parts[1] == "__version__"):
                    if folder == "__init__":
                        problems.append(f"{where}: the package __init__ imports {module}")
                    continue
                target = parts[1]
                if folder == "__init__" or (target != folder and target not in ALLOWED[folder]):
                    problems.append(f"{where}: {folder}/ may not import {module}")
            elif folder == "losses" and parts[0] not in sys.stdlib_module_names | LOSSES_THIRD_PARTY | {"__future__"}:
                problems.append(f"{where}: losses/ imports {module} (torch only)")
    return problems


def test_every_module_follows_the_import_table():
    assert violations() == []


def test_checker_resolves_relative_and_from_package_imports(tmp_path, monkeypatch):
    fake = tmp_path / "posttrain"
    (fake / "report").mkdir(parents=True)
    (fake / "report" / "x.py").write_text(
        "from posttrain import recipe\nfrom ..stages import base\nfrom . import plots\nimport posttrain.data.records\n"
        "def f():\n    from posttrain.train import engine\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert violations() == [
        "posttrain/report/x.py:1: report/ may not import posttrain.recipe",
        "posttrain/report/x.py:2: report/ may not import posttrain.stages",
        "posttrain/report/x.py:6: report/ may not import posttrain.train",
    ]


def test_runner_cli_and_stage_kinds_load_without_torch():
    """Validating a recipe and building the CLI import every stage module; none may import torch at import time."""
    code = (
        "import sys\n"
        "import posttrain.cli, posttrain.recipe.runner, posttrain.report\n"
        "from posttrain.stages import registry\n"
        "for kind in registry.kinds():\n"
        "    registry.get_stage(kind)\n"
        "posttrain.cli.build_parser()\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'matplotlib') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
