"""Structure targets of the codebase (issue: the refactor), checked from the source alone (no imports run).

    python scripts/check_structure.py            # prints the report, exit 1 if a target fails

Targets: no import loop between modules of ``hf_videomoe``; no module over 500 lines; no underscore (private) name
imported from another module, in the package or in ``scripts/``.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

MAX_LINES = 500


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def scan(root: Path, package: str = "hf_videomoe"):
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        modules[module_name(path, root)] = path
    imports: dict[str, set[str]] = {name: set() for name in modules}
    private: list[str] = []
    files = list(modules.items()) + [(f"scripts.{p.stem}", p) for p in sorted((root / "scripts").glob("*.py"))]
    for name, path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        type_checking_only = {
            id(child)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for stmt in node.body
            for child in ast.walk(stmt)
        }
        for node in ast.walk(tree):
            if id(node) in type_checking_only:  # annotations only: never imported at run time
                continue
            if isinstance(node, ast.ImportFrom):
                target = resolve(node, name, is_package)
                if any(part.startswith("_") and not part.startswith("__") for part in target.split(".")):
                    private.append(f"{path.relative_to(root)}:{node.lineno} imports from private module {target}")
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        private.append(f"{path.relative_to(root)}:{node.lineno} imports {alias.name} from {target}")
                    # `from package import module` depends on the module itself.
                    candidate = f"{target}.{alias.name}"
                    dependency = candidate if candidate in modules else target
                    if name in imports and dependency in modules and dependency != name:
                        imports[name].add(dependency)
            elif isinstance(node, ast.Import) and name in imports:
                for alias in node.names:
                    if alias.name in modules:
                        imports[name].add(alias.name)
    return modules, imports, private


def import_cycles(imports: dict[str, set[str]]) -> list[list[str]]:
    """Cycles between modules, ignoring edges into a package's own ``__init__`` (re-exports)."""

    def parent_packages(name: str) -> set[str]:
        parts = name.split(".")
        return {".".join(parts[:i]) for i in range(1, len(parts))}

    graph = {name: {d for d in deps if d not in parent_packages(name)} for name, deps in imports.items()}
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def strongconnect(node):  # Tarjan's algorithm
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                strongconnect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            strongconnect(node)
    return cycles


def check(root: Path) -> dict:
    modules, imports, private = scan(root)
    long_modules = {
        str(path.relative_to(root)): n
        for path in modules.values()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    return {"import_cycles": import_cycles(imports), "long_modules": long_modules, "private_imports": private}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[1]))
    args = parser.parse_args(argv)
    result = check(Path(args.root))
    failed = False
    for key, title in (
        ("import_cycles", "import loops"),
        ("long_modules", f"modules over {MAX_LINES} lines"),
        ("private_imports", "underscore names imported from another module"),
    ):
        items = result[key]
        print(f"{title}: {len(items)}")
        for item in items.items() if isinstance(items, dict) else items:
            print(f"  {item}")
        failed |= bool(items)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
