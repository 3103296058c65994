"""Text -> AST: the Lark LALR parser for ``grammar.lark`` and the callbacks that build the AST.

The callbacks run inline while LALR reduces (no recursion, so deeply nested input cannot
overflow the stack); they check what the grammar leaves open (pseudo-class names, An+B,
nesting) and raise ``_Reject``, which ``parse`` turns into ``SelectorSyntaxError`` with a caret
context. No lark exception reaches the caller.
"""

from __future__ import annotations

import difflib
import functools
import re
from typing import Any, cast

import lark
from lark import Lark, Token

from . import _pseudo
from ._ast import (
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
    Simple,
    Stylesheet,
    TypeSelector,
    UniversalSelector,
)
from ._errors import SelectorSyntaxError

__all__ = ["MAX_NESTING", "NUMBER", "parse", "parse_selector"]

MAX_NESTING = 32  # functional pseudo-classes inside each other; real selectors use 1-3

_COMBINATOR_OF = {"DESCENDANT": " ", "CHILD": ">", "NEXT_SIBLING": "+", "SUBSEQUENT_SIBLING": "~"}
_OPS = ("=", "~=", "|=", "^=", "$=", "*=", "!=", "<", "<=", ">", ">=")
_NUMERIC_OPS = ("<", "<=", ">", ">=")
# a CSS number: what unquoted attribute values compare numerically as (not "nan", "inf", "1_000")
NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\Z")
_WS_OR_COMMENT = re.compile(r"[ \t\f\r\n]+|/\*.*?\*/", re.S)
_ANB = re.compile(r"(?P<a>[+-]?\d*)n(?P<b>[+-]\d+)?\Z")
_ESCAPE = re.compile(r"\\(?:([0-9a-fA-F]{1,6})[ \t\r\n\f]?|(\r\n|[\r\n\f])|([\s\S]))")


