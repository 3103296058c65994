"""Property tests: random text never escapes as anything but ``SelectorSyntaxError``; generated
valid selectors always parse, print back to an equal AST and match without raising."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import modsel

from .models import Shared, Weird, network

FUZZ = settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
GEN = settings(deadline=None, max_examples=100, suppress_health_check=[HealthCheck.too_slow])

MODELS = [network(), Shared(), Weird()]

# ---- (1) arbitrary selector-ish text -------------------------------------------------------------------

ALPHABET = [*"abAB01n#.:[]()=~|^$*!<>+,;\"' \n\t-_/\\", "é", "ü", "\u2603", "\x00", "\r", "\f"]
CHUNKS = [*ALPHABET, ":not(", ":is(", ":has(", ":nth-child(", "/*", "*/", "odd", " of ", "Linear", "#0", ": "]
selectorish = st.lists(st.sampled_from(CHUNKS), max_size=30).map("".join)


def _check_error(text: str, err: modsel.SelectorSyntaxError) -> None:
    assert isinstance(err, ValueError)
    assert err.pattern == text
    lines = text.split("\n")
    assert 1 <= err.line <= len(lines), (err.line, len(lines))
    assert 1 <= err.column <= len(lines[err.line - 1]) + 1, (err.column, lines[err.line - 1])
    head = str(err).rsplit("\n", 2)[0]
    assert head == f"{err.reason} at line {err.line}, column {err.column}"


@FUZZ
@given(selectorish)
def test_random_text_parses_or_raises_syntax_error(text: str) -> None:
    try:
        modsel.parse(text)
    except modsel.SelectorSyntaxError as err:
        _check_error(text, err)


@FUZZ
@given(st.text(alphabet=st.sampled_from(ALPHABET), max_size=40))
def test_random_characters_parse_or_raise_syntax_error(text: str) -> None:
    try:
        modsel.parse(text)
    except modsel.SelectorSyntaxError as err:
        _check_error(text, err)


@FUZZ
@given(selectorish)
def test_random_text_that_parses_round_trips(text: str) -> None:
    try:
        sheet = modsel.parse(text)
    except modsel.SelectorSyntaxError:
        return
    assert modsel.parse(str(sheet)) == sheet


@FUZZ
@given(selectorish)
def test_random_text_compiles_or_raises_syntax_error(text: str) -> None:
    try:
        selector = modsel.compile(text)
    except modsel.SelectorSyntaxError:
        return
    for model in MODELS:
        selector.match(model)


# ---- (2) generated valid selectors ---------------------------------------------------------------

TYPES = ["Linear", "LeakyReLU", "ReLU", "SkipBlock", "Sequential", "Network", "ModuleDict", "Conv3d", "X"]
IDS = ["bulk", "seq", "root", "heads", "a", "b", "c", "inner", "0", "1", "2", "5", "3d", "my-head"]
CLASSES = ["Module", "Linear", "Sequential", "Conv3d", "_ConvNd", "Nope"]
ATTRS = [
    "in_features",
    "out_features",
    "bias",
    "weight",
    "negative_slope",
    "inplace",
    "training",
    "path",
    "zz",
]
SIMPLE_PSEUDOS = [
    "root",
    "scope",
    "empty",
    "first-child",
    "last-child",
    "only-child",
    "first-of-type",
    "last-of-type",
    "only-of-type",
]

_plain_name = st.text(alphabet="abcXYZ019_-", min_size=1, max_size=6).filter(
    lambda s: not re.match(r"-?\d|--", s)  # keep clear of number-like and custom-property-like names
)


def css_escape(name: str) -> str:
    """Write any name as a CSS identifier (our own escaping, independent of modsel's)."""
    out = []
    for ch in name:
        plain_ascii = ch.isascii() and (ch.isalnum() or ch in "_-")
        if plain_ascii or (not ch.isascii() and ch.isprintable()):
            out.append(ch)
        else:
            out.append(f"\\{ord(ch):x} ")
    return "".join(out)


# any name but NUL and surrogates (CSS maps those to U+FFFD), written with escapes
_any_name = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=6
)


def _ws(newlines: bool) -> st.SearchStrategy[str]:
    chars = " \t\n" if newlines else " \t"
    return st.one_of(st.just(""), st.text(alphabet=chars, min_size=1, max_size=2), st.just(" /* c */ "))


def _quoted(value: str, quote: str) -> str:
    body = "".join(
        f"\\{ch}" if ch in (quote, "\\") else (f"\\{ord(ch):x} " if ch in "\r\n\f" else ch) for ch in value
    )
    return quote + body + quote


_number = st.one_of(
    st.integers(-1000, 1000).map(str),
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["1e-05", ".5", "+3", "-0.25"]),
)


