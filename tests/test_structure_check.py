"""scripts/check_structure.py on hand-built trees: each target fails when broken, holds at its limit, and the
exemptions it grants sit next to the violation it still catches (tests/test_scripts.py runs it on the real tree)."""

import textwrap

import pytest

CLEAN = {
    "import_cycles": [],
    "long_modules": {},
    "long_scripts": {},
    "long_functions": {},
    "many_parameters": {},
    "private_imports": [],
}


@pytest.fixture(scope="module")
def structure(load_script):
    return load_script("check_structure")


@pytest.fixture
def tree(tmp_path, structure):
    """``tree({relative path: source})`` writes a package tree under a fresh root and returns ``check(root)``."""

    def build(files: dict[str, str]):
        (tmp_path / "hf_videomoe").mkdir(exist_ok=True)
        (tmp_path / "scripts").mkdir(exist_ok=True)
        files = {"hf_videomoe/__init__.py": "", **files}
        for rel, source in files.items():
            path = tmp_path / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(source))
        return structure.check(tmp_path)

    return build


def test_a_tree_that_meets_every_target_is_clean(tree):
    result = tree({"hf_videomoe/a.py": "x = 1\n", "hf_videomoe/b.py": "from .a import x\n", "scripts/s.py": "y = 2\n"})
    assert result == CLEAN


def test_imports_under_type_checking_count(tree):
    """An annotation-only import is still a dependency: a loop through it is a loop, a private name through it is a
    private import."""
    result = tree(
        {
            "hf_videomoe/a.py": """
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from .b import _Hidden
            x = 1
        """,
            "hf_videomoe/b.py": "from .a import x\n_Hidden = int\n",
        }
    )
    assert result["import_cycles"] == [["hf_videomoe.a", "hf_videomoe.b"]]
    assert result["private_imports"] == ["hf_videomoe/a.py:4 imports _Hidden from hf_videomoe.b"]


@pytest.mark.parametrize("statement", ["from hf_videomoe.b import y", "import hf_videomoe.b", "from . import b"])
def test_imports_inside_functions_and_methods_count(tree, statement):
    """A loop hidden behind an import deferred to call time is a loop."""
    result = tree(
        {
            "hf_videomoe/a.py": f"""
            x = 1
            class Thing:
                def method(self):
                    {statement}
        """,
            "hf_videomoe/b.py": "from .a import x\ny = x\n",
        }
    )
    assert result["import_cycles"] == [["hf_videomoe.a", "hf_videomoe.b"]]
    # Without the deferred import there is no loop.
    assert tree({"hf_videomoe/a.py": "x = 1\n"})["import_cycles"] == []


def test_dunder_names_are_not_private_but_single_underscore_names_and_modules_are(tree):
    result = tree(
        {
            "hf_videomoe/a.py": "from .b import __version__\nfrom .b import _helper\nfrom ._impl import public\n",
            "hf_videomoe/b.py": "__version__ = '1'\ndef _helper():\n    pass\n",
            "hf_videomoe/_impl.py": "public = 1\n",
        }
    )
    assert result["private_imports"] == [
        "hf_videomoe/a.py:2 imports _helper from hf_videomoe.b",
        "hf_videomoe/a.py:3 imports from private module hf_videomoe._impl",
    ]


def test_re_exports_into_the_parent_package_are_not_cycles_but_other_package_loops_are(tree):
    files = {
        "hf_videomoe/sub/__init__.py": "from .m import f\nCONSTANT = 1\n",
        "hf_videomoe/sub/m.py": "from hf_videomoe.sub import CONSTANT\ndef f():\n    return CONSTANT\n",
    }
    assert tree(files)["import_cycles"] == []  # m -> its own package's __init__ (a re-export): exempt
    # A module outside the package that the package imports back is a real loop.
    files["hf_videomoe/sub/__init__.py"] = "from .m import f\nfrom hf_videomoe.x import y\nCONSTANT = 1\n"
    files["hf_videomoe/x.py"] = "from hf_videomoe.sub import CONSTANT\ny = CONSTANT\n"
    assert tree(files)["import_cycles"] == [["hf_videomoe.sub", "hf_videomoe.x"]]


def test_importing_a_submodule_runs_its_packages_init_so_a_loop_through_it_counts(tree):
    """``from hf_videomoe.b.n import g`` runs ``b/__init__`` first; when that imports back into ``a``, Python raises
    "partially initialized module": the check must see the loop a -> a.m -> b -> b.o -> a."""
    result = tree(
        {
            "hf_videomoe/a/__init__.py": "from .m import g\nf = 1\n",
            "hf_videomoe/a/m.py": "from ..b.n import g\n",
            "hf_videomoe/b/__init__.py": "from .o import h\n",
            "hf_videomoe/b/n.py": "g = 1\n",
            "hf_videomoe/b/o.py": "from ..a import f\nh = f\n",
        }
    )
    assert result["import_cycles"] == [["hf_videomoe.a", "hf_videomoe.a.m", "hf_videomoe.b", "hf_videomoe.b.o"]]


