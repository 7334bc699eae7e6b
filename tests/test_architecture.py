"""The package layout is the architecture (gateway/__init__.py): imports only run down.

The checker reads every module's imports with :mod:`ast` (top-level, function-level and
``TYPE_CHECKING`` imports alike, since a lazy import is still a dependency) and reports:
a package importing one it may not, a cycle between modules, and ``gateway/`` or ``bench/``
code importing ``tests``. The last tests prove the checker itself catches each kind.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import gateway
from gateway import ALLOWED_IMPORTS

ROOT = Path(__file__).resolve().parent.parent


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str) -> Iterator[tuple[str, bool]]:
    """(imported module, only under TYPE_CHECKING) for every import in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                for inner in ast.walk(child):
                    typing_only.add(id(inner))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, id(node) in typing_only
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # "from gateway.x import y" may name a module y
                yield f"{target}\0{alias.name}", id(node) in typing_only


def scan(root: Path, tops: tuple[str, ...] = ("gateway", "bench", "twisted")) -> list[str]:
    """Every violation of the import map under ``root``, as readable lines."""
    files = {
        _module_name(root, p): p
        for top in tops
        if (root / top).exists()
        for p in sorted((root / top).rglob("*.py"))
    }
    problems: list[str] = []
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        graph[module] = set()
        for found, typing_only in _imports(path, module):
            base, _, name = found.partition("\0")
            target = f"{base}.{name}" if name and f"{base}.{name}" in files else base
            if target == "tests" or target.startswith("tests."):
                problems.append(f"{module} imports {target}: nothing outside tests/ may")
                continue
            if target not in files or target == module:
                continue
            if not typing_only:
                graph[module].add(target)
            src = module.split(".")
            dst = target.split(".")
            if src[0] != "gateway" or dst[0] != "gateway" or len(dst) < 2:
                continue
            if len(src) < 2 or src[1] not in ALLOWED_IMPORTS:
                continue  # gateway/__init__.py and gateway/__main__.py
            if dst[1] != src[1] and dst[1] in ALLOWED_IMPORTS:
                if dst[1] not in ALLOWED_IMPORTS[src[1]]:
                    problems.append(f"{module} imports {target}: {src[1]} may not import {dst[1]}")
    problems = list(dict.fromkeys(problems))
    problems.extend(f"import cycle: {' -> '.join(c)}" for c in _cycles(graph))
    return problems


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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


def test_every_package_in_the_map_exists_and_every_package_is_in_the_map():
    packages = {
        p.name for p in Path(gateway.__file__).parent.iterdir() if (p / "__init__.py").exists()
    }
    assert packages == set(ALLOWED_IMPORTS)


def test_the_tree_keeps_the_import_map():
    assert scan(ROOT) == []


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_checker_catches_a_protocol_package_importing_the_app_layer(tmp_path):
    root = _tree(
        tmp_path,
        {
            "gateway/__init__.py": "",
            "gateway/app/__init__.py": "",
            "gateway/app/config.py": "",
            "gateway/pop3/__init__.py": "",
            "gateway/pop3/client.py": "def f():\n    from gateway.app.config import X\n",
        },
    )
    assert scan(root) == [
        "gateway.pop3.client imports gateway.app.config: pop3 may not import app",
    ]


def test_checker_catches_the_store_importing_a_protocol(tmp_path):
    root = _tree(
        tmp_path,
        {
            "gateway/__init__.py": "",
            "gateway/imap/__init__.py": "",
            "gateway/imap/wire.py": "",
            "gateway/store/__init__.py": "",
            "gateway/store/sqlite.py": "from gateway.imap import wire\n",
        },
    )
    assert scan(root) == [
        "gateway.store.sqlite imports gateway.imap.wire: store may not import imap"
    ]


def test_checker_catches_imports_of_tests_and_cycles(tmp_path):
    root = _tree(
        tmp_path,
        {
            "bench/__init__.py": "",
            "bench/peers.py": "from tests.support.dovecot import Dovecot\n",
            "gateway/__init__.py": "",
            "gateway/cli/__init__.py": "",
            "gateway/cli/main.py": "from gateway.cli import demo\n",
            "gateway/cli/demo.py": "from gateway.cli.main import run\n",
        },
    )
    problems = scan(root)
    assert "bench.peers imports tests.support.dovecot: nothing outside tests/ may" in problems
    assert "import cycle: gateway.cli.demo -> gateway.cli.main" in problems