class _Reject(Exception):
    """Raised by a callback: ``reason`` at ``token``'s position."""

    def __init__(self, reason: str, line: int, column: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = line
        self.column = column


def _reject(reason: str, token: Token) -> _Reject:
    return _Reject(reason, token.line or 1, token.column or 1)


def unescape(text: str) -> str:
    """Resolve CSS backslash escapes (``\\.``, ``\\31 ``; a backslash-newline is removed)."""
    if "\\" not in text:
        return text

    def one(m: re.Match[str]) -> str:
        hexa, newline, char = m.groups()
        if hexa is not None:
            code = int(hexa, 16)
            return chr(code) if 0 < code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF else "\ufffd"
        if newline is not None:
            return ""
        return str(char)

    return _ESCAPE.sub(one, text)


def _position(token: Token) -> Position:
    return Position(token.line or 1, token.column or 1)


def _nesting(compounds: tuple[Compound, ...]) -> tuple[int, bool]:
    """(deepest nesting of functional pseudo-classes, whether any ``:has`` occurs) in compounds."""
    depth, has = 0, False
    for compound in compounds:
        for simple in compound.selectors:
            inner: tuple[Complex, ...] = ()
            if isinstance(simple, LogicalPseudo):
                inner = simple.selectors.selectors
            elif isinstance(simple, NthPseudo) and simple.of is not None:
                inner = simple.of.selectors
            elif isinstance(simple, HasPseudo):
                inner = tuple(r.selector for r in simple.selectors)
                has = True
            else:
                continue
            for cx in inner:
                d, h = _FACTS.get(id(cx), (0, False))
                depth = max(depth, d + 1)
                has = has or h
    return depth, has


# Nesting facts of the Complex nodes being built. Keyed by id() while parsing; cleared after
# each parse (parse holds _LOCK-free single-threaded use per call; see parse()).
_FACTS: dict[int, tuple[int, bool]] = {}


class _ToAst(lark.Transformer[Token, Any]):
    """LALR callbacks: parse tree shapes -> AST nodes."""

    def start(self, children: list[Rule]) -> Stylesheet:
        return Stylesheet(tuple(children))

    def rule(self, children: list[Any]) -> Rule:
        selectors: SelectorList = children[0]
        props: tuple[str, ...] = children[1] if len(children) > 1 else ("all",)
        return Rule(selectors, props, selectors.position)

    def props(self, children: list[Token]) -> tuple[str, ...]:
        return tuple(str(tok) for tok in children)

    def selector_list(self, children: list[Complex]) -> SelectorList:
        return SelectorList(tuple(children), children[0].position)

    def complex(self, children: list[Any]) -> Complex:
        compounds = tuple(children[0::2])
        combinators = tuple(_COMBINATOR_OF[tok.type] for tok in children[1::2])
        cx = Complex(compounds, combinators, compounds[0].position)
        _FACTS[id(cx)] = _nesting(compounds)
        return cx

    def relative_list(self, children: list[Relative]) -> tuple[Relative, ...]:
        return tuple(children)

    def relative(self, children: list[Any]) -> Relative:
        if len(children) == 1:
            return Relative(" ", children[0])
        return Relative(_COMBINATOR_OF[children[0].type], children[1])

    def compound(self, children: list[Any]) -> Compound:
        simples: list[Simple] = []
        position: Position | None = None
        for child in children:
            if isinstance(child, Token):
                if position is None:
                    position = _position(child)
                elif child.type in ("TYPE", "UNIVERSAL"):
                    raise _reject(
                        f"a type selector or '*' must come first in a compound, found {str(child)!r} later",
                        child,
                    )
                simples.append(self._simple_token(child))
            else:
                simple, pos = child
                if position is None:
                    position = pos
                simples.append(simple)
        assert position is not None
        return Compound(tuple(simples), position)

    @staticmethod
    def _simple_token(tok: Token) -> Simple:
        if tok.type == "TYPE":
            return TypeSelector(unescape(str(tok)))
        if tok.type == "UNIVERSAL":
            return UniversalSelector()
        if tok.type == "ID":
            return IdSelector(unescape(str(tok)[1:]))
        if tok.type == "CLASS":
            return ClassSelector(unescape(str(tok)[1:]))
        raise AssertionError(f"unexpected token {tok.type}")  # pragma: no cover

    def attribute(self, children: list[Token]) -> tuple[AttributeSelector, Position]:
        name_tok = children[0]
        name = unescape(str(name_tok))
        if len(children) == 1:
            return AttributeSelector(name), _position(name_tok)
        op = str(children[1]).strip(" \t\f\r\n")
        op = _WS_OR_COMMENT.sub("", op)
        value_tok = children[2]
        quoted = value_tok.type == "STRING"
        value = unescape(str(value_tok)[1:-1]) if quoted else unescape(str(value_tok))
        flag = str(children[3]).strip().lower() if len(children) > 3 else None
        if flag is not None:
            flag = _WS_OR_COMMENT.sub("", flag).lower()
        if op in _NUMERIC_OPS and not NUMBER.match(value):
            raise _reject(f"{op!r} compares numbers, but {value!r} is not a number", value_tok)
        if flag is not None and op in (*_NUMERIC_OPS, "!="):
            raise _reject(f"the case flag {flag!r} does not apply to {op!r}", children[3])
        return AttributeSelector(name, op, value, quoted, flag), _position(name_tok)

    def simple_pseudo(self, children: list[Token]) -> tuple[PseudoClass, Position]:
        tok = children[0]
        name = unescape(str(tok)[1:]).lower()
        if name in _pseudo.SIMPLE:
            return PseudoClass(name), _position(tok)
        if name in _pseudo.FUNCTIONAL:
            raise _reject(f"':{name}' needs an argument: write ':{name}(...)'", tok)
        raise _reject(_unknown_pseudo(str(tok)[1:]), tok)

    def logical_pseudo(self, children: list[Any]) -> tuple[LogicalPseudo, Position]:
        tok: Token = children[0]
        raw = str(tok)[1:].rstrip(" \t\f\r\n").rstrip("(")
        name = unescape(raw).lower()
        if name not in _pseudo.LOGICAL:
            if name in _pseudo.SIMPLE:
                raise _reject(f"':{name}' takes no argument: write ':{name}'", tok)
            raise _reject(_unknown_pseudo(raw + "()"), tok)
        selectors: SelectorList = children[1]
        self._check_nesting(selectors.selectors, tok)
        return LogicalPseudo(name, selectors), _position(tok)

    def has_pseudo(self, children: list[Any]) -> tuple[HasPseudo, Position]:
        tok: Token = children[0]
        relatives: tuple[Relative, ...] = children[1]
        _, has = self._check_nesting(tuple(r.selector for r in relatives), tok)
        if has:
            raise _reject("':has()' cannot be nested inside ':has()'", tok)
        return HasPseudo(relatives), _position(tok)

    def nth_pseudo(self, children: list[Any]) -> tuple[NthPseudo, Position]:
        tok: Token = children[0]
        name = str(tok)[1:].split("(")[0].lower()
        a, b = _parse_anb(children[1])
        of: SelectorList | None = children[2] if len(children) > 2 else None
        if of is not None:
            if name.endswith("of-type"):
                raise _reject(f"':{name}()' takes no 'of S' (only :nth-child and :nth-last-child)", tok)
            self._check_nesting(of.selectors, tok)
        return NthPseudo(name, a, b, of), _position(tok)

    @staticmethod
    def _check_nesting(complexes: tuple[Complex, ...], tok: Token) -> tuple[int, bool]:
        depth, has = 0, False
        for cx in complexes:
            d, h = _FACTS.get(id(cx), (0, False))
            depth, has = max(depth, d), has or h
        if depth + 1 > MAX_NESTING:
            raise _reject(f"selectors nest more than {MAX_NESTING} levels deep", tok)
        return depth, has


def _parse_anb(tok: Token) -> tuple[int, int]:
    text = _WS_OR_COMMENT.sub("", str(tok)).lower()
    if text == "odd":
        return 2, 1
    if text == "even":
        return 2, 0
    m = _ANB.match(text)
    if m is None:
        return 0, int(text)
    a_text = m.group("a")
    a = {"": 1, "+": 1, "-": -1}.get(a_text)
    return (int(a_text) if a is None else a), int(m.group("b") or 0)


def _unknown_pseudo(written: str) -> str:
    names = _pseudo.known_names()
    close = difflib.get_close_matches(written.lower(), names, n=3, cutoff=0.6)
    msg = f"unknown pseudo-class ':{written}'"
    if close:
        msg += "; did you mean " + " or ".join(f"':{c}'" for c in close) + "?"
    if not written.endswith("()"):
        msg += f" (to give props, put a space after the colon: ': {written}')"
    return msg


@functools.cache
def _lark() -> Lark:
    return Lark.open(
        "grammar.lark",
        rel_to=__file__,
        parser="lalr",
        lexer="contextual",
        transformer=_ToAst(),
        cache=False,
    )


_TERMINAL_WORDS = {
    "TYPE": "a type name",
    "UNIVERSAL": "'*'",
    "ID": "'#id'",
    "CLASS": "'.class'",
    "_LBRACK": "'['",
    "PSEUDO": "a pseudo-class",
    "FUNCTION": "a pseudo-class",
    "NTH": "a pseudo-class",
    "HAS": "a pseudo-class",
    "DESCENDANT": "a combinator",
    "CHILD": "a combinator",
    "NEXT_SIBLING": "a combinator",
    "SUBSEQUENT_SIBLING": "a combinator",
    "_COMMA": "','",
    "_SEP": "a newline or ';'",
    "_PROPS_COLON": "': ' and props",
    "PROP": "a prop name (letters, digits, '_', '-')",
    "_PROP_COMMA": "','",
    "_RPAR": "')'",
    "_RBRACK": "']'",
    "ATTR_NAME": "an attribute name",
    "ATTR_OP": "an operator (=, ~=, |=, ^=, $=, *=, !=, <, <=, >, >=)",
    "STRING": "a value",
    "BARE_VALUE": "a value",
    "ATTR_FLAG": "a flag (i or s)",
    "ANB": "An+B (like 2n+1, odd, even, 3)",
    "_OF": "'of'",
    "$END": "the end",
}


def _expected(names: set[str] | frozenset[str]) -> str:
    words = sorted({_TERMINAL_WORDS.get(n, n) for n in names})
    if not words:
        return ""
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " or " + words[-1]


def _end_position(text: str) -> tuple[int, int]:
    lines = text.split("\n")
    return len(lines), len(lines[-1]) + 1


def _skip_space(text: str, line: int, column: int) -> tuple[int, int]:
    """Move a position forward over whitespace, so a caret points at the offending character."""
    lines = text.split("\n")
    while 0 < line <= len(lines):
        row = lines[line - 1]
        while column - 1 < len(row) and row[column - 1] in " \t\f\r":
            column += 1
        if column - 1 < len(row) or line == len(lines):
            break
        line, column = line + 1, 1
    return line, column


def _syntax_error(text: str, err: Exception) -> SelectorSyntaxError:
    if isinstance(err, _Reject):
        return SelectorSyntaxError(err.reason, text, err.line, err.column)
    if isinstance(err, lark.exceptions.UnexpectedCharacters):
        line, column = err.line, err.column
        pos = err.pos_in_stream or 0
        char = text[pos] if 0 <= pos < len(text) else ""
        rest = text[pos : pos + 2]
        if char == "\x00":
            reason = "NUL character in selector"
        elif rest == "::":
            reason = "pseudo-elements ('::') are not supported"
        elif char == "|":
            reason = "namespaces ('|') are not supported"
        elif char == "&":
            reason = "CSS nesting ('&') is not supported"
        elif char == "," and err.allowed and "PROP" in err.allowed:
            reason = "empty prop between commas"
        elif char in "\r\n" and err.allowed and "PROP" in err.allowed:
            reason = "expected a prop name after ':'"
        else:
            reason = f"unexpected {char!r}"
            if err.allowed:
                reason += f", expected {_expected(err.allowed)}"
        return SelectorSyntaxError(reason, text, line, column)
    if isinstance(err, lark.exceptions.UnexpectedToken):
        tok = err.token
        expected = _expected(err.expected)
        if tok.type == "$END":
            line, column = _end_position(text)
            reason = "unexpected end of input"
        else:
            line, column = _skip_space(text, tok.line or 1, tok.column or 1)
            shown = str(tok).strip(" \t\f\r\n") or str(tok)
            reason = f"unexpected {shown!r}"
            if "PROP" in err.expected and tok.type in ("_PROP_COMMA", "_COMMA"):
                reason = "empty prop between commas"
                expected = ""
        if expected:
            reason += f", expected {expected}"
        return SelectorSyntaxError(reason, text, line, column)
    if isinstance(err, lark.exceptions.UnexpectedEOF):
        line, column = _end_position(text)
        return SelectorSyntaxError(
            f"unexpected end of input, expected {_expected(set(err.expected))}", text, line, column
        )
    raise err  # pragma: no cover - not a parse error


def _run(text: str) -> Stylesheet:
    if not isinstance(text, str):
        raise TypeError(f"a stylesheet must be a str, not {type(text).__name__}")
    try:
        sheet = cast(Stylesheet, _lark().parse(text))
    except (_Reject, lark.exceptions.UnexpectedInput) as err:
        raise _syntax_error(text, err) from None
    except lark.exceptions.VisitError as err:  # a callback failed: unwrap
        inner = err.orig_exc
        if isinstance(inner, _Reject):
            raise _syntax_error(text, inner) from None
        raise inner from None
    finally:
        _FACTS.clear()
    return Stylesheet(sheet.rules, text)


@functools.lru_cache(maxsize=512)
def parse(text: str) -> Stylesheet:
    """Parse a stylesheet: rules separated by newlines or ``;``, each ``selectors[: props]``."""
    return _run(text)


@functools.lru_cache(maxsize=512)
def parse_selector(text: str) -> SelectorList:
    """Parse one selector list (no props, no separators), as ``modsel.compile`` takes."""
    sheet = _run(text)
    if len(sheet.rules) != 1:
        if not sheet.rules:
            line, column = _end_position(text)
            raise SelectorSyntaxError("empty selector", text, line, column)
        second = sheet.rules[1].position
        raise SelectorSyntaxError(
            "expected one selector list, found several rules (a newline or ';' separates rules)",
            text,
            second.line,
            second.column,
        )
    rule = sheet.rules[0]
    if rule.props != ("all",) or _has_props_colon(text):
        raise SelectorSyntaxError(
            "a selector takes no props; use modsel.select(model, css) for a stylesheet",
            text,
            rule.position.line,
            rule.position.column,
        )
    return rule.selectors


def _has_props_colon(text: str) -> bool:
    return re.search(r":(?=[ \t\f\r\n]|\Z)", _WS_OR_COMMENT.sub(" ", text)) is not None