@st.composite
def attribute(draw: st.DrawFn, loose: bool) -> str:
    name = draw(st.sampled_from(ATTRS))
    kind = draw(st.sampled_from(["exists", "string", "bare", "number", "compare"]))
    if kind == "exists":
        return f"[{name}]"
    flag = ""
    if kind == "compare":
        op, value = draw(st.sampled_from(["<", "<=", ">", ">=", "=", "!="])), draw(_number)
    elif kind == "number":
        op, value = draw(st.sampled_from(["=", "!="])), draw(_number)
    else:
        op = draw(st.sampled_from(["=", "~=", "|=", "^=", "$=", "*=", "!="]))
        flag = "" if op == "!=" else draw(st.sampled_from(["", " i", " s", " I"]))
        if kind == "bare":
            value = draw(st.one_of(_plain_name, st.sampled_from(["true", "false", "10", "bulk.2"])))
        else:
            text = draw(st.text(max_size=6).filter(lambda s: "\x00" not in s))
            value = _quoted(text, draw(st.sampled_from("\"'")))
    ws = [draw(_ws(newlines=True)) if loose else "" for _ in range(4)]
    return f"[{ws[0]}{name}{ws[1]}{op}{ws[2]}{value}{flag}{ws[3]}]"


@st.composite
def anb_written(draw: st.DrawFn) -> tuple[str, int, int]:
    """(An+B text in one of its many spellings, a, b)."""
    a = draw(st.integers(-12, 12))
    b = draw(st.integers(-12, 12))
    if (a, b) == (2, 1) and draw(st.booleans()):
        return draw(st.sampled_from(["odd", "ODD", "Odd"])), a, b
    if (a, b) == (2, 0) and draw(st.booleans()):
        return draw(st.sampled_from(["even", "EVEN"])), a, b
    if a == 0 and draw(st.booleans()):
        return (f"{b:+d}" if draw(st.booleans()) else str(b)), a, b
    if a == 1:
        an = draw(st.sampled_from(["n", "+n", "1n", "+1n", "N"]))
    elif a == -1:
        an = draw(st.sampled_from(["-n", "-1n", "-N"]))
    else:
        an = f"{a}n"
    if b == 0 and draw(st.booleans()):
        return an, a, b
    sign = "+" if b >= 0 else "-"
    sp1, sp2 = draw(st.sampled_from([("", ""), (" ", " "), (" ", ""), ("", " ")]))
    return f"{an}{sp1}{sign}{sp2}{abs(b)}", a, b


def anb() -> st.SearchStrategy[str]:
    return anb_written().map(lambda t: t[0])


@st.composite
def compound(draw: st.DrawFn, depth: int, in_has: bool, loose: bool) -> str:
    parts: list[str] = []
    lead = draw(st.sampled_from(["type", "universal", "none"]))
    if lead == "type":
        parts.append(draw(st.sampled_from(TYPES)))
    elif lead == "universal":
        parts.append("*")
    n = draw(st.integers(0 if parts else 1, 2))
    for _ in range(n):
        kinds = ["id", "escaped-id", "class", "attribute", "pseudo"]
        if depth > 0:
            kinds += ["logical", "nth", "nth-of"] + ([] if in_has else ["has"])
        kind = draw(st.sampled_from(kinds))
        if kind == "id":
            parts.append("#" + draw(st.sampled_from(IDS)))
        elif kind == "escaped-id":
            parts.append("#" + css_escape(draw(_any_name)))
        elif kind == "class":
            parts.append("." + draw(st.sampled_from(CLASSES)))
        elif kind == "attribute":
            parts.append(draw(attribute(loose)))
        elif kind == "pseudo":
            name = draw(st.sampled_from(SIMPLE_PSEUDOS))
            parts.append(":" + (name.upper() if draw(st.booleans()) else name))
        elif kind == "logical":
            name = draw(st.sampled_from(["not", "is", "where"]))
            inner = draw(selector_list(depth - 1, in_has, loose))
            parts.append(f":{name}({_pad(draw, loose)}{inner}{_pad(draw, loose)})")
        elif kind == "nth":
            name = draw(st.sampled_from(["nth-child", "nth-last-child", "nth-of-type", "nth-last-of-type"]))
            parts.append(f":{name}({_pad(draw, loose)}{draw(anb())}{_pad(draw, loose)})")
        elif kind == "nth-of":
            name = draw(st.sampled_from(["nth-child", "nth-last-child"]))
            inner = draw(selector_list(depth - 1, in_has, loose))
            parts.append(f":{name}({draw(anb())} of {inner}{_pad(draw, loose)})")
        else:
            rels = []
            for _ in range(draw(st.integers(1, 2 if depth > 1 else 1))):
                comb = draw(st.sampled_from(["", "> ", "+ ", "~ "]))
                rels.append(comb + draw(complex_selector(depth - 1, True, loose)))
            parts.append(f":has({_pad(draw, loose)}{', '.join(rels)}{_pad(draw, loose)})")
    return "".join(parts)


