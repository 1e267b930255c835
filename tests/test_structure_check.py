"""scripts/check_structure.py on hand-built trees: the exemptions it grants, each next to the violation it still
catches (tests/test_scripts.py has one positive case per rule and the check on the real tree)."""

import textwrap

import pytest


@pytest.fixture
def tree(tmp_path, load_script):
    """``tree({relative path: source})`` writes a package tree under a fresh root and returns ``check(root)``."""
    module = load_script("check_structure")

    def build(files: dict[str, str]):
        (tmp_path / "hf_videomoe").mkdir(exist_ok=True)
        (tmp_path / "scripts").mkdir(exist_ok=True)
        files = {"hf_videomoe/__init__.py": "", **files}
        for rel, source in files.items():
            path = tmp_path / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(source))
        return module.check(tmp_path)

    build.max_lines = module.MAX_LINES
    return build


def test_imports_under_type_checking_make_no_cycle_and_no_private_import(tree):
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
    assert result == {"import_cycles": [], "long_modules": {}, "private_imports": []}
    # The same import at run time is both a cycle and a private import.
    result = tree({"hf_videomoe/a.py": "from .b import _Hidden\nx = 1\n"})
    assert result["import_cycles"] == [["hf_videomoe.a", "hf_videomoe.b"]]
    assert result["private_imports"] == ["hf_videomoe/a.py:1 imports _Hidden from hf_videomoe.b"]


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


def test_from_package_import_module_depends_on_the_module(tree):
    """``from . import b`` is an edge to ``b`` itself, so a loop written that way is not hidden by the re-export
    exemption (``hf_videomoe`` is the importer's parent package)."""
    result = tree({"hf_videomoe/a.py": "from . import b\n", "hf_videomoe/b.py": "from . import a\n"})
    assert result["import_cycles"] == [["hf_videomoe.a", "hf_videomoe.b"]]


def test_line_limit_is_inclusive(tree):
    limit = tree.max_lines
    assert limit == 500
    result = tree({"hf_videomoe/ok.py": "x = 1\n" * limit, "hf_videomoe/long.py": "x = 1\n" * (limit + 1)})
    assert result["long_modules"] == {"hf_videomoe/long.py": limit + 1}


def test_scripts_are_checked_for_private_imports_only(tree):
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
