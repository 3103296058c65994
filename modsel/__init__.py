"""modsel: CSS selectors for PyTorch module trees.

The module tree is a document: a module's tag is its class name, its id the attribute name its
parent registered it under (``root`` for the root), its children follow registration order.
Selectors follow CSS Selectors Level 4 (types, ``#id``, ``.Class`` by MRO, attributes with
numeric comparisons, ``:is/:not/:where/:has``, ``:nth-*``, structural pseudo-classes, all four
combinators); a stylesheet gives props to the modules its rules select.

    >>> import modsel, torch.nn as nn
    >>> model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))
    >>> [path for path, _ in modsel.match(model, "Linear + ReLU")]
    ['1']
    >>> modsel.select(model, "Linear[out_features=1]: head").tree(header=False).splitlines()[-1]
    '    2: Linear       head'
"""

from ._act import Freeze, freeze, hooks, param_groups, paths, tap, to_regex, unfreeze
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
    Stylesheet,
    TypeSelector,
    UniversalSelector,
)
from ._document import ModuleSelector
from ._document import class_tag as type_name
from ._errors import ModselError, SelectorSyntaxError, TargetError
from ._match import Selector, compile, match  # noqa: A004 - modsel.compile is the API
from ._parser import parse
from ._pseudo import known_names as pseudo_classes
from ._render import Tree, render_html, render_text
from ._select import Explanation, explain, select
from ._wrappers import unwrap

__version__ = "0.1.0"

__all__ = [
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