def _pad(draw: st.DrawFn, loose: bool) -> str:
    return draw(_ws(newlines=True)) if loose else ""


@st.composite
def complex_selector(draw: st.DrawFn, depth: int, in_has: bool, loose: bool) -> str:
    out = draw(compound(depth, in_has, loose))
    for _ in range(draw(st.integers(0, 3 if depth > 1 else 1))):
        comb = draw(st.sampled_from([" ", ">", "+", "~"]))
        if loose:
            around = _ws(newlines=False)
            if comb == " ":
                sep = draw(st.sampled_from([" ", "  ", "\t", " /* c */ ", "/**/"]))
            else:
                sep = draw(around) + comb + draw(around)
        else:
            sep = " " if comb == " " else f" {comb} "
        out += sep + draw(compound(depth, in_has, loose))
    return out


@st.composite
def selector_list(draw: st.DrawFn, depth: int, in_has: bool, loose: bool) -> str:
    items = draw(st.lists(complex_selector(depth, in_has, loose), min_size=1, max_size=3 if depth > 1 else 2))
    sep = draw(st.sampled_from([", ", ",", " , ", ",\n  "])) if loose else ", "
    return sep.join(items)


def selectors(loose: bool = False) -> st.SearchStrategy[str]:
    return selector_list(depth=2, in_has=False, loose=loose)


@st.composite
def stylesheet(draw: st.DrawFn) -> str:
    rules = []
    for _ in range(draw(st.integers(0, 3))):
        sel = draw(selectors())
        props = draw(st.lists(st.sampled_from(["a", "b", "HookParam", "x-y", "z_1"]), max_size=2))
        rules.append(sel + (": " + ", ".join(props) if props else ""))
    sep = draw(st.sampled_from(["\n", ";", "; ", "\n\n", "\n/* c */\n"]))
    return sep.join(rules)


@GEN
@given(selectors())
def test_generated_selector_parses_round_trips_and_matches(css: str) -> None:
    sheet = modsel.parse(css)
    assert len(sheet.rules) == 1
    text = str(sheet)
    assert modsel.parse(text) == sheet
    assert str(modsel.parse(text)) == text
    selector = modsel.compile(css)
    assert selector.ast == sheet.rules[0].selectors
    for model in MODELS:
        found = selector.match(model)
        paths = [path for path, _ in found]
        assert len(paths) == len(set(paths))
        everywhere = [path for path, _ in model.named_modules(remove_duplicate=False)]
        assert [p for p in everywhere if p in paths] == paths  # document order
        assert modsel.match(model, str(selector.ast)) == found  # the canonical text means the same


@settings(GEN, max_examples=40)
@given(stylesheet())
def test_generated_stylesheet_selects_without_raising(css: str) -> None:
    sheet = modsel.parse(css)
    assert modsel.parse(str(sheet)) == sheet
    for model in MODELS:
        root = modsel.select(model, css)
        repr(root)
        for node in root.selected():
            assert node.props


@GEN
@given(selectors(loose=True))
def test_whitespace_and_comments_do_not_change_the_ast(css: str) -> None:
    """The same selector with whitespace, newlines (inside brackets and after commas) and
    comments wherever the language allows them parses to the same AST as its canonical text."""
    sheet = modsel.parse(css)
    assert modsel.parse(str(sheet)) == sheet


@GEN
@given(_any_name)
def test_escaped_names_round_trip(name: str) -> None:
    (rule,) = modsel.parse("#" + css_escape(name)).rules
    (simple,) = rule.selectors.selectors[0].compounds[0].selectors
    assert simple == modsel.IdSelector(name)
    assert modsel.parse(str(rule.selectors)).rules[0].selectors == rule.selectors


@GEN
@given(anb_written(), st.sampled_from(["nth-child", "nth-last-child", "nth-of-type", "nth-last-of-type"]))
def test_anb_values(written: tuple[str, int, int], name: str) -> None:
    text, a, b = written
    (rule,) = modsel.parse(f":{name}({text})").rules
    (nth,) = rule.selectors.selectors[0].compounds[0].selectors
    assert nth == modsel.NthPseudo(name, a, b)
    assert modsel.parse(str(rule)) == modsel.parse(f":{name}({text})")


@pytest.mark.parametrize("text", ["", " ", "\n"])
def test_blank_is_zero_rules(text: str) -> None:
    assert modsel.parse(text).rules == ()
