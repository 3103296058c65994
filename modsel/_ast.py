"""The selector AST: immutable dataclasses made by the parser, read by the matcher.

Equality and hashing ignore source positions, so the same selector written twice compares
equal. ``str()`` of any node gives canonical CSS that parses back to an equal node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias

__all__ = [
    "AttributeSelector",
    "ClassSelector",
    "Combinator",
    "Complex",
    "Compound",
    "HasPseudo",
    "IdSelector",
    "LogicalPseudo",
    "NthPseudo",
    "Position",
    "PseudoClass",
    "Relative",
    "Rule",
    "SelectorList",
    "Simple",
    "Stylesheet",
    "TypeSelector",
    "UniversalSelector",
]

# the four combinators, as they are stored: descendant, child, next sibling, subsequent sibling
Combinator = str
COMBINATORS = (" ", ">", "+", "~")


@dataclass(frozen=True, slots=True)
class Position:
    """1-based line and column of a node's first character in the source."""

    line: int
    column: int


_NOWHERE = Position(0, 0)


@dataclass(frozen=True, slots=True)
class TypeSelector:
    """``Linear``: the module's class name, exactly."""

    name: str

    def __str__(self) -> str:
        return escape_name(self.name)


@dataclass(frozen=True, slots=True)
class UniversalSelector:
    """``*``: any module."""

    def __str__(self) -> str:
        return "*"


@dataclass(frozen=True, slots=True)
class IdSelector:
    """``#bulk``: the attribute name the parent registered the module under."""

    name: str

    def __str__(self) -> str:
        return "#" + escape_name(self.name)


@dataclass(frozen=True, slots=True)
class ClassSelector:
    """``.Linear``: some class in the module's MRO has this name."""

    name: str

    def __str__(self) -> str:
        return "." + escape_name(self.name)


@dataclass(frozen=True, slots=True)
class AttributeSelector:
    """``[name]``, ``[name op value flag]``; ``value`` is unescaped, ``quoted`` says how it was
    written (an unquoted number compares as a number)."""

    name: str
    op: str | None = None
    value: str | None = None
    quoted: bool = False
    flag: str | None = None

    def __str__(self) -> str:
        if self.op is None:
            return f"[{escape_name(self.name)}]"
        value = quote(self.value or "") if self.quoted else escape_name(self.value or "", keep=".+")
        flag = f" {self.flag}" if self.flag else ""
        return f"[{escape_name(self.name)}{self.op}{value}{flag}]"


@dataclass(frozen=True, slots=True)
class PseudoClass:
    """``:first-child``, ``:empty``, ...: a name from the pseudo-class registry (lower case)."""

    name: str

    def __str__(self) -> str:
        return ":" + self.name


@dataclass(frozen=True, slots=True)
class LogicalPseudo:
    """``:not(S)``, ``:is(S)``, ``:where(S)``: a pseudo-class over a selector list."""

    name: str
    selectors: SelectorList

    def __str__(self) -> str:
        return f":{self.name}({self.selectors})"


@dataclass(frozen=True, slots=True)
class NthPseudo:
    """``:nth-child(An+B of S)`` and its three siblings; ``of`` only for the ``-child`` ones."""

    name: str
    a: int
    b: int
    of: SelectorList | None = None

    def __str__(self) -> str:
        of = f" of {self.of}" if self.of is not None else ""
        return f":{self.name}({format_anb(self.a, self.b)}{of})"


@dataclass(frozen=True, slots=True)
class Relative:
    """One argument of ``:has()``: a combinator leading from the anchor into a complex selector."""

    combinator: Combinator
    selector: Complex

    def __str__(self) -> str:
        lead = "" if self.combinator == " " else self.combinator + " "
        return f"{lead}{self.selector}"


@dataclass(frozen=True, slots=True)
class HasPseudo:
    """``:has(> A, B + C)``: some module related to this one by a relative selector exists."""

    selectors: tuple[Relative, ...]

    def __str__(self) -> str:
        return ":has(" + ", ".join(str(r) for r in self.selectors) + ")"


Simple: TypeAlias = (
    TypeSelector
    | UniversalSelector
    | IdSelector
    | ClassSelector
    | AttributeSelector
    | PseudoClass
    | LogicalPseudo
    | NthPseudo
    | HasPseudo
)


