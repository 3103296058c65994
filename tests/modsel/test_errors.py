"""Malformed stylesheets and selectors: every one raises ``modsel.SelectorSyntaxError`` (a
``ValueError``) with a 1-based line and column and a caret context, never a lark exception,
``RecursionError`` or ``IndexError``. A few messages are pinned in full.
"""

from __future__ import annotations

import re

import pytest

import modsel

_NAMES = "'#id', '*', '.class', '[', a pseudo-class or a type name"  # what may start a compound


def syntax_error(css: str) -> modsel.SelectorSyntaxError:
    with pytest.raises(modsel.SelectorSyntaxError) as info:
        modsel.parse(css)
    return info.value


def caret_char(err: modsel.SelectorSyntaxError) -> str:
    """The character of the context line that the caret points at ("" past its end)."""
    lines = str(err).split("\n")
    context, caret = lines[-2], lines[-1]
    assert caret.strip() == "^"
    at = caret.index("^")
    return context[at] if at < len(context) else ""


# ---- full messages -------------------------------------------------------------------------------

MESSAGES = [
    (
        "Linear:propA",
        "unknown pseudo-class ':propA' (to give props, put a space after the colon: ': propA')"
        " at line 1, column 7\n"
        "  Linear:propA\n"
        "        ^",
    ),
    (
        "Linear:frist-child",
        "unknown pseudo-class ':frist-child'; did you mean ':first-child' or ':last-child' or"
        " ':nth-child()'? (to give props, put a space after the colon: ': frist-child')"
        " at line 1, column 7\n"
        "  Linear:frist-child\n"
        "        ^",
    ),
    (
        "a: x,,y",
        "empty prop between commas at line 1, column 6\n  a: x,,y\n       ^",
    ),
    (
        ":is()",
        f"unexpected ')', expected {_NAMES} at line 1, column 5\n  :is()\n      ^",
    ),
    (
        ":has(:has(A))",
        # the caret points at the :has() that is nested, not at the outer one
        "':has()' cannot be nested inside ':has()' at line 1, column 6\n  :has(:has(A))\n       ^",
    ),
    (
        "::before",
        "pseudo-elements ('::') are not supported at line 1, column 1\n  ::before\n  ^",
    ),
    (
        "a|b",
        "namespaces ('|') are not supported at line 1, column 2\n  a|b\n   ^",
    ),
    (
        "A\x00B",
        "NUL character in selector at line 1, column 2\n  A\\x00B\n   ^",
    ),
    (
        "[a=b",
        "unexpected end of input, expected ']' or a flag (i or s) at line 1, column 5\n  [a=b\n      ^",
    ),
    (
        ":not(A",
        "unexpected end of input, expected ')' at line 1, column 7\n  :not(A\n        ^",
    ),
    (
        "A >",
        f"unexpected end of input, expected {_NAMES} at line 1, column 4\n  A >\n     ^",
    ),
    (
        "Linear: a\nReLU\nConv2d >> B",
        f"unexpected '>', expected {_NAMES} at line 3, column 9\n  Conv2d >> B\n          ^",
    ),
    (
        "A:",
        "unexpected end of input, expected a prop name (letters, digits, '_', '-') at line 1, column 3\n"
        "  A:\n"
        "    ^",
    ),
    (
        "[a<x]",
        "'<' compares numbers, but 'x' is not a number at line 1, column 4\n  [a<x]\n     ^",
    ),
    (
        "Linear*",
        "a type selector or '*' must come first in a compound, found '*' later at line 1, column 7\n"
        "  Linear*\n"
        "        ^",
    ),
    (
        ":not",
        "':not' needs an argument: write ':not(...)' at line 1, column 1\n  :not\n  ^",
    ),
]


@pytest.mark.parametrize(("css", "message"), MESSAGES, ids=[repr(css) for css, _ in MESSAGES])
def test_message(css: str, message: str) -> None:
    err = syntax_error(css)
    assert str(err) == message
    line, column = re.search(r"at line (\d+), column (\d+)\n", message).groups()  # type: ignore[union-attr]
    assert (err.line, err.column) == (int(line), int(column))
    assert err.pattern == css


def test_is_a_value_error_with_fields() -> None:
    with pytest.raises(ValueError, match="unknown pseudo-class"):
        modsel.parse("A\nB:bogus")
    err = syntax_error("A\nB:bogus")
    assert isinstance(err, modsel.ModselError)
    assert (err.line, err.column) == (2, 2)
    assert (
        err.reason == "unknown pseudo-class ':bogus' (to give props, put a space after the colon: ': bogus')"
    )


