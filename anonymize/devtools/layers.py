"""The package's layers: every import points down (or stays inside its own package), and no module
imports itself back through others. Deferred imports inside functions count; imports under
``if TYPE_CHECKING:`` do not (they never run).

Usage: ``python -m anonymize.devtools.layers`` prints each violation on one line and exits 1 if any.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

# Bottom to top; a package may import its own modules and any package of a lower layer. Packages of
# one layer are independent of each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors",),
    ("io", "weights"),
    ("models",),
    ("faces",),
    ("metrics",),
    ("attributes", "adversarial"),
    ("methods",),
    ("steps",),
    ("run",),
    ("audit",),
    ("cli", "devtools"),
    ("__main__",),
)
ROOT_PACKAGE = "anonymize"
PACKAGE_DIR = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Import:
    source: str  # importing module, dotted
    target: str  # imported module, dotted (the deepest one that exists)
    line: int


def layer_of(package: str) -> int:
    for index, members in enumerate(LAYERS):
        if package in members:
            return index
    raise KeyError(f"{package!r} is in no layer of anonymize.devtools.layers.LAYERS: add it where it belongs")


def module_files(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    files = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = (ROOT_PACKAGE, *path.relative_to(package_dir).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    return files


class _Imports(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool) -> None:
        self.module, self.is_package = module, is_package
        self.found: list[tuple[str, int]] = []

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found += [(alias.name, node.lineno) for alias in node.names]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            parts = self.module.split(".") if self.is_package else self.module.split(".")[:-1]
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join([*parts, *([node.module] if node.module else [])])
        self.found.append((base, node.lineno))
        self.found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]


def imports(files: dict[str, Path]) -> list[Import]:
    """Every import of a module of the package by another, resolved to the deepest module that exists."""
    found: dict[tuple[str, str], int] = {}
    for module, path in files.items():
        visitor = _Imports(module, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        for name, line in visitor.found:
            while name and name not in files:
                name = name.rpartition(".")[0]
            if name and name != module and name.startswith(ROOT_PACKAGE + "."):
                found.setdefault((module, name), line)
    return [Import(source, target, line) for (source, target), line in sorted(found.items())]


def _package(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def upward_imports(found: list[Import]) -> list[str]:
    """One line per import that points up the layers or across a layer."""
    problems = []
    for item in found:
        source, target = _package(item.source), _package(item.target)
        if not source or not target or source == target:
            continue
        if layer_of(target) >= layer_of(source):
            where = "up" if layer_of(target) > layer_of(source) else "across"
            problems.append(f"{item.source} (line {item.line}) imports {item.target}: {source} -> {target} points {where} the layers")
    return problems


def cycles(found: list[Import], modules: list[str]) -> list[list[str]]:
    """Strongly connected sets of more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = defaultdict(set)
    for item in found:
        graph[item.source].add(item.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            members = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                members.append(member)
                if member == node:
                    break
            if len(members) > 1:
                out.append(sorted(members))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(modules) + 100))
    for module in modules:
        if module not in index:
            visit(module)
    return out


def main() -> int:
    files = module_files()
    found = imports(files)
    problems = upward_imports(found) + [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(found, list(files))]
    for line in problems:
        print(line)
    print(f"{len(files)} modules, {len(found)} imports between them, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
