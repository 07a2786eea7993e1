"""Every module imports, and every third-party package it imports is declared (requirements.txt pins
it, setup.py names it), so a fresh machine set up as the README says runs everything."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import pathlib
import pkgutil
import re
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("semicnn_jax", "benchmarks")
CODE = ("semicnn_jax", "benchmarks", "experiments", "tests")


def modules(package: str) -> list[str]:
    root = importlib.import_module(package)
    return [package] + [m.name for m in pkgutil.walk_packages(root.__path__, package + ".")]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_imports(package):
    names = modules(package)
    assert len(names) > 3, names
    for name in names:
        importlib.import_module(name)


def normalise(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def requirement_names(lines) -> set[str]:
    return {
        normalise(re.split(r"[<>=!~\[;@ ]", line.strip())[0])
        for line in lines
        if line.strip() and not line.lstrip().startswith("#")
    }


def imported_top_level_modules() -> dict[str, str]:
    """Top-level module -> the first file importing it, over the project's code (lazy imports too)."""
    local = {p.stem for d in CODE for p in (REPO / d).rglob("*.py")} | set(CODE)
    found = {}
    for directory in CODE:
        for path in sorted((REPO / directory).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in local:
                        found.setdefault(top, str(path.relative_to(REPO)))
    return found


def test_every_imported_package_is_pinned_and_in_setup():
    pinned = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, version = line.strip().partition("==")
            pinned[normalise(name)] = version
    setup_text = (REPO / "setup.py").read_text()
    in_setup = requirement_names(re.findall(r'"([A-Za-z0-9_.\-\[\]]+[^"]*)"', setup_text))
    distributions = importlib.metadata.packages_distributions()
    imported = imported_top_level_modules()
    assert {"jax", "flax", "optax", "orbax", "grain", "av", "torch", "tensorflow"} <= set(imported)
    problems = []
    for module, where in sorted(imported.items()):
        names = {normalise(d) for d in distributions.get(module, [])}
        if not names:
            problems.append(f"{module} (imported in {where}) is not installed")
        elif not names & pinned.keys():
            problems.append(f"{module} (imported in {where}): requirements.txt does not name {names}")
        elif not names & in_setup:
            problems.append(f"{module} (imported in {where}): setup.py does not name {names}")
    assert not problems, "\n".join(problems)
    unpinned = [name for name, version in pinned.items() if not version]
    assert not unpinned, f"requirements.txt lines without '==version': {unpinned}"