def test_multi_line_error_on_line_three() -> None:
    css = "Linear: a\n\n  ReLU > [in_features=1 x]: b\nTanh"
    err = syntax_error(css)
    assert err.line == 3
    assert err.column == 25  # the "x" (after the space that ends the value)
    assert str(err).split("\n")[-2] == "    ReLU > [in_features=1 x]: b"
    assert caret_char(err) == "x"


def test_caret_on_a_line_with_a_tab() -> None:
    err = syntax_error("A\t>> B")
    assert (err.line, err.column) == (1, 4)
    assert str(err).endswith("\n  A >> B\n     ^")


@pytest.mark.parametrize("css", ["A\u2028B >> C", "A\fB >> C", "A\x85B >> C"])
def test_caret_context_shows_the_line_lark_counted(css: str) -> None:
    """Only "\\n" ends a line for the position, so the context must split lines the same way."""
    err = syntax_error(css)
    assert err.line == 1
    assert caret_char(err) == ">"
    assert str(err).split("\n")[-2].endswith("B >> C")


def test_long_line_context_is_cut() -> None:
    css = "A" * 5000 + " >> B"
    err = syntax_error(css)
    assert (err.line, err.column) == (1, 5003)
    assert len(str(err)) < 400
    assert caret_char(err) == ">"


# ---- the reject corpus ---------------------------------------------------------------------------

REJECT = [
    "A >",
    "A +",
    "A ~",
    "> A",
    "A > > B",
    "A >> B",
    "A,",
    ",A",
    "A,,B",
    "A, ,B",
    "A\n, B",
    "A\n> B",
    "[",
    "[a",
    "[a=",
    "[a=b",
    '[a="x]',
    "[a='x]",
    "[=b]",
    "[a==b]",
    "[a=b c]",
    "[a b]",
    "[a<x]",
    "[a>=b]",
    "[a!=b i]",
    "[a=b]]",
    "]",
    ")",
    "(A)",
    "A)",
    ":has(A))",
    ":not(A",
    ":not()",
    ":is()",
    ":where()",
    ":has()",
    ":has(> )",
    ":has(:has(A))",
    ":has(:not(:has(A)))",
    ":nth-child()",
    ":nth-child(x)",
    ":nth-child(2n+)",
    ":nth-child(n of)",
    ":nth-child(odd of )",
    ":nth-child(2 n)",
    ":nth-of-type(2n of A)",
    ":not",
    ":nth-child",
    ":first-child()",
    ":frist-child",
    ":bogus(A)",
    "::before",
    "A::after",
    "a|b",
    "*|A",
    "&",
    "A &",
    "A\x00B",
    "\x00",
    "A:",
    "A: ",
    "A: x,",
    "A: x,,y",
    "A: x y",
    "A: x.y",
    "A: x!",
    "A: :x",
    "A: x:y",
    "Linear:propA",
    "A*",
    "#a*",
    "A B*",
    "#",
    ".",
    ":",
    "A#",
    "A.",
    "A /* unterminated",
    "/*",
    'A "str"',
    "'str'",
    "A\\",
    "A!",
    "A@b",
    "A=B",
    "A{}",
    "@media",
    ":not(:not(:not(",
    "A\nB\nC >",
]


@pytest.mark.parametrize("css", REJECT)
def test_rejected(css: str) -> None:
    err = syntax_error(css)
    lines = css.split("\n")
    assert 1 <= err.line <= len(lines)
    assert 1 <= err.column <= len(lines[err.line - 1]) + 1
    message = str(err)
    head, _context, caret = message.rsplit("\n", 2)
    assert head == f"{err.reason} at line {err.line}, column {err.column}"
    assert caret.strip() == "^"


@pytest.mark.parametrize("css", REJECT)
def test_rejected_messages_name_no_parser_internals(css: str) -> None:
    """Lark's terminal names (``_LEAD``, ``$END``, ``__ANON_0``) mean nothing to the user."""
    reason = syntax_error(css).reason
    assert not re.search(r"\$END|__ANON|\b_[A-Z]+\b|\b[A-Z]+_[A-Z_]+\b", reason), reason


@pytest.mark.parametrize(
    ("css", "char"),
    [
        ("A >> B", ">"),
        ("A,,B", ","),
        ("a|b", "|"),
        ("A::after", ":"),
        ("Linear:propA", ":"),
        ("[a=b c]", "c"),
        ("A: x y", "y"),
        ("A: x,,y", ","),
        ("[a!=b i]", "i"),
        ("Linear*", "*"),
        ("[a<x]", "x"),
        (":nth-child(x)", "x"),
        ("A\n  B >>", ">"),
    ],
)
def test_caret_points_at_the_offending_character(css: str, char: str) -> None:
    err = syntax_error(css)
    assert caret_char(err) == char, str(err)


