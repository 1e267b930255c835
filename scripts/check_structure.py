"""Check the structure targets of the codebase from the source alone (nothing is imported or run).

    python scripts/check_structure.py            # prints the report, exit 1 if a target fails

Targets:

- no import loop between modules of ``hf_videomoe``; every import counts, also one under ``if TYPE_CHECKING:`` or
  inside a function (edges into a module's own parent package, i.e. re-exports, do not make a loop);
- no module of ``hf_videomoe`` over 420 lines, no script in ``scripts/`` over 400 lines;
- no function or method, in the package or in ``scripts/``, over 120 lines (``def`` line to last line);
- no public function or method (no part of its qualified name starts with ``_``, not nested in a function) with more
  than 15 parameters, ``self`` / ``cls`` not counted and ``*args`` / ``**kwargs`` counting 0;
- no underscore (private) name or module imported from another module, in the package or in ``scripts/``.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

MAX_MODULE_LINES = 420
MAX_SCRIPT_LINES = 400
MAX_FUNCTION_LINES = 120
MAX_PARAMETERS = 15


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


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def source_files(root: Path, package: str = "hf_videomoe") -> tuple[dict[str, Path], list[tuple[str, Path]]]:
    """The package's modules by dotted name, and every file checked: those modules, then ``scripts/*.py``."""
    modules = {module_name(path, root): path for path in sorted((root / package).rglob("*.py"))}
    scripts = [(f"scripts.{path.stem}", path) for path in sorted((root / "scripts").glob("*.py"))]
    return modules, list(modules.items()) + scripts


def scan_imports(name: str, path: Path, tree: ast.AST, modules: dict[str, Path], root: Path):
    """The package modules ``name`` imports (every import statement, wherever it is) and its private imports."""
    dependencies: set[str] = set()
    private: list[str] = []
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = resolve(node, name, is_package)
            if any(is_private(part) for part in target.split(".")):
                private.append(f"{path.relative_to(root)}:{node.lineno} imports from private module {target}")
            for alias in node.names:
                if is_private(alias.name):
                    private.append(f"{path.relative_to(root)}:{node.lineno} imports {alias.name} from {target}")
                # `from package import module` depends on the module itself.
                candidate = f"{target}.{alias.name}"
                dependencies.add(candidate if candidate in modules else target)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if any(is_private(part) for part in alias.name.split(".")):
                    private.append(f"{path.relative_to(root)}:{node.lineno} imports private module {alias.name}")
                dependencies.add(alias.name)
    # Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first: a loop through a package's __init__ is a loop.
    dependencies |= {parent for dependency in dependencies for parent in parent_packages(dependency)}
    return {d for d in dependencies if d in modules and d != name}, private


def parent_packages(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def scan_functions(path: Path, tree: ast.AST, root: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Functions over ``MAX_FUNCTION_LINES`` lines, and public ones with over ``MAX_PARAMETERS`` parameters."""
    long_functions: dict[str, int] = {}
    many_parameters: dict[str, int] = {}

    def visit(node: ast.AST, qualname: str, public: bool) -> None:
        """``public``: ``node`` is the module or a public class, not nested in a function."""
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, f"{qualname}{child.name}.", public and not child.name.startswith("_"))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                where = f"{path.relative_to(root)}:{child.lineno} {qualname}{child.name}"
                if (lines := child.end_lineno - child.lineno + 1) > MAX_FUNCTION_LINES:
                    long_functions[where] = lines
                parameters = [*child.args.posonlyargs, *child.args.args, *child.args.kwonlyargs]
                if parameters and parameters[0].arg in ("self", "cls") and isinstance(node, ast.ClassDef):
                    parameters = parameters[1:]
                if public and not child.name.startswith("_") and len(parameters) > MAX_PARAMETERS:
                    many_parameters[where] = len(parameters)
                visit(child, f"{qualname}{child.name}.", False)  # nested functions are not public
            else:
                visit(child, qualname, public)

    visit(tree, "", True)
    return long_functions, many_parameters


def import_cycles(imports: dict[str, set[str]]) -> list[list[str]]:
    """Cycles between modules, ignoring edges into a module's own parent packages: those ``__init__`` files are
    already running when the module is imported (they re-export it), so the edge back is not a new import."""

    graph = {name: {d for d in deps if d not in parent_packages(name)} for name, deps in imports.items()}
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def strongconnect(node):  # Tarjan's algorithm
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
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
    return sorted(cycles)


def line_counts(paths, root: Path, limit: int) -> dict[str, int]:
    return {str(path.relative_to(root)): n for path in paths if (n := len(path.read_text().splitlines())) > limit}


def check(root: Path, package: str = "hf_videomoe") -> dict:
    """Every target's violations (empty when it holds), by the keys of ``TITLES``."""
    modules, files = source_files(root, package)
    imports: dict[str, set[str]] = {}
    private: list[str] = []
    long_functions: dict[str, int] = {}
    many_parameters: dict[str, int] = {}
    for name, path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        dependencies, found = scan_imports(name, path, tree, modules, root)
        if name in modules:  # scripts are not modules of the package: importing from them makes no package loop
            imports[name] = dependencies
        private += found
        too_long, too_many = scan_functions(path, tree, root)
        long_functions.update(too_long)
        many_parameters.update(too_many)
    scripts = [path for name, path in files if name not in modules]
    return {
        "import_cycles": import_cycles(imports),
        "long_modules": line_counts(modules.values(), root, MAX_MODULE_LINES),
        "long_scripts": line_counts(scripts, root, MAX_SCRIPT_LINES),
        "long_functions": long_functions,
        "many_parameters": many_parameters,
        "private_imports": private,
    }


# key of check()'s result -> (title, unit of the counts it maps to)
TITLES = {
    "import_cycles": ("import loops (modules in each loop)", ""),
    "long_modules": (f"modules of the package over {MAX_MODULE_LINES} lines", "lines"),
    "long_scripts": (f"scripts over {MAX_SCRIPT_LINES} lines", "lines"),
    "long_functions": (f"functions over {MAX_FUNCTION_LINES} lines", "lines"),
    "many_parameters": (f"public functions over {MAX_PARAMETERS} parameters", "parameters"),
    "private_imports": ("underscore names imported from another module", ""),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[1]))
    args = parser.parse_args(argv)
    result = check(Path(args.root))
    failed = [key for key in TITLES if result[key]]
    for key, (title, unit) in TITLES.items():
        items = result[key]
        print(f"{'FAIL' if items else 'ok'}  {title}: {len(items)}")
        for item in items:
            if isinstance(items, dict):
                print(f"      {item}: {items[item]} {unit}")
            else:
                print(f"      {', '.join(item) if key == 'import_cycles' else item}")
    print(f"{len(failed)} of {len(TITLES)} targets fail" if failed else f"all {len(TITLES)} targets hold")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