@dataclass(frozen=True, slots=True)
class Compound:
    """Simple selectors written together (``Linear#0[bias=false]``): all must hold."""

    selectors: tuple[Simple, ...]
    position: Position = field(default=_NOWHERE, compare=False, repr=False)

    def __str__(self) -> str:
        return "".join(str(s) for s in self.selectors)


@dataclass(frozen=True, slots=True)
class Complex:
    """Compounds joined by combinators; ``combinators[i]`` joins ``compounds[i]`` and
    ``compounds[i + 1]``. The last compound is the subject."""

    compounds: tuple[Compound, ...]
    combinators: tuple[Combinator, ...] = ()
    position: Position = field(default=_NOWHERE, compare=False, repr=False)
    # facts the parser checks limits with: how deeply functional pseudo-classes nest inside,
    # and where the first ``:has()`` inside is (``None``: there is none)
    nesting: int = field(default=0, compare=False, repr=False)
    has_position: Position | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        parts = [str(self.compounds[0])]
        for comb, comp in zip(self.combinators, self.compounds[1:], strict=True):
            parts.append(" " if comb == " " else f" {comb} ")
            parts.append(str(comp))
        return "".join(parts)


@dataclass(frozen=True, slots=True)
class SelectorList:
    """``A, B > C``: matches what any of its complex selectors matches."""

    selectors: tuple[Complex, ...]
    position: Position = field(default=_NOWHERE, compare=False, repr=False)

    def __str__(self) -> str:
        return ", ".join(str(s) for s in self.selectors)


@dataclass(frozen=True, slots=True)
class Rule:
    """``selector-list: prop, prop``; a rule written without props has the props ``("all",)``."""

    selectors: SelectorList
    props: tuple[str, ...] = ("all",)
    position: Position = field(default=_NOWHERE, compare=False, repr=False)
    # where the props colon is; ``None`` when the rule was written without props
    props_position: Position | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.selectors}: {', '.join(self.props)}"


@dataclass(frozen=True, slots=True)
class Stylesheet:
    """The rules of a stylesheet in source order, and the source itself."""

    rules: tuple[Rule, ...]
    source: str = field(default="", compare=False, repr=False)

    def __str__(self) -> str:
        return "\n".join(str(r) for r in self.rules)


def format_anb(a: int, b: int) -> str:
    """Canonical An+B text: ``2n+1``, ``-n+3``, ``5``, ``n``."""
    if a == 0:
        return str(b)
    an = {1: "n", -1: "-n"}.get(a, f"{a}n")
    if b == 0:
        return an
    return f"{an}{b:+d}"


def escape_name(name: str, keep: str = "") -> str:
    """A name written so that it lexes back as one name (CSS escapes for other characters);
    characters in ``keep`` stay as they are."""
    out = []
    for ch in name:
        if (ch.isascii() and (ch.isalnum() or ch in "_-" or ch in keep)) or (
            not ch.isascii() and ch.isprintable()
        ):
            out.append(ch)
        elif ch.isascii() and ch.isprintable() and ch not in " \t":
            out.append("\\" + ch)
        else:
            out.append(f"\\{ord(ch):x} ")
    return "".join(out)


def quote(value: str) -> str:
    """A double-quoted CSS string for ``value``."""
    out = ['"']
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch in "\r\n\f" or not ch.isprintable():
            out.append(f"\\{ord(ch):x} ")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def walk_simple(selectors: SelectorList) -> list[Simple]:
    """Every simple selector in a selector list, nested ones included (iteratively: selectors
    nest at most ``MAX_NESTING`` deep, but this needs no recursion at all)."""
    found: list[Simple] = []
    pending: list[Complex] = list(selectors.selectors)
    while pending:
        cx = pending.pop()
        for compound in cx.compounds:
            for simple in compound.selectors:
                found.append(simple)
                if isinstance(simple, LogicalPseudo):
                    pending.extend(simple.selectors.selectors)
                elif isinstance(simple, NthPseudo) and simple.of is not None:
                    pending.extend(simple.of.selectors)
                elif isinstance(simple, HasPseudo):
                    pending.extend(rel.selector for rel in simple.selectors)
    return found