def test_unexpected_character_is_the_one_under_the_caret() -> None:
    # the message names what it found; the caret must point at that
    for css in ["A: x y", "[a=b c]", "[a b]"]:
        err = syntax_error(css)
        found = re.match(r"unexpected '(.)'", err.reason)
        assert found is not None, err.reason
        assert caret_char(err) == found.group(1), str(err)


# ---- size and depth ------------------------------------------------------------------------------


def test_deep_nesting_without_closing() -> None:
    css = ":not(" * 10_000
    err = syntax_error(css)
    assert (err.line, err.column) == (1, len(css) + 1)


def test_deep_nesting_closed() -> None:
    css = ":not(" * 10_000 + "A" + ")" * 10_000
    err = syntax_error(css)
    assert "nest more than 32 levels" in err.reason


@pytest.mark.parametrize("opener", [":is(", ":has(", ":nth-child(1 of ", ":not(:is(", "[", "("])
def test_deep_nesting_other_openers(opener: str) -> None:
    syntax_error(opener * 10_000)
    syntax_error(opener * 10_000 + "A" + ")" * 10_000)


def test_nesting_limit_is_32() -> None:
    assert modsel.parse(":not(" * 32 + "A" + ")" * 32).rules
    err = syntax_error(":not(" * 33 + "A" + ")" * 33)
    assert err.reason == "selectors nest more than 32 levels deep"


def test_megabyte_name_parses() -> None:
    (rule,) = modsel.parse("#" + "a" * 1_000_000).rules
    assert str(rule.selectors) == "#" + "a" * 1_000_000


def test_megabyte_input_with_error_at_the_end() -> None:
    css = "A" * 999_999 + "!"
    err = syntax_error(css)
    assert (err.line, err.column) == (1, 1_000_000)
    assert len(str(err)) < 1000
    assert caret_char(err) == "!"


def test_megabyte_comment() -> None:
    assert len(modsel.parse("/*" + "x" * 1_000_000 + "*/ A").rules) == 1
    syntax_error("/*" + "x" * 200_000)  # unterminated


def test_megabyte_unknown_pseudo_class_message_stays_short() -> None:
    err = syntax_error("A:" + "b" * 1_000_000)
    assert (err.line, err.column) == (1, 2)
    assert len(str(err)) < 1000


# ---- compile: one selector list, no props --------------------------------------------------------


@pytest.mark.parametrize(
    ("css", "line", "column"),
    [("A; B", 1, 4), ("A\nB", 2, 1), ("A,\nB\nC", 3, 1), ("A;B: x", 1, 3)],
)
def test_compile_rejects_several_rules(css: str, line: int, column: int) -> None:
    with pytest.raises(modsel.SelectorSyntaxError) as info:
        modsel.compile(css)
    err = info.value
    assert err.reason == "expected one selector list, found several rules (a newline or ';' separates rules)"
    assert (err.line, err.column) == (line, column)


@pytest.mark.parametrize("css", ["A: x", "A:  all", ":is(A): x", "A, B: x, y", "A: all"])
def test_compile_rejects_props(css: str) -> None:
    with pytest.raises(modsel.SelectorSyntaxError) as info:
        modsel.compile(css)
    assert info.value.reason == "a selector takes no props; use modsel.select(model, css) for a stylesheet"


@pytest.mark.parametrize("css", ["", "   ", "\n\n", "/* c */", ";"])
def test_compile_rejects_empty_selector(css: str) -> None:
    with pytest.raises(modsel.SelectorSyntaxError) as info:
        modsel.compile(css)
    assert info.value.reason == "empty selector"


@pytest.mark.parametrize(
    "css", ["A,\nB", "A /* : */", "[a=': ']", '[a=": "]', "A:first-child", "#a\\:", "#\\3a ", "#a\\: > B"]
)
def test_compile_accepts_colons_that_are_not_props(css: str) -> None:
    assert modsel.compile(css).ast == modsel.parse(css).rules[0].selectors


def test_compile_reports_syntax_errors_too() -> None:
    with pytest.raises(modsel.SelectorSyntaxError) as info:
        modsel.compile("Linear:propA")
    assert (info.value.line, info.value.column) == (1, 7)


def test_empty_stylesheet_is_fine() -> None:
    assert modsel.parse("").rules == ()
    assert modsel.parse("\n /* nothing */ \n").rules == ()
