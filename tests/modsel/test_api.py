"""The public surface of ``modsel``: ``__all__`` pinned, every name in it real, and the exception
tree (as ``httpx``'s ``tests/test_exported_members.py`` does)."""

from __future__ import annotations

import inspect

import pytest

import modsel

EXPORTED = [
    "AttributeSelector",
    "ClassSelector",
    "Complex",
    "Compound",
    "Explanation",
    "Freeze",
    "HasPseudo",
    "IdSelector",
    "LogicalPseudo",
    "ModselError",
    "ModuleSelector",
    "NthPseudo",
    "Position",
    "PseudoClass",
    "Relative",
    "Rule",
    "Selector",
    "SelectorList",
    "SelectorSyntaxError",
    "Stylesheet",
    "TargetError",
    "Tree",
    "TypeSelector",
    "UniversalSelector",
    "compile",
    "explain",
    "freeze",
    "hooks",
    "match",
    "param_groups",
    "parse",
    "paths",
    "pseudo_classes",
    "render_html",
    "render_text",
    "select",
    "tap",
    "to_regex",
    "type_name",
    "unfreeze",
    "unwrap",
]


def test_all_is_pinned() -> None:
    assert modsel.__all__ == EXPORTED


def test_all_is_sorted_and_unique() -> None:
    assert modsel.__all__ == sorted(set(modsel.__all__))


@pytest.mark.parametrize("name", EXPORTED)
def test_every_exported_name_exists(name: str) -> None:
    assert getattr(modsel, name) is not None


def test_every_public_member_is_exported() -> None:
    """Nothing public hides outside ``__all__``; private modules stay private."""
    public = sorted(
        name
        for name, value in vars(modsel).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    )
    assert public == EXPORTED
    modules = [name for name, value in vars(modsel).items() if inspect.ismodule(value)]
    assert all(name.startswith("_") for name in modules), modules


def test_star_import() -> None:
    namespace: dict[str, object] = {}
    exec("from modsel import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == EXPORTED


def test_version() -> None:
    assert isinstance(modsel.__version__, str)
    assert modsel.__version__.count(".") >= 2


def test_exception_tree() -> None:
    assert issubclass(modsel.ModselError, Exception)
    assert not issubclass(modsel.ModselError, ValueError)
    assert issubclass(modsel.SelectorSyntaxError, modsel.ModselError)
    assert issubclass(modsel.SelectorSyntaxError, ValueError)
    assert issubclass(modsel.TargetError, modsel.ModselError)
    assert not issubclass(modsel.TargetError, ValueError)


def test_syntax_error_is_caught_by_all_three_names() -> None:
    for base in (modsel.SelectorSyntaxError, modsel.ModselError, ValueError):
        with pytest.raises(base):
            modsel.parse("A >")


def test_syntax_error_fields() -> None:
    err = modsel.SelectorSyntaxError("bad thing", "ab\ncd", 2, 2)
    assert (err.reason, err.pattern, err.line, err.column) == ("bad thing", "ab\ncd", 2, 2)
    assert str(err) == "bad thing at line 2, column 2\n  cd\n   ^"


def test_exported_classes_say_they_are_modsel() -> None:
    for name in EXPORTED:
        value = getattr(modsel, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__module__.startswith("modsel"), name
            assert value.__doc__, f"{name} has no docstring"


def test_callables() -> None:
    for name in (
        "compile",
        "explain",
        "match",
        "parse",
        "pseudo_classes",
        "render_html",
        "render_text",
        "select",
    ):
        assert callable(getattr(modsel, name)), name
    assert "first-child" in modsel.pseudo_classes()
    assert "not()" in modsel.pseudo_classes()
