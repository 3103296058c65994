"""The stylesheet language: rules, props, whitespace and comments, names and escapes, strings,
An+B, the AST (frozen, position-blind equality, canonical ``str``) and source positions.

Errors live in ``test_errors.py``; what selectors match lives in the selector test files.
"""

from __future__ import annotations

import dataclasses

import pytest

import modsel
from modsel import (
    AttributeSelector,
    ClassSelector,
    Complex,
    Compound,
    HasPseudo,
    IdSelector,
    LogicalPseudo,
    NthPseudo,
    Position,
    PseudoClass,
    Relative,
    Rule,
    SelectorList,
    Stylesheet,
    TypeSelector,
    UniversalSelector,
)


def rules(css: str) -> list[tuple[str, tuple[str, ...]]]:
    """(canonical selector text, props) of each rule."""
    return [(str(rule.selectors), rule.props) for rule in modsel.parse(css).rules]


def only_rule(css: str) -> Rule:
    (rule,) = modsel.parse(css).rules
    return rule


def only_simple(css: str) -> object:
    """The one simple selector of a one-rule, one-compound stylesheet."""
    (cx,) = only_rule(css).selectors.selectors
    (compound,) = cx.compounds
    (simple,) = compound.selectors
    return simple


def compound(*simples: object) -> Compound:
    return Compound(tuple(simples))  # type: ignore[arg-type]


def complex_(*parts: object) -> Complex:
    """complex_(A, ">", B, " ", C): compounds and combinators alternating."""
    compounds = tuple(p for p in parts[0::2])
    combinators = tuple(str(p) for p in parts[1::2])
    return Complex(compounds, combinators)  # type: ignore[arg-type]


def T(name: str) -> Compound:  # reads like the selector it builds
    return compound(TypeSelector(name))


# ---- rules and separators ------------------------------------------------------------------------


def test_seed_stylesheet() -> None:
    sheet = modsel.parse("SkipBlock #0: HookParam\nSkipBlock: HookModule")
    assert sheet == Stylesheet(
        (
            Rule(
                SelectorList((complex_(T("SkipBlock"), " ", compound(IdSelector("0"))),)),
                ("HookParam",),
            ),
            Rule(SelectorList((complex_(T("SkipBlock")),)), ("HookModule",)),
        )
    )


@pytest.mark.parametrize(
    "css",
    [
        "A\nB",
        "A;B",
        "A; B",
        "A ;B",
        "A;\nB",
        "A\n\n\nB",
        "A\r\nB",
        "\n\nA\n\nB\n\n",
        ";A;;B;",
        "  A  ;  B  ",
        "A\n   \n\t\nB",
        "/* one */\nA\n/* two */\nB\n/* three */",
        "A /* c */\n/* d */ B",
        "A; /* c */ ; B",
    ],
)
def test_rules_are_separated_by_newlines_or_semicolons(css: str) -> None:
    assert rules(css) == [("A", ("all",)), ("B", ("all",))]


@pytest.mark.parametrize("css", ["", " ", "\n", "\n\n  \n", ";", ";;\n;", "/* c */", "/* a */\n/* b */ ;"])
def test_empty_stylesheet_has_no_rules(css: str) -> None:
    assert modsel.parse(css).rules == ()


def test_rule_without_props_gets_all() -> None:
    assert only_rule("Linear").props == ("all",)
    assert only_rule("Linear, ReLU > *").props == ("all",)
    assert Rule(SelectorList((complex_(T("A")),))).props == ("all",)


@pytest.mark.parametrize(
    ("css", "props"),
    [
        ("A: x", ("x",)),
        ("A: HookParam, HookModule", ("HookParam", "HookModule")),
        ("A: x-y, z_1, 0abc, -lead, CAPS9", ("x-y", "z_1", "0abc", "-lead", "CAPS9")),
        ("A: x,y", ("x", "y")),
        ("A: x , y", ("x", "y")),
        ("A:  x", ("x",)),
        ("A:\tx", ("x",)),
        ("A : x", ("x",)),
        ("A /* c */: x", ("x",)),
        ("A: x /* c */, y", ("x", "y")),
        ("A: x /* trailing */", ("x",)),
        ("A: x   ", ("x",)),
        ("Linear:first-child: x", ("x",)),
        (":not(A): x", ("x",)),
        ("[a=1]: x", ("x",)),
        ("A: all", ("all",)),
    ],
)
def test_props(css: str, props: tuple[str, ...]) -> None:
    assert only_rule(css).props == props


