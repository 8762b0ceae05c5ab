"""Import direction (issue 12, "Done when"): the CLI sits above library and roles, the roles
import only the library, and torch stays on the training side.

Checked on the source with ``ast`` (imports inside functions count too), and, for the roles'
main paths, by importing them in a fresh interpreter. The library's own check (``epic`` imports
no role and no CLI) is in test_rundir.py.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

ROLES = ("devices", "central", "emulation")
TORCH = {"torch", "torchvision", "deepwave"}
# where torch may be imported at all: training, export, the forward model (today's truth)
TORCH_HOMES = ("epic/models/", "epic/train.py", "epic/export.py", "epic/quantize.py",
               "epic/export_parity.py", "epic/export_decoders.py", "epic/data/forward.py",
               "epic/data/cache.py", "epic/ship.py", "epic/pipeline.py", "epic/finetune.py")
# where torch is imported only inside a function, on a path off the main one: central's
# fallback to a torch checkpoint (it prefers the image's ONNX decoders), and the CLI's
# `export-decoders --threads`, and --device cuda's check (epic.accel: only for cuda)
TORCH_LAZY = {"central/raw.py", "central/service.py", "epic_cli/main.py", "epic/accel.py"}


def _sources(*tops: str) -> list[Path]:
    return sorted(p for top in tops for p in (REPO / top).rglob("*.py"))


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(root package, at module level?) of every absolute import in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    nested: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            nested.update(id(inner) for inner in ast.walk(node) if inner is not node)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name.split(".")[0], id(node) not in nested) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module.split(".")[0], id(node) not in nested))
    return found


def _name(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


@pytest.mark.parametrize("role", ROLES)
def test_a_role_imports_only_the_library(role):
    others = {*ROLES, "epic_cli"} - {role}
    offenders = {_name(p): sorted({root for root, _ in _imports(p)} & others)
                 for p in _sources(role)}
    offenders = {name: roots for name, roots in offenders.items() if roots}
    assert offenders == {}, f"{role} imports another role or the CLI: {offenders}"


def test_torch_is_imported_only_on_the_training_side():
    anywhere, at_top = {}, {}
    for path in _sources("epic", "epic_cli", *ROLES):
        name = _name(path)
        torch = [(root, top) for root, top in _imports(path) if root in TORCH]
        if not torch or name.startswith(TORCH_HOMES):
            continue
        if name not in TORCH_LAZY:
            anywhere[name] = sorted({root for root, _ in torch})
        elif any(top for _, top in torch):
            at_top[name] = sorted({root for root, top in torch if top})
    assert anywhere == {}, f"torch imported outside {TORCH_HOMES}: {anywhere}"
    assert at_top == {}, f"torch imported at module level (lazily only): {at_top}"


def test_the_roles_main_paths_and_the_cli_load_no_torch():
    modules = ["devices.agent", "devices.runtime", "central.service", "central.raw",
               "central.assembler", "emulation.proxy", "emulation.runtime", "emulation.replay",
               "epic_cli"]
    code = (f"import sys\nfor m in {modules!r}:\n    __import__(m)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            f"{sorted(TORCH)!r}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]", out
