"""The packaging declares every package the code has, so a wheel built from it (not only the editable install the
tests run on) holds every module, and the library keeps its one-way imports."""

from __future__ import annotations

import ast
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
# folder -> package name, as pyproject.toml's package-dir maps them
MAPPED = {"common": "fastprune.common", "components": "fastprune.components", "pipelines": "fastprune.pipelines"}
# rooms of fastprune.common, lowest first: a module may import its own room and the rooms below it only
ROOMS = {
    "errors": 0,
    "folders": 0,
    "interrupts": 0,
    "registry": 9,
    "tasks": 1,
    "model": 2,
    "method": 3,
    "ops": 3,
    "stages": 4,
}


def _declared() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])


def test_every_package_folder_is_declared():
    found = {"fastprune", "fastprune.data", "fastprune.data.sst2", "fastprune.data.text"}
    for folder, package in MAPPED.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((package, *parts)))
    assert found == _declared(), f"pyproject.toml packages: add {found - _declared()}, drop {_declared() - found}"


def _imports(path: Path, package: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names |= {module} | {f"{module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
    return names


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[:2] == ["fastprune", "common"] else None


def test_library_imports_point_one_way():
    """No module of ``fastprune.common`` imports a higher room, the CLI package, the components or the pipelines."""
    wrong = []
    for path in (ROOT / "common").rglob("*.py"):
        rel = path.relative_to(ROOT / "common")
        package = ".".join(("fastprune.common", *rel.parts[:-1]))
        room = _room(".".join(("fastprune.common", *rel.with_suffix("").parts)))
        for module in _imports(path, package):
            if module.startswith(
                (
                    "fastprune.cli",
                    "fastprune.defaults",
                    "fastprune.ops_cli",
                    "fastprune.components",
                    "fastprune.pipelines",
                )
            ):
                wrong.append(f"{rel} imports {module}")
            target = _room(module)
            if room and target and target != room and ROOMS.get(target, 9) >= ROOMS.get(room, 9):
                if not (room == "registry" or ROOMS[room] == ROOMS[target] == 0):
                    wrong.append(f"{rel} ({room}) imports {module} ({target})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_source_module_over_500_lines():
    sources = [path for folder in (*MAPPED, "fastprune") for path in (ROOT / folder).rglob("*.py")]
    long = [f"{path.relative_to(ROOT)}: {n}" for path in sources if (n := len(path.read_text().splitlines())) > 500]
    assert not long, f"split these modules: {long}"