def test_props_colon_needs_whitespace_after_it() -> None:
    # "A:first-child" is a pseudo-class; "A: first-child" gives the prop "first-child"
    assert rules("A:first-child") == [("A:first-child", ("all",))]
    assert rules("A: first-child") == [("A", ("first-child",))]


def test_props_then_next_rule() -> None:
    assert rules("A: x\nB: y, z;C") == [("A", ("x",)), ("B", ("y", "z")), ("C", ("all",))]


def test_seed_props_stylesheet() -> None:
    css = "\n#bulk > Linear: a\n#bulk > #1: b\nSkipBlock Sequential: c\nSkipBlock LeakyReLU\n"
    assert rules(css) == [
        ("#bulk > Linear", ("a",)),
        ("#bulk > #1", ("b",)),
        ("SkipBlock Sequential", ("c",)),
        ("SkipBlock LeakyReLU", ("all",)),
    ]


# ---- whitespace, combinators, comments -----------------------------------------------------------


@pytest.mark.parametrize(
    ("css", "canonical"),
    [
        ("A>B", "A > B"),
        ("A > B", "A > B"),
        ("A  >  B", "A > B"),
        ("A\t>\tB", "A > B"),
        ("A >\nB", "A > B"),
        ("A>\n\n  B", "A > B"),
        ("A+B", "A + B"),
        ("A +B", "A + B"),
        ("A~B", "A ~ B"),
        ("A ~ B", "A ~ B"),
        ("A B", "A B"),
        ("A   B", "A B"),
        ("A\tB", "A B"),
        ("A,B", "A, B"),
        ("A , B", "A, B"),
        ("A,\nB", "A, B"),
        ("A ,\n\n  B", "A, B"),
        ("A,\n  B,\n  C > D", "A, B, C > D"),
        ("A /* c */ B", "A B"),
        ("A/* c */B", "A B"),
        ("A/**/B", "A B"),
        ("A /* multi\nline */ B", "A B"),
        ("#a/* c */.b", "#a .b"),
        ("A /* c */ > /* d */ B", "A > B"),
        ("A, /* c */ B", "A, B"),
        ("  A > B  ", "A > B"),
    ],
)
def test_whitespace_and_comments_around_combinators(css: str, canonical: str) -> None:
    assert rules(css) == [(canonical, ("all",))]
    assert modsel.parse(css) == modsel.parse(canonical)


def test_descendant_combinator_through_comment_is_a_combinator() -> None:
    assert modsel.parse("A /* c */ B") == Stylesheet((Rule(SelectorList((complex_(T("A"), " ", T("B")),))),))


def test_combinator_structure() -> None:
    sheet = modsel.parse("A > B + C ~ D E, F")
    assert sheet == Stylesheet(
        (
            Rule(
                SelectorList(
                    (
                        complex_(T("A"), ">", T("B"), "+", T("C"), "~", T("D"), " ", T("E")),
                        complex_(T("F")),
                    )
                )
            ),
        )
    )


@pytest.mark.parametrize(
    ("css", "canonical"),
    [
        (":not( A )", ":not(A)"),
        (":not( A , B )", ":not(A, B)"),
        (":not(\nA)", ":not(A)"),
        (":not(A\n)", ":not(A)"),
        (":not(\n  A\n)", ":not(A)"),
        (":is(A,\nB)", ":is(A, B)"),
        (":is(A\n,B)", ":is(A, B)"),
        (":is(A\n B)", ":is(A B)"),
        (":is(A\n>\nB)", ":is(A > B)"),
        (":is(\n  A,\n  B\n)", ":is(A, B)"),
        (":has(\n> A\n)", ":has(> A)"),
        (":has(> A\n)", ":has(> A)"),
        (":nth-child(\n2n+1\n)", ":nth-child(2n+1)"),
        (":nth-child(2n+1\nof\nA\n)", ":nth-child(2n+1 of A)"),
        (":not(/* c */A/* d */)", ":not(A)"),
        (":not( /* c */ A)", ":not(A)"),
        ("[ a ]", "[a]"),
        ("[a = b]", "[a=b]"),
        ("[a= b]", "[a=b]"),
        ("[a =b]", "[a=b]"),
        ("[ a = b ]", "[a=b]"),
        ("[a != b]", "[a!=b]"),
        ("[a < 3]", "[a<3]"),
        ("[a >= 3]", "[a>=3]"),
        ("[a ^= b]", "[a^=b]"),
        ('[a = "b" i]', '[a="b" i]'),
        ("[\na\n=\nb\n]", "[a=b]"),
        ("[a=b\n]", "[a=b]"),
    ],
)
def test_whitespace_and_newlines_inside_brackets(css: str, canonical: str) -> None:
    """Inside () and [] a newline is plain whitespace (README, "The language")."""
    assert modsel.parse(css) == modsel.parse(canonical)


