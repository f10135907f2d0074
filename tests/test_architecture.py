"""Rules about the code itself: nothing of pynetdicom is patched in the product, no product
function runs past 60 lines (simulators included), and the protocol subpackage runs without
Django (the import contracts in pyproject.toml say the same for imports; ``make test`` runs
``lint-imports``)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.harness import ROOT

# Product code: everything but the simulators (test peers and load tools that use
# pynetdicom's AE as it is meant to be configured, _config flags included).
PRODUCT = [p for top in ("routing", "pools", "health", "affinity", "synthiq_project")
           for p in sorted((ROOT / top).rglob("*.py"))
           if "simulators" not in p.parts and "migrations" not in p.parts]
INTERNALS = {"dul", "dimse", "acse", "socket", "reactor"}
MAX_FUNCTION_LINES = 60


def _pynetdicom_names(tree: ast.Module) -> set[str]:
    """Names bound to pynetdicom modules or classes by this file's imports."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.startswith("pynetdicom")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pynetdicom"):
            names |= {a.asname or a.name for a in node.names}
    return names


def _patches(path: Path, root: Path = ROOT) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    pynetdicom = _pynetdicom_names(tree)
    found = []
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AugAssign | ast.AnnAssign) else [])
        for target in targets:
            if not isinstance(target, ast.Attribute):
                continue
            chain, base = [target.attr], target.value
            while isinstance(base, ast.Attribute):
                chain.append(base.attr)
                base = base.value
            owner = base.id if isinstance(base, ast.Name) else ""
            line = f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(target)}"
            if owner in pynetdicom:  # a module or class of pynetdicom's, monkeypatched
                found.append(line)
            elif owner != "self" and (target.attr.startswith("_") or INTERNALS & set(chain[1:])):
                found.append(line)  # a private attribute, or one reached through an association's internals
    return found


def test_nothing_of_pynetdicom_is_patched_anywhere_in_the_product():
    assert len(PRODUCT) > 40
    assert [hit for path in PRODUCT for hit in _patches(path)] == []


def test_the_rule_catches_the_patches_the_store_then_forward_build_made(tmp_path):
    sample = tmp_path / "old.py"
    sample.write_text(
        "import pynetdicom.dul\nfrom pynetdicom import _config\nfrom pynetdicom.transport import AssociationSocket\n"
        "pynetdicom.dul.time = None\n_config.UNRESTRICTED_STORAGE_SERVICE = True\nAssociationSocket.recv = len\n"
        "def f(assoc):\n    assoc.dul.send_pdu = print\n    assoc._serve_request = print\n")
    assert len(_patches(sample, tmp_path)) == 5


def test_the_protocol_subpackage_imports_and_works_without_django_settings():
    code = ("import sys\n"
            "from routing.dicom import commands, negotiation, netopts, pdu, scan, status\n"
            "assert not any(m == 'django' or m.startswith('django.') for m in sys.modules), 'django imported'\n"
            "assert pdu.fragments(1, b'ab', command=False, last=True, max_pdu=0)\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}  # no DJANGO_SETTINGS_MODULE
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr


def test_no_product_function_is_longer_than_60_lines():
    """A function that does not fit on a screen does more than one thing (docstring included)."""
    code = [p for top in ("routing", "pools", "health", "affinity", "synthiq_project")
            for p in sorted((ROOT / top).rglob("*.py")) if "migrations" not in p.parts]
    long = [f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in code for node in ast.walk(ast.parse(path.read_text(), str(path)))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and (node.end_lineno or node.lineno) - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, long
