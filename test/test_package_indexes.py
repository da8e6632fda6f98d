"""Every package's index (its __init__.py docstring) names each of its modules and subpackages,
so a newcomer reading one docstring per folder sees the whole package."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "leovl_ros"
PACKAGES = sorted(p.parent for p in ROOT.rglob("__init__.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.relative_to(ROOT.parent).as_posix())
def test_package_index_names_every_module(package: Path):
    index = ast.get_docstring(ast.parse((package / "__init__.py").read_text())) or ""
    modules = [m.name for m in package.glob("*.py") if m.name != "__init__.py"]
    subpackages = [d.name for d in package.iterdir() if (d / "__init__.py").exists()
                   or (d.is_dir() and d.name == "bundled_models")]
    missing = [m for m in modules if m not in index] + [f"{d}/" for d in subpackages if f"``{d}``" not in index]
    assert not missing, f"{package.relative_to(ROOT.parent)}/__init__.py does not name {missing}"