# ---- names and escapes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ("Linear", TypeSelector("Linear")),
        ("*", UniversalSelector()),
        ("#bulk", IdSelector("bulk")),
        ("#0", IdSelector("0")),
        ("#3d", IdSelector("3d")),
        ("#my-head", IdSelector("my-head")),
        ("#_x", IdSelector("_x")),
        (".Linear", ClassSelector("Linear")),
        ("#ünïcode", IdSelector("ünïcode")),
        ("Linéar", TypeSelector("Linéar")),
        ("#my\\ key", IdSelector("my key")),
        ("#with\\ space", IdSelector("with space")),
        ("#\\31 0", IdSelector("10")),
        ("#\\33 d", IdSelector("3d")),
        ("#\\30", IdSelector("0")),
        ("#a\\.b", IdSelector("a.b")),
        ("#a\\:b", IdSelector("a:b")),
        ("#\\<b\\>", IdSelector("<b>")),
        ("\\41 BC", TypeSelector("ABC")),
        (".\\31 x", ClassSelector("1x")),
        ("#\\000041", IdSelector("A")),
        ("#\\0", IdSelector("\ufffd")),
        ("#\\110000", IdSelector("\ufffd")),
    ],
)
def test_names_and_escapes(css: str, expected: object) -> None:
    assert only_simple(css) == expected


def test_names_are_case_sensitive() -> None:
    assert only_simple("linear") == TypeSelector("linear")
    assert only_simple("#Bulk") == IdSelector("Bulk")


# ---- attributes and strings ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ("[bias]", AttributeSelector("bias")),
        ("[in_features=32]", AttributeSelector("in_features", "=", "32")),
        ("[eps=1e-05]", AttributeSelector("eps", "=", "1e-05")),
        ("[a=-1.5]", AttributeSelector("a", "=", "-1.5")),
        ("[a=+1]", AttributeSelector("a", "=", "+1")),
        ("[a=.5]", AttributeSelector("a", "=", ".5")),
        ("[a<=3]", AttributeSelector("a", "<=", "3")),
        ("[a>=-2]", AttributeSelector("a", ">=", "-2")),
        ("[a<1e3]", AttributeSelector("a", "<", "1e3")),
        ("[a>0]", AttributeSelector("a", ">", "0")),
        ("[a!=3]", AttributeSelector("a", "!=", "3")),
        ("[a=b-c]", AttributeSelector("a", "=", "b-c")),
        ("[bias=false]", AttributeSelector("bias", "=", "false")),
        ('[a="32"]', AttributeSelector("a", "=", "32", quoted=True)),
        ("[a='x']", AttributeSelector("a", "=", "x", quoted=True)),
        ('[a=""]', AttributeSelector("a", "=", "", quoted=True)),
        ('[kernel_size="3,3"]', AttributeSelector("kernel_size", "=", "3,3", quoted=True)),
        ('[a="x y"]', AttributeSelector("a", "=", "x y", quoted=True)),
        ('[a="x\\"y"]', AttributeSelector("a", "=", 'x"y', quoted=True)),
        ("[a='it\\'s']", AttributeSelector("a", "=", "it's", quoted=True)),
        ("[a='say \"hi\"']", AttributeSelector("a", "=", 'say "hi"', quoted=True)),
        ('[a="a\\\\b"]', AttributeSelector("a", "=", "a\\b", quoted=True)),
        ('[a="\\41 B"]', AttributeSelector("a", "=", "AB", quoted=True)),
        ('[a="\\31 0"]', AttributeSelector("a", "=", "10", quoted=True)),
        ('[a="line\\\nnext"]', AttributeSelector("a", "=", "linenext", quoted=True)),
        ('[a="]"]', AttributeSelector("a", "=", "]", quoted=True)),
        ('[a=": x"]', AttributeSelector("a", "=", ": x", quoted=True)),
        ('[a="/* not a comment */"]', AttributeSelector("a", "=", "/* not a comment */", quoted=True)),
        ("[a~=b]", AttributeSelector("a", "~=", "b")),
        ("[a|=en]", AttributeSelector("a", "|=", "en")),
        ("[a^=b]", AttributeSelector("a", "^=", "b")),
        ("[a$=b]", AttributeSelector("a", "$=", "b")),
        ("[a*=b]", AttributeSelector("a", "*=", "b")),
        ("[a=b i]", AttributeSelector("a", "=", "b", flag="i")),
        ("[a=b I]", AttributeSelector("a", "=", "b", flag="i")),
        ("[a='b' s]", AttributeSelector("a", "=", "b", quoted=True, flag="s")),
        ("[my\\ attr=1]", AttributeSelector("my attr", "=", "1")),
    ],
)
def test_attributes(css: str, expected: AttributeSelector) -> None:
    assert only_simple(css) == expected


