"""The layout's rules, read from the source: who may import whom."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("commandline", "migration_safety", "backfills", "tasks", "taskproj")


def imports_of(path: Path) -> set[str]:
    """The modules a file imports (absolute names), wherever in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def modules(package: str) -> dict[str, Path]:
    """Every module of ``package``, by its dotted name."""
    return {
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): path
        for path in (ROOT / package).rglob("*.py")
    }


def imported_packages(package: str) -> dict[str, set[str]]:
    """For each module of ``package``: the project packages it imports."""
    return {
        name: {imported.split(".")[0] for imported in imports_of(path)} & set(PACKAGES)
        for name, path in modules(package).items()
    }


@pytest.mark.parametrize(
    ("package", "allowed"),
    [
        ("commandline", set()),
        ("migration_safety", {"commandline"}),
        ("backfills", {"commandline", "migration_safety"}),
    ],
)
def test_the_reusable_packages_never_import_the_apps_above_them(package, allowed):
    for module, imported in imported_packages(package).items():
        assert imported - {package} <= allowed, f"{module} imports {imported - {package}}"


def test_there_is_no_import_circle_between_modules():
    known = {name for package in PACKAGES for name in modules(package)}
    graph = {}
    for package in PACKAGES:
        for name, path in modules(package).items():
            graph[name] = {imported for imported in imports_of(path) if imported in known} - {name}

    def visit(name: str, trail: tuple[str, ...]) -> None:
        assert name not in trail, " -> ".join((*trail, name))
        for imported in graph[name]:
            if imported not in done:
                visit(imported, (*trail, name))
        done.add(name)

    done: set[str] = set()
    for name in graph:
        visit(name, ())


def test_migrations_import_only_django_and_the_stable_operations():
    stable = {"backfills.operations", "migration_safety.operations"}
    for package in ("tasks", "backfills"):
        for path in (ROOT / package / "migrations").glob("0*.py"):
            ours = {
                imported
                for imported in imports_of(path)
                if imported.split(".")[0] in PACKAGES
                and not any(imported.startswith(module) for module in stable)
            }
            assert ours == set(), f"{path.name} imports {ours}"
