"""The package's layers and who may import whom (README, "Code map").

Every ``import`` statement of every module is read with :mod:`ast`, wherever it stands (lazy
imports inside functions count), and resolved to the absolute module it names.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "sam2_service"

#: layer -> the layers of ours it may import (itself always; the package root holds only
#: ``__version__`` and is open to all).
ALLOWED = {
    "wire": {"wire"},
    "daemon": {"wire", "daemon"},
    "client": {"wire", "client"},
    "web": {"wire", "client", "web"},
    "napari": {"wire", "client", "napari", "batch"},
    "batch": {"wire", "client", "batch"},
}
#: Third-party packages that only the daemon may import: the model's stack.
MODEL_STACK = {"torch", "torchvision", "sam2", "hydra", "omegaconf"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(source: str, name: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import in ``source``, the text of module
    ``name`` (a package's ``__init__`` when ``is_package``)."""
    package = name if is_package else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))  # each name may itself be a module:
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return found


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "sam2_service" and parts[1] in ALLOWED else None


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_layer_exists_or_is_room_for_later() -> None:
    present = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert {"wire", "daemon", "client"} <= present
    assert present <= set(ALLOWED)


def _violations(source: str, name: str, is_package: bool = False) -> list[str]:
    layer = _layer(name)
    if layer is None:  # cli, __main__, the package root: the composition root, free
        return []
    bad = []
    for line, target in _imports(source, name, is_package):
        top = target.split(".")[0]
        if top == "sam2_service":
            other = _layer(target)
            if other is not None and other not in ALLOWED[layer]:
                bad.append(f"line {line}: {layer} imports sam2_service.{other}")
            elif other is None and target not in ("sam2_service", "sam2_service.__version__"):
                bad.append(f"line {line}: {layer} imports {target} (outside the layers)")
        elif top in MODEL_STACK and layer != "daemon":
            bad.append(f"line {line}: {layer} imports {top} (the model's stack)")
    return list(dict.fromkeys(bad))  # one line per statement and layer


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_layers(path: Path) -> None:
    bad = _violations(path.read_text(), _module_name(path), path.name == "__init__.py")
    assert not bad, "\n".join(bad)


def test_the_checker_catches_lazy_relative_and_model_imports() -> None:
    """The rule can fail: a lazy relative import of the daemon from the client, a cli import
    from the wire, and torch in a front-end are each reported."""
    src = "def f():\n    from ..daemon import engine\n    import torch\n"
    assert _violations(src, "sam2_service.client.x") == [
        "line 2: client imports sam2_service.daemon",
        "line 3: client imports torch (the model's stack)",
    ]
    assert _violations("from .. import cli\n", "sam2_service.wire.y") == [
        "line 1: wire imports sam2_service.cli (outside the layers)"]
    assert _violations("from sam2_service import daemon\n", "sam2_service.client.y") == [
        "line 1: client imports sam2_service.daemon"]
    assert _violations("from ..client import Client\n", "sam2_service.daemon.z") == [
        "line 1: daemon imports sam2_service.client"]
    assert _violations("from .codecs import encode_mask\n", "sam2_service.wire", True) == []