def test_string_with_separator_characters_is_one_rule() -> None:
    assert rules('[a="x;y"]: p') == [('[a="x;y"]', ("p",))]
    assert rules("[a='x, y'] B") == [('[a="x, y"] B', ("all",))]


# ---- pseudo-classes and An+B ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        (":first-child", PseudoClass("first-child")),
        (":FIRST-CHILD", PseudoClass("first-child")),
        (":First-Of-Type", PseudoClass("first-of-type")),
        (":ROOT", PseudoClass("root")),
        (":Empty", PseudoClass("empty")),
        (":\\66irst-child", PseudoClass("first-child")),
        (":Nth-Child(Odd)", NthPseudo("nth-child", 2, 1)),
        (":NTH-LAST-OF-TYPE(EVEN)", NthPseudo("nth-last-of-type", 2, 0)),
        (":NOT(A)", LogicalPseudo("not", SelectorList((complex_(T("A")),)))),
        (":Is(A)", LogicalPseudo("is", SelectorList((complex_(T("A")),)))),
        (":WHERE(A)", LogicalPseudo("where", SelectorList((complex_(T("A")),)))),
        (":HAS(> A)", HasPseudo((Relative(">", complex_(T("A"))),))),
        (":nth-child(2n+1 OF A)", NthPseudo("nth-child", 2, 1, SelectorList((complex_(T("A")),)))),
    ],
)
def test_pseudo_class_names_are_case_insensitive(css: str, expected: object) -> None:
    assert only_simple(css) == expected


def test_type_before_pseudo_keeps_its_case() -> None:
    assert only_rule("Linear:FIRST-CHILD").selectors == SelectorList(
        (complex_(compound(TypeSelector("Linear"), PseudoClass("first-child"))),)
    )


@pytest.mark.parametrize(
    ("anb", "a", "b"),
    [
        ("odd", 2, 1),
        ("ODD", 2, 1),
        ("Odd", 2, 1),
        ("even", 2, 0),
        ("EVEN", 2, 0),
        ("5", 0, 5),
        ("+5", 0, 5),
        ("-5", 0, -5),
        ("0", 0, 0),
        ("-n+3", -1, 3),
        ("-N+3", -1, 3),
        ("+n", 1, 0),
        ("n", 1, 0),
        ("N", 1, 0),
        ("-n", -1, 0),
        ("2n+1", 2, 1),
        ("2N+1", 2, 1),
        ("2n + 1", 2, 1),
        ("2n +1", 2, 1),
        ("2n+ 1", 2, 1),
        ("2n- 1", 2, -1),
        ("-2n-1", -2, -1),
        (" 3n - 2 ", 3, -2),
        ("+3n+4", 3, 4),
        ("10n", 10, 0),
        ("n-1", 1, -1),
        ("0n+0", 0, 0),
        ("0n+7", 0, 7),
        ("-0n+1", 0, 1),
        ("2n+0", 2, 0),
        ("n /* c */ + 1", 1, 1),
    ],
)
def test_anb(anb: str, a: int, b: int) -> None:
    for name in ("nth-child", "nth-last-child", "nth-of-type", "nth-last-of-type"):
        assert only_simple(f":{name}({anb})") == NthPseudo(name, a, b)


