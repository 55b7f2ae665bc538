"""The dependency direction the codebase promises: storage never imports emr_hub, and the
FHIR core never imports the feature packages built on top of it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(package: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[str(path.relative_to(ROOT))] = names
    return found


def offenders(package: Path, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path} imports {name}"
        for path, names in imported_modules(package).items()
        for name in names
        if name.startswith(forbidden)
    ]


def test_storage_never_imports_the_hub() -> None:
    assert offenders(ROOT / "storage", ("emr_hub",)) == []


@pytest.mark.parametrize("feature", ["emr_hub.referrals", "emr_hub.imaging", "emr_hub.healthbook"])
def test_fhir_core_never_imports_features(feature: str) -> None:
    assert offenders(ROOT / "emr_hub" / "fhir", (feature,)) == []


def test_the_check_sees_imports() -> None:
    """Guard against a checker that finds nothing because it reads nothing."""
    assert any(
        "storage.tables" in names for names in imported_modules(ROOT / "emr_hub" / "fhir").values()
    )