def test_plain_import_of_a_private_module_is_a_private_import(tree):
    result = tree({"hf_videomoe/a.py": "import hf_videomoe._impl\n", "hf_videomoe/_impl.py": "x = 1\n"})
    assert result["private_imports"] == ["hf_videomoe/a.py:1 imports private module hf_videomoe._impl"]


def test_from_package_import_module_depends_on_the_module(tree):
    """``from . import b`` is an edge to ``b`` itself, so a loop written that way is not hidden by the re-export
    exemption (``hf_videomoe`` is the importer's parent package)."""
    result = tree({"hf_videomoe/a.py": "from . import b\n", "hf_videomoe/b.py": "from . import a\n"})
    assert result["import_cycles"] == [["hf_videomoe.a", "hf_videomoe.b"]]


def test_module_and_script_line_limits_are_inclusive_and_separate(tree, structure):
    assert (structure.MAX_MODULE_LINES, structure.MAX_SCRIPT_LINES) == (420, 400)
    result = tree(
        {
            "hf_videomoe/ok.py": "x = 1\n" * 420,
            "hf_videomoe/sub/long.py": "x = 1\n" * 421,
            "scripts/ok.py": "x = 1\n" * 400,
            "scripts/long.py": "x = 1\n" * 401,
        }
    )
    assert result["long_modules"] == {"hf_videomoe/sub/long.py": 421}
    assert result["long_scripts"] == {"scripts/long.py": 401}


def function(name: str, lines: int, indent: str = "") -> str:
    """Source of a function of exactly ``lines`` lines, ``def`` line included."""
    body = "".join(f"{indent}    x{i} = {i}\n" for i in range(lines - 2))
    return f"{indent}def {name}():\n{body}{indent}    return 0\n"


def test_function_line_limit_is_inclusive_for_functions_methods_and_scripts(tree, structure):
    assert structure.MAX_FUNCTION_LINES == 120
    result = tree(
        {
            "hf_videomoe/a.py": function("ok", 120) + function("long", 121) + "class C:\n" + function("m", 121, "    "),
            "hf_videomoe/b.py": "def outer():\n" + function("_inner", 121, "    ") + "    return _inner\n",
            "scripts/tool.py": "import sys\n" + function("main", 121),
        }
    )
    assert result["long_functions"] == {
        "hf_videomoe/a.py:121 long": 121,
        "hf_videomoe/a.py:243 C.m": 121,
        "hf_videomoe/b.py:1 outer": 123,  # a private or nested function counts too
        "hf_videomoe/b.py:2 outer._inner": 121,
        "scripts/tool.py:2 main": 121,
    }


def test_parameter_limit_counts_public_functions_and_methods_only(tree, structure):
    assert structure.MAX_PARAMETERS == 15
    params = ", ".join(f"p{i}" for i in range(15))
    result = tree(
        {
            "hf_videomoe/a.py": f"""
            def ok({params}, *args, **kwargs): ...
            def too_many({params}, p15): ...
            def keyword_only({params}, *, p15=0): ...
            def positional_only(p15, /, {params}): ...
            def _private({params}, p15): ...
            def outer():
                def nested({params}, p15): ...
            class Public:
                def method(self, {params}): ...
                @classmethod
                def make(cls, {params}): ...
                def wide(self, {params}, p15): ...
                def __init__(self, {params}, p15): ...
            class _Private:
                def method(self, {params}, p15): ...
        """,
            "scripts/tool.py": f"def main({params}, p15): ...\n",
        }
    )
    assert result["many_parameters"] == {
        "hf_videomoe/a.py:3 too_many": 16,
        "hf_videomoe/a.py:4 keyword_only": 16,
        "hf_videomoe/a.py:5 positional_only": 16,
        "hf_videomoe/a.py:13 Public.wide": 16,
        "scripts/tool.py:1 main": 16,
    }


def test_scripts_are_checked_for_private_imports_but_are_not_package_modules(tree):
    """Scripts are not modules of the package: importing from them cannot make a package loop, but a private name a
    script takes from the package is reported."""
    result = tree(
        {
            "hf_videomoe/a.py": "x = 1\n_y = 2\n",
            "scripts/tool.py": "from hf_videomoe.a import x, _y\n",
            "scripts/other.py": "import hf_videomoe.a\n",
        }
    )
    assert result["import_cycles"] == []
    assert result["private_imports"] == ["scripts/tool.py:1 imports _y from hf_videomoe.a"]


def test_main_reports_each_target_and_exits_1_on_a_failure(tmp_path, tree, structure, capsys):
    tree({"hf_videomoe/a.py": "x = 1\n"})
    assert structure.main(["--root", str(tmp_path)]) == 0
    assert "all 6 targets hold" in capsys.readouterr().out
    tree({"hf_videomoe/a.py": "from .b import y\nx = 1\n", "hf_videomoe/b.py": "from .a import x\ny = 1\n"})
    assert structure.main(["--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  import loops" in out and "hf_videomoe.a, hf_videomoe.b" in out and "1 of 6 targets fail" in out
    assert "ok  scripts over 400 lines: 0" in out