def test_nth_child_of_selector_list() -> None:
    assert only_simple(":nth-last-child(-n+2 of Linear, ReLU)") == NthPseudo(
        "nth-last-child", -1, 2, SelectorList((complex_(T("Linear")), complex_(T("ReLU"))))
    )


def test_has_relative_selectors() -> None:
    assert only_simple(":has(> A, + B, ~ C D, E > F)") == HasPseudo(
        (
            Relative(">", complex_(T("A"))),
            Relative("+", complex_(T("B"))),
            Relative("~", complex_(T("C"), " ", T("D"))),
            Relative(" ", complex_(T("E"), ">", T("F"))),
        )
    )


def test_compound_keeps_written_order() -> None:
    assert only_rule("Linear#0.Module[bias]:first-child").selectors == SelectorList(
        (
            complex_(
                compound(
                    TypeSelector("Linear"),
                    IdSelector("0"),
                    ClassSelector("Module"),
                    AttributeSelector("bias"),
                    PseudoClass("first-child"),
                )
            ),
        )
    )


# ---- the AST -------------------------------------------------------------------------------------

AST_CLASSES = [
    AttributeSelector,
    ClassSelector,
    Complex,
    Compound,
    HasPseudo,
    IdSelector,
    LogicalPseudo,
    NthPseudo,
    Position,
    PseudoClass,
    Relative,
    Rule,
    SelectorList,
    Stylesheet,
    TypeSelector,
    UniversalSelector,
]


@pytest.mark.parametrize("cls", AST_CLASSES, ids=lambda c: c.__name__)
def test_ast_classes_are_frozen_dataclasses(cls: type) -> None:
    assert dataclasses.is_dataclass(cls)
    assert cls.__dataclass_params__.frozen  # type: ignore[attr-defined]


