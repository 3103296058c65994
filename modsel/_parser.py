"""Text -> AST: the Lark LALR parser for ``grammar.lark`` and the callbacks that build the AST.

The callbacks run inline while LALR reduces (no recursion, so deeply nested input cannot
overflow the stack); they check what the grammar leaves open (pseudo-class names, An+B,
nesting) and raise ``_Reject``, which ``parse`` turns into ``SelectorSyntaxError`` with a caret
context. No lark exception reaches the caller.
"""

from __future__ import annotations

import bisect
import difflib
import functools
import re
import sys
import threading
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
MAX_DIGITS = 1000  # digits of a number in An+B; positions need a few

_COMBINATOR_OF = {"DESCENDANT": " ", "CHILD": ">", "NEXT_SIBLING": "+", "SUBSEQUENT_SIBLING": "~"}
_NUMERIC_OPS = ("<", "<=", ">", ">=")
# a CSS number: what unquoted attribute values compare numerically as (not "nan", "inf", "1_000")
NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\Z")
_WS_OR_COMMENT = re.compile(r"[ \t\f\r\n]+|/\*.*?\*/", re.S)
_DIGITS_OR_COMMENT = re.compile(r"\d+|/\*.*?\*/", re.S)
_ANB = re.compile(r"(?P<a>[+-]?\d*)n(?P<b>[+-]\d+)?\Z")
_ESCAPE = re.compile(r"\\(?:([0-9a-fA-F]{1,6})[ \t\r\n\f]?|(\r\n|[\r\n\f])|([\s\S]))")


