"""Library hygiene: every boneage_core module has a docstring, and none pulls in Streamlit."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import boneage_core

MODULES = sorted(p for p in Path(boneage_core.__file__).parent.glob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_module_has_docstring_and_no_streamlit(path):
    tree = ast.parse(path.read_text())
    doc = ast.get_docstring(tree)
    assert doc and doc.strip(), f"{path.name} has no module docstring"
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert "streamlit" not in imported, f"{path.name} imports streamlit"


def test_importing_the_library_does_not_load_streamlit():
    names = ", ".join(f"boneage_core.{p.stem}" for p in MODULES)
    code = f"import sys, {names}; print('streamlit' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("module", ["predictor", "evaluate", "inference", "predict", "batch", "gate"])
def test_inference_never_imports_the_training_code(module):
    code = (f"import sys, boneage_core.{module}; "
            "print(sorted(m for m in ('boneage_core.training', 'boneage_core.pipeline') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"boneage_core.{module} pulls in {out.stdout.strip()}"


def test_the_predictor_does_not_load_scikit_learn():
    """scikit-learn (~0.18 GB of RSS with its dependencies) serves fitting and holdout metrics, not predictions
    (issue 30: peak RSS after load + one prediction)."""
    code = "import sys, boneage_core.predictor; print(sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout.strip()