def test_ast_nodes_cannot_be_changed() -> None:
    sheet = modsel.parse("A > B: x")
    rule = sheet.rules[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        rule.props = ("y",)  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        sheet.rules = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        rule.selectors.selectors[0].compounds[0].selectors[0].name = "C"  # type: ignore[union-attr]
    assert isinstance(sheet.rules, tuple)
    assert isinstance(rule.props, tuple)


def test_equality_and_hash_ignore_positions() -> None:
    a = modsel.parse("A > B, C: x")
    b = modsel.parse("\n\n   A>B ,\n  C  :   x")
    assert a.rules[0].position != b.rules[0].position
    assert a.rules[0].selectors.selectors[0].position != b.rules[0].selectors.selectors[0].position
    assert a == b
    assert hash(a) == hash(b)
    assert Compound((TypeSelector("A"),), Position(1, 1)) == Compound((TypeSelector("A"),), Position(9, 9))
    assert len({a, b, modsel.parse("A > B, C: y")}) == 2


def test_equality_sees_differences() -> None:
    assert modsel.parse("A > B") != modsel.parse("A B")
    assert modsel.parse("A: x") != modsel.parse("A: y")
    assert modsel.parse("A: x, y") != modsel.parse("A: y, x")
    assert modsel.parse("[a=1]") != modsel.parse('[a="1"]')  # a bare number compares as a number
    assert modsel.parse("A\nB") != modsel.parse("A, B")


ROUND_TRIP = [
    "Linear",
    "*",
    "#bulk",
    "#0",
    ".Linear",
    "Linear#0.Module",
    "*#root",
    "[in_features]",
    "[in_features=32]",
    "[eps=1e-05]",
    '[a="x y"]',
    "[a='it\\'s']",
    '[a="q\\"q"]',
    '[a="back\\\\slash"]',
    '[a="tab\\9 x"]',
    '[a="new\\a line"]',
    "[a^=b]",
    '[a$="b" i]',
    "[a*=b s]",
    "[a~=b]",
    "[a|=en]",
    "[a!=3]",
    "[a<3]",
    "[a<=-3.5]",
    "[a>=+3]",
    '[kernel_size="3,3"]',
    "[a=b\\ c]",
    "[a=b\\,c]",
    ":first-child",
    ":last-child:only-child",
    ":empty",
    ":scope > *",
    ":first-of-type :last-of-type :only-of-type",
    ":not(Linear)",
    ":not(Linear, ReLU)",
    ":is(A > B, C ~ D)",
    ":where(A + B)",
    ":has(> Linear)",
    ":has(+ ReLU, ~ A)",
    ":has(A > B)",
    ":nth-child(odd)",
    ":nth-child(even)",
    ":nth-child(-n+3)",
    ":nth-child(2n+1 of Linear, ReLU)",
    ":nth-last-child(5)",
    ":nth-of-type(3n-2)",
    ":nth-last-of-type(n)",
    "A B > C + D ~ E",
    "A, B, C",
    "#my\\ key",
    "#\\31 0",
    "#ünïcode",
    "#a\\.b",
    "#\\[x\\]",
    "#\\<b\\>",
    "#tab\\9 x",
    "Sequential:not(:has(Linear)) > :nth-child(2n of :is(Linear, ReLU))",
    "SkipBlock #0: HookParam\nSkipBlock: HookModule",
    "A: x, y; B > C: z",
]


@pytest.mark.parametrize("css", ROUND_TRIP)
def test_str_round_trips(css: str) -> None:
    sheet = modsel.parse(css)
    text = str(sheet)
    assert modsel.parse(text) == sheet
    assert str(modsel.parse(text)) == text  # canonical: a second round gives the same text


def test_str_is_canonical_css() -> None:
    assert str(modsel.parse("A>B , C  ~D:  x,y")) == "A > B, C ~ D: x, y"
    assert str(modsel.parse("a\nb")) == "a: all\nb: all"
    assert str(modsel.parse(":nth-child( ODD )")) == ":nth-child(2n+1): all"
    assert str(modsel.parse(":NOT( A ,B )")) == ":not(A, B): all"
    assert str(modsel.parse(":has(>A)")) == ":has(> A): all"


# ---- positions -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("css", "positions"),
    [
        ("SkipBlock #0: HookParam\nSkipBlock: HookModule", [(1, 1), (2, 1)]),
        ("A", [(1, 1)]),
        ("  A  ;  B  ", [(1, 3), (1, 9)]),
        ("\n\n  A\n\t B", [(3, 3), (4, 3)]),
        ("/* c */ A; /* x */B", [(1, 9), (1, 19)]),
        ("A,\n  B: x\nC", [(1, 1), (3, 1)]),
        ("/* multi\nline */ A", [(2, 9)]),
        ("A\n/* c */\nB", [(1, 1), (3, 1)]),
        ("A\r\nB", [(1, 1), (2, 1)]),
        (":not(A)\n  #x", [(1, 1), (2, 3)]),
        ("[a=1] B", [(1, 1)]),
        ("  [a]", [(1, 3)]),
        ("A\n.c; [d]", [(1, 1), (2, 1), (2, 5)]),
    ],
)
def test_rule_positions(css: str, positions: list[tuple[int, int]]) -> None:
    got = [(rule.position.line, rule.position.column) for rule in modsel.parse(css).rules]
    assert got == positions


def test_compound_positions() -> None:
    (cx,) = only_rule("A > B\tC").selectors.selectors
    assert [(c.position.line, c.position.column) for c in cx.compounds] == [(1, 1), (1, 5), (1, 7)]
    (first, second) = only_rule("A,\n  B").selectors.selectors
    assert (second.position.line, second.position.column) == (2, 3)
    assert (first.position.line, first.position.column) == (1, 1)


def test_stylesheet_keeps_its_source() -> None:
    css = "A > B: x\n"
    assert modsel.parse(css).source == css


# ---- caching -------------------------------------------------------------------------------------


def test_parse_is_cached() -> None:
    css = "Linear > ReLU: test_parse_is_cached"
    first = modsel.parse(css)
    assert modsel.parse(css) is first
    assert modsel.parse("Linear > ReLU: other") is not first


def test_parse_takes_only_text() -> None:
    with pytest.raises(TypeError):
        modsel.parse(b"Linear")  # type: ignore[arg-type]