class _Reject(Exception):  # noqa: N818 - internal control flow, never escapes
    """Raised by a callback: ``reason`` at character ``offset`` of the text. ``props_hint``:
    the name of an unknown pseudo-class that may have been meant as a prop."""

    def __init__(self, reason: str, offset: int, props_hint: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.offset = offset
        self.props_hint = props_hint


_SPACE = re.compile(r"(?:[ \t\f\r\n]|/\*(?:[^*]|\*(?!/))*\*/)*")


def _start(tok: Token) -> int:
    """Offset of a token's first character that is not whitespace or a comment."""
    offset = tok.start_pos or 0
    text = str(tok)
    skipped = _SPACE.match(text)
    return offset + (skipped.end() if skipped and skipped.end() < len(text) else 0)


def _reject(reason: str, tok: Token, props_hint: str | None = None) -> _Reject:
    return _Reject(reason, _start(tok), props_hint)


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
        return "\ufffd" if char == "\x00" else str(char)  # CSS: NUL reads as U+FFFD

    return _ESCAPE.sub(one, text)


# The line starts of the text being parsed, for positions (the lexer's own line numbers do
# not see the newlines that _fold_newlines turned into spaces). Per thread, set by _run.
_STATE = threading.local()


def _position_at(offset: int) -> Position:
    starts: list[int] = _STATE.line_starts
    line = bisect.bisect_right(starts, offset)
    return Position(line, offset - starts[line - 1] + 1)


def _position(tok: Token) -> Position:
    return _position_at(_start(tok))


def _line_starts(text: str) -> list[int]:
    return [0, *(m.end() for m in re.finditer("\n", text))]


def _nesting(compounds: tuple[Compound, ...]) -> tuple[int, Position | None]:
    """(how deeply functional pseudo-classes nest in these compounds, where the first
    ``:has()`` is) from the facts the inner Complex nodes already carry."""
    depth, has_at = 0, None
    for compound in compounds:
        for simple in compound.selectors:
            inner: tuple[Complex, ...]
            if isinstance(simple, LogicalPseudo):
                inner = simple.selectors.selectors
            elif isinstance(simple, NthPseudo) and simple.of is not None:
                inner = simple.of.selectors
            elif isinstance(simple, HasPseudo):
                inner = tuple(r.selector for r in simple.selectors)
                has_at = has_at or compound.position
            else:
                continue
            for cx in inner:
                depth = max(depth, cx.nesting + 1)
                has_at = has_at or cx.has_position
    return depth, has_at


class _ToAst(lark.Transformer[Token, Any]):
    """LALR callbacks: parse tree shapes -> AST nodes."""

    def start(self, children: list[Rule]) -> Stylesheet:
        return Stylesheet(tuple(children))

    def rule(self, children: list[Any]) -> Rule:
        selectors: SelectorList = children[0]
        if len(children) == 1:
            return Rule(selectors, ("all",), selectors.position)
        props, props_position = children[1]
        return Rule(selectors, props, selectors.position, props_position)

    def props(self, children: list[Token]) -> tuple[tuple[str, ...], Position]:
        return tuple(str(tok) for tok in children), _position_at(_start(children[0]) - 1)

    def selector_list(self, children: list[Complex]) -> SelectorList:
        return SelectorList(tuple(children), children[0].position)

    def complex(self, children: list[Any]) -> Complex:
        compounds = tuple(children[0::2])
        combinators = tuple(_COMBINATOR_OF[tok.type] for tok in children[1::2])
        nesting, has_at = _nesting(compounds)
        return Complex(compounds, combinators, compounds[0].position, nesting, has_at)

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
        bracket, name_tok = children[0], children[1]
        position = _position(bracket)
        name = unescape(str(name_tok))
        if len(children) == 2:
            return AttributeSelector(name), position
        op = _WS_OR_COMMENT.sub("", str(children[2]))
        value_tok = children[3]
        quoted = value_tok.type == "STRING"
        value = unescape(str(value_tok)[1:-1]) if quoted else unescape(str(value_tok))
        flag_tok = children[4] if len(children) > 4 else None
        flag = _WS_OR_COMMENT.sub("", str(flag_tok)).lower() if flag_tok is not None else None
        if op in _NUMERIC_OPS and not NUMBER.match(value):
            raise _reject(f"{op!r} compares numbers, but {_short(value)!r} is not a number", value_tok)
        if flag_tok is not None and op in (*_NUMERIC_OPS, "!="):
            raise _reject(f"the case flag {flag!r} does not apply to {op!r}", flag_tok)
        return AttributeSelector(name, op, value, quoted, flag), position

    def simple_pseudo(self, children: list[Token]) -> tuple[PseudoClass, Position]:
        tok = children[0]
        written = str(tok)[1:]
        name = unescape(written).lower()
        if name in _pseudo.SIMPLE:
            return PseudoClass(name), _position(tok)
        if name in _pseudo.FUNCTIONAL:
            raise _reject(f"':{name}' needs an argument: write ':{name}(...)'", tok)
        raise _reject(_unknown_pseudo(written), tok, props_hint=written)

    def logical_pseudo(self, children: list[Any]) -> tuple[LogicalPseudo, Position]:
        tok: Token = children[0]
        written = _function_name(tok)
        name = unescape(written).lower()
        if name not in _pseudo.LOGICAL:
            if name in _pseudo.SIMPLE:
                raise _reject(f"':{name}' takes no argument: write ':{name}'", tok)
            raise _reject(_unknown_pseudo(written + "()"), tok)
        selectors: SelectorList = children[1]
        self._check_nesting(selectors.selectors, tok)
        return LogicalPseudo(name, selectors), _position(tok)

    def has_pseudo(self, children: list[Any]) -> tuple[HasPseudo, Position]:
        tok: Token = children[0]
        relatives: tuple[Relative, ...] = children[1]
        inner = tuple(r.selector for r in relatives)
        self._check_nesting(inner, tok)
        for cx in inner:
            if cx.has_position is not None:
                starts: list[int] = _STATE.line_starts
                at = cx.has_position
                raise _Reject(
                    "':has()' cannot be nested inside ':has()'", starts[at.line - 1] + at.column - 1
                )
        return HasPseudo(relatives), _position(tok)

    def nth_pseudo(self, children: list[Any]) -> tuple[NthPseudo, Position]:
        tok: Token = children[0]
        name = _function_name(tok).lower()
        _check_digits(children[1], name)
        a, b = _parse_anb(children[1])
        of: SelectorList | None = children[2] if len(children) > 2 else None
        if of is not None:
            if name.endswith("of-type"):
                raise _reject(f"':{name}()' takes no 'of S' (only :nth-child and :nth-last-child)", tok)
            self._check_nesting(of.selectors, tok)
        return NthPseudo(name, a, b, of), _position(tok)

    @staticmethod
    def _check_nesting(complexes: tuple[Complex, ...], tok: Token) -> None:
        if max(cx.nesting for cx in complexes) + 1 > MAX_NESTING:
            raise _reject(f"selectors nest more than {MAX_NESTING} levels deep", tok)


_FUNCTION_NAME = re.compile(
    r"(?:[A-Za-z0-9_\-]|[^\x00-\x7f]|\\[0-9a-fA-F]{1,6}[ \t\r\n\f]?|\\[^\r\n\f0-9a-fA-F])+"
)


def _function_name(tok: Token) -> str:
    """The name in a ``:name(`` token, as written (the token also holds whitespace/comments)."""
    m = _FUNCTION_NAME.match(str(tok), 1)
    return m.group() if m else ""


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _check_digits(tok: Token, name: str) -> None:
    """Reject a number of more than ``MAX_DIGITS`` digits in An+B (at most what ``int()``
    converts: Python refuses more than 4,300 digits, or fewer if the program lowered that)."""
    python_limit: int = getattr(sys, "get_int_max_str_digits", lambda: 0)()  # 0: none (< 3.10.7)
    limit = min(MAX_DIGITS, python_limit or MAX_DIGITS)
    for m in _DIGITS_OR_COMMENT.finditer(str(tok)):
        if m.group()[0].isdigit() and len(m.group()) > limit:
            raise _Reject(
                f"a number in ':{name}()' has {len(m.group()):,} digits; at most {limit:,} are allowed",
                (tok.start_pos or 0) + m.start(),
            )


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
    msg = f"unknown pseudo-class ':{_short(written)}'"
    if len(written) <= 40:  # difflib is quadratic: no suggestions for absurd names
        close = difflib.get_close_matches(written.lower(), _pseudo.known_names(), n=3, cutoff=0.6)
        if close:
            msg += "; did you mean " + " or ".join(f"':{c}'" for c in close) + "?"
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
    "LBRACK": "'['",
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
    "_LEAD": "a newline or ';'",
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


def _expected(names: set[str] | frozenset[str], text: str, offset: int) -> str:
    names = set(names)
    paren, bracket = _open_brackets(text, offset)
    if not paren:  # LALR merges states inside and outside (): only offer ')' when one is open
        names.discard("_RPAR")
    if not bracket:
        names.discard("_RBRACK")
    words = sorted({_TERMINAL_WORDS.get(n, n.strip("_").lower()) for n in names})
    if not words:
        return ""
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " or " + words[-1]


# what the newline folding and the bracket count skip over: escapes, strings, comments
_SCAN = re.compile(
    r"""\\[\s\S]|"(?:[^"\\\n]|\\[\s\S])*"?|'(?:[^'\\\n]|\\[\s\S])*'?|/\*[\s\S]*?(?:\*/|\Z)|[()\[\]\r\n\f]"""
)


def _open_brackets(text: str, end: int) -> tuple[int, int]:
    """How many '(' and '[' are open at ``end`` (outside strings, comments and escapes)."""
    paren = bracket = 0
    for m in _SCAN.finditer(text, 0, end):
        ch = m.group()
        if ch == "(":
            paren += 1
        elif ch == ")":
            paren = max(0, paren - 1)
        elif ch == "[":
            bracket += 1
        elif ch == "]":
            bracket = max(0, bracket - 1)
    return paren, bracket


def _fold_newlines(text: str) -> str:
    """``text`` with the line breaks inside () and [] turned into spaces (same length, so
    offsets stay valid): inside brackets a newline is whitespace, at the top level it ends
    a rule, and the LALR lexer states cannot tell those places apart."""
    if "\n" not in text and "\r" not in text and "\f" not in text:
        return text
    depth = 0
    spaces: list[int] = []
    for m in _SCAN.finditer(text):
        ch = m.group()
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth = max(0, depth - 1)
        elif ch in "\r\n\f" and depth:
            spaces.append(m.start())
    if not spaces:
        return text
    chars = list(text)
    for i in spaces:
        chars[i] = " "
    return "".join(chars)


def _error(reason: str, text: str, offset: int) -> SelectorSyntaxError:
    starts = _line_starts(text)
    line = bisect.bisect_right(starts, offset)
    return SelectorSyntaxError(reason, text, line, offset - starts[line - 1] + 1)


def _props_hint(text: str, offset: int, written: str) -> str:
    """A hint for ``Linear:propA``: only where a props colon could stand (after a compound)."""
    before = text[offset - 1] if offset > 0 else ""
    if before and not before.isspace() and before not in ",(;":
        return f" (to give props, put a space after the colon: ': {_short(written)}')"
    return ""


def _syntax_error(text: str, err: Exception) -> SelectorSyntaxError:
    if isinstance(err, _Reject):
        reason = err.reason
        if err.props_hint is not None:
            reason += _props_hint(text, err.offset, err.props_hint)
        return _error(reason, text, err.offset)
    if isinstance(err, lark.exceptions.UnexpectedCharacters):
        pos = err.pos_in_stream or 0
        allowed = set(err.allowed or ())
        char, rest = text[pos : pos + 1], text[pos : pos + 2]
        if char == "\x00":
            reason = "NUL character in selector"
        elif rest == "::":
            reason = "pseudo-elements ('::') are not supported"
        elif rest == "/*":
            reason = "unterminated comment"
        elif char in "\"'":
            reason = "unterminated string"
        elif char == "|":
            reason = "namespaces ('|') are not supported"
        elif char == "&":
            reason = "CSS nesting ('&') is not supported"
        elif char == "," and "PROP" in allowed:
            reason = "empty prop between commas"
        elif char in "\r\n" and "PROP" in allowed:
            reason = "expected a prop name after ':'"
        else:
            reason = f"unexpected {char!r}"
            expected = _expected(allowed, text, pos)
            if expected:
                reason += f", expected {expected}"
        return _error(reason, text, pos)
    if isinstance(err, lark.exceptions.UnexpectedToken):
        tok = err.token
        if tok.type == "$END":
            offset = len(text)
            reason = "unexpected end of input"
        else:
            offset = _start(tok)
            shown = text[offset : (tok.end_pos or offset + 1)].strip(" \t\f\r\n")
            if not shown or shown.startswith("/*"):  # whitespace: name what follows it
                offset = tok.end_pos if tok.end_pos is not None else len(text)
                shown = text[offset : offset + 1]
                reason = f"unexpected {shown!r}" if shown else "unexpected end of input"
            else:
                reason = f"unexpected {_short(shown)!r}"
            if "PROP" in err.expected and tok.type in ("_PROP_COMMA", "_COMMA"):
                return _error("empty prop between commas", text, offset)
        expected = _expected(err.expected, text, offset)
        if expected:
            reason += f", expected {expected}"
        return _error(reason, text, offset)
    if isinstance(err, lark.exceptions.UnexpectedEOF):
        return _error(
            f"unexpected end of input, expected {_expected(set(err.expected), text, len(text))}",
            text,
            len(text),
        )
    raise err  # pragma: no cover - not a parse error


def _run(text: str) -> Stylesheet:
    if not isinstance(text, str):
        raise TypeError(f"a stylesheet must be a str, not {type(text).__name__}")
    _STATE.line_starts = _line_starts(text)
    try:
        sheet = cast(Stylesheet, _lark().parse(_fold_newlines(text)))
    except (_Reject, lark.exceptions.UnexpectedInput) as err:
        raise _syntax_error(text, err) from None
    except lark.exceptions.VisitError as err:  # a callback failed: unwrap
        inner = err.orig_exc
        if isinstance(inner, _Reject):
            raise _syntax_error(text, inner) from None
        raise inner from None
    finally:
        _STATE.line_starts = None
    return Stylesheet(sheet.rules, text)


@functools.lru_cache(maxsize=512)
def parse(text: str) -> Stylesheet:
    """Parse a stylesheet: rules separated by newlines or ``;``, each ``selectors[: props]``."""
    return _run(text)


@functools.lru_cache(maxsize=512)
def parse_selector(text: str) -> SelectorList:
    """Parse one selector list (no props, no separators), as ``modsel.compile`` takes."""
    sheet = _run(text)
    if not sheet.rules:
        raise _error("empty selector", text, len(text))
    if len(sheet.rules) > 1:
        second = sheet.rules[1].position
        raise SelectorSyntaxError(
            "expected one selector list, found several rules (a newline or ';' separates rules)",
            text,
            second.line,
            second.column,
        )
    rule = sheet.rules[0]
    if rule.props_position is not None:
        at = rule.props_position
        raise SelectorSyntaxError(
            "a selector takes no props; use modsel.select(model, css) for a stylesheet",
            text,
            at.line,
            at.column,
        )
    return rule.selectors