@pytest.mark.parametrize("modules", [
    "sam2_service.client",
    "sam2_service.client.overlay",
    "sam2_service.wire.codecs, sam2_service.wire.schema, sam2_service.wire.frames",
    "sam2_service.cli",
])
def test_front_end_imports_leave_torch_out(modules: str) -> None:
    """A front-end's environment needs no torch: importing the client (and the CLI, whose
    client commands run without the daemon's extra) must not import it."""
    code = (f"import sys, {modules}\n"
            "bad = sorted(m for m in ('torch', 'torchvision', 'sam2', 'hydra') if m in sys.modules)\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"{modules} imported {out.stdout.strip()}"


#: The size guide: code a newcomer can read in one go.
MAX_CLASS_LINES, MAX_FUNCTION_LINES, MAX_MODULE_LINES = 250, 50, 500


def _oversized(source: str) -> list[str]:
    found = []
    if len(source.splitlines()) > MAX_MODULE_LINES:
        found.append(f"module: {len(source.splitlines())} lines")
    for node in ast.walk(ast.parse(source)):
        limit = (MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
                 if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else None)
        if limit is not None and node.end_lineno - node.lineno + 1 > limit:
            found.append(f"{node.name} (line {node.lineno}): "
                         f"{node.end_lineno - node.lineno + 1} lines, limit {limit}")
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_classes_functions_and_modules_stay_small(path: Path) -> None:
    assert not _oversized(path.read_text())


#: Inside the daemon: group -> the groups (or single modules) of the daemon it may import.
#: Requests flow serving -> inference/auto; ops is tooling beside them (its doctor reuses the
#: server's socket and device checks); config is read by all.
DAEMON_GROUPS = {
    "config": set(),
    "serving": {"config", "serving", "inference", "auto", "ops", "video"},
    "inference": {"config", "inference", "ops.logs"},
    "auto": {"config", "auto", "inference", "ops.logs"},
    "video": {"config", "video", "inference", "ops.logs"},
    "batch": {"config", "batch", "inference", "serving.dispatch"},
    "ops": {"config", "ops", "serving.sockets", "inference.hardware", "inference.sam2_compat"},
}


def _daemon_group(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[:2] == ["sam2_service", "daemon"] else None


def _daemon_violations(source: str, name: str, is_package: bool = False) -> list[str]:
    group = _daemon_group(name)
    if group is None:
        return []
    bad = []
    for line, target in _imports(source, name, is_package):
        other = _daemon_group(target)
        if other is None or other not in DAEMON_GROUPS:
            continue  # the daemon package itself, or a name imported from it
        rest = target.split(".")[2:]
        allowed = DAEMON_GROUPS[group] | {group}
        if other not in allowed and ".".join(rest[:2]) not in allowed:
            bad.append(f"line {line}: daemon.{group} imports daemon.{'.'.join(rest[:2])}")
    return list(dict.fromkeys(bad))


def test_daemon_groups_exist() -> None:
    daemon = PACKAGE / "daemon"
    groups = {p.name for p in daemon.iterdir() if (p / "__init__.py").exists()}
    assert groups == set(DAEMON_GROUPS) - {"config"}
    assert not sorted(p.name for p in daemon.glob("*.py") if p.stem not in ("__init__", "config")), \
        "daemon modules belong in a group"
    for group in groups:  # each says what it holds
        assert len(ast.get_docstring(ast.parse((daemon / group / "__init__.py").read_text())) or "") > 200


@pytest.mark.parametrize("path", sorted((PACKAGE / "daemon").rglob("*.py")),
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_daemon_imports_follow_its_groups(path: Path) -> None:
    bad = _daemon_violations(path.read_text(), _module_name(path), path.name == "__init__.py")
    assert not bad, "\n".join(bad)


#: The daemon's modules that may import the model's stack: the model's groups, and the doctor
#: (lazily, to check the install).
MODEL_STACK_MODULES = ("sam2_service.daemon.inference", "sam2_service.daemon.auto",
                       "sam2_service.daemon.ops.doctor", "sam2_service.daemon.video")


@pytest.mark.parametrize("path", sorted((PACKAGE / "daemon").rglob("*.py")),
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_the_model_groups_import_torch(path: Path) -> None:
    name = _module_name(path)
    if name.startswith(MODEL_STACK_MODULES):
        return
    stack = sorted({t.split(".")[0] for _, t in _imports(path.read_text(), name, path.name == "__init__.py")}
                   & MODEL_STACK)
    assert not stack, f"{name} imports {stack}"


def test_the_daemon_group_check_can_fail() -> None:
    assert _daemon_violations("from ..serving.dispatch import Dispatcher\n",
                              "sam2_service.daemon.inference.worker") == [
        "line 1: daemon.inference imports daemon.serving.dispatch"]
    assert _daemon_violations("from ..ops.doctor import main\n", "sam2_service.daemon.auto.runner") == [
        "line 1: daemon.auto imports daemon.ops.doctor"]
    assert _daemon_violations("from ..ops.logs import event\n", "sam2_service.daemon.auto.runner") == []


def _import_graph() -> dict[str, set[str]]:
    """module -> the modules of the package it imports (lazy imports included; ``from .x
    import y`` counts ``x`` and, when it is a module, ``x.y``). An import of one of the
    module's own parent packages is no edge: Python runs the parents first anyway."""
    names = {_module_name(p): p for p in MODULES}
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        parents = {".".join(name.split(".")[:i]) for i in range(1, len(name.split(".")))}
        graph[name] = {target for _, target in _imports(path.read_text(), name, path.name == "__init__.py")
                       if target in names and target != name and target not in parents}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    assert _cycles(_import_graph()) == []


def test_the_cycle_check_can_fail() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_size_check_can_fail() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    assert _oversized(f"def f():\n{body}\n") == [
        f"f (line 1): {MAX_FUNCTION_LINES + 1} lines, limit {MAX_FUNCTION_LINES}"]
