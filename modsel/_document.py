"""The module document: a mirror tree of an ``nn.Module`` that selectors are matched against.

Each node stands for one *place* of a module: its tag is the class name, its id the attribute
name its parent registered it under (``root`` for the root), its children follow registration
order (``_modules``, skipping ``None``). A module registered in two places has a node at each;
a module that contains itself (a reference cycle) is not entered again below itself.

This file holds the tree and the structural facts the matcher needs; matching lives in
``_match.py``, rendering in ``_render.py``.
"""

from __future__ import annotations

import contextlib
import difflib
import gc
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from enum import Enum
from typing import TYPE_CHECKING, Any

import torch
from torch.nn import Module, Parameter

from ._errors import TargetError
from ._wrappers import unwrap

if TYPE_CHECKING:
    from ._act import Freeze
    from ._ast import Rule, Stylesheet
    from ._render import Tree
    from ._select import Explanation

__all__ = [
    "ModuleSelector",
    "PartialAttributes",
    "attributes_of",
    "build",
    "class_names_of",
    "not_a_module",
    "tag_of",
    "unreadable_attribute",
    "walk_parameters",
]

_ATTR_SCALARS = (bool, int, float, str)


class ModuleSelector:
    """One node of the mirror tree of a model, with the props a stylesheet gave it.

    ``name`` is the id (``root`` for the root), ``path`` the dotted path (``""`` for the root),
    ``module`` (alias ``nn``) the ``nn.Module``, ``props`` the props in rule order, ``rules``
    the rules that selected it, ``parent`` and ``depth`` (0 at the root) place it in the tree;
    the root's ``sheet`` is the stylesheet applied. ``node.bulk[2].seq[0]`` walks down by
    child name (``[i]`` with an int is the i-th child, with a str the child of that name).
    """

    # Building a 100k-node tree is mostly the cost of setting these slots, so there are few:
    # props and rules live in a side table of the document memo (most nodes have none), depth
    # is counted when asked, and ``sheet`` (the root's) lives in the instance ``__dict__``,
    # which Python creates only for the nodes that set it.
    __slots__ = ("__dict__", "_index", "_kids", "_memo", "_tag", "module", "name", "parent", "path")

    module: Module
    name: str
    parent: ModuleSelector | None
    path: str
    _index: int
    _kids: list[ModuleSelector]
    _memo: dict[object, dict[int, Any]]  # one per document, shared by its nodes: see memo()
    _tag: str

    sheet: Stylesheet | None = None
    # the root's: every node in document order, when ``grow`` made them all (for matchers
    # that test the whole document once, like ``:has()``)
    order: list[ModuleSelector] | None = None

    def __init__(
        self,
        module: Module,
        name: str,
        parent: ModuleSelector | None,
        index: int,
        path: str,
    ) -> None:
        self.module = module
        self.name = name
        self.parent = parent
        self._index = index
        self.path = path
        self._kids = _NO_KIDS
        self._memo = parent._memo if parent is not None else {}
        self._tag = class_tag(module)

    # ---- identity and navigation -------------------------------------------------------------
    @property
    def nn(self) -> Module:
        """The ``nn.Module`` of this node (same as ``module``)."""
        return self.module

    @property
    def depth(self) -> int:
        """Levels below the root (0 at the root)."""
        depth, node = 0, self.parent
        while node is not None:
            depth, node = depth + 1, node.parent
        return depth

    @property
    def props(self) -> tuple[str, ...]:
        """The props the stylesheet gave this node, in rule order (``()``: not selected)."""
        selected = self._memo.get(SELECTED)
        return selected[id(self)][0] if selected and id(self) in selected else ()

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The rules that selected this node, in stylesheet order."""
        selected = self._memo.get(SELECTED)
        return selected[id(self)][1] if selected and id(self) in selected else ()

    @property
    def tag(self) -> str:
        """The type the selectors see: the class name (TorchScript: the original class name)."""
        return self._tag

    @property
    def index(self) -> int:
        """Position among the parent's children, from 0 (0 for the root)."""
        return self._index

    def children(self) -> Iterator[ModuleSelector]:
        """The child nodes, in registration order."""
        return iter(self._kids)

    def named_children(self) -> Iterator[tuple[str, ModuleSelector]]:
        """``(name, node)`` for each child, in registration order."""
        return ((kid.name, kid) for kid in self._kids)

    def named_modules(self, prop: str | None = None) -> Iterator[tuple[str, ModuleSelector]]:
        """``(path, node)`` for this node and every node below it, pre-order; with ``prop``, only
        the nodes that have that prop (or ``all``)."""
        stack = [self]
        while stack:
            node = stack.pop()
            if prop is None or prop in node:
                yield node.path, node
            stack.extend(reversed(node._kids))

    def modules(self, prop: str | None = None) -> Iterator[ModuleSelector]:
        """Like ``named_modules`` without the paths."""
        return (node for _, node in self.named_modules(prop))

    def parameters(self) -> Iterator[Parameter]:
        """The parameters of this node's module and of every module below it, each once, in
        ``module.parameters()`` order; walked without recursion (torch's ``parameters()``
        recurses, and fails on models nested deeper than Python's recursion limit)."""
        return (param for _, param in walk_parameters([(self.path, self.module)]))

    def selected(self) -> Iterator[ModuleSelector]:
        """The nodes at and below this one that some rule selected (non-empty ``props``)."""
        return (node for node in self.modules() if node.props)

    def __contains__(self, prop: object) -> bool:
        """``"HookParam" in node``: the node has that prop, or the prop ``all``."""
        props = self.props
        return prop in props or "all" in props

    def __iter__(self) -> Iterator[ModuleSelector]:
        return iter(self._kids)

    def __len__(self) -> int:
        return len(self._kids)

    def __getitem__(self, key: int | str) -> ModuleSelector:
        if isinstance(key, int) and not isinstance(key, bool):
            try:
                return self._kids[key]
            except IndexError:
                raise IndexError(
                    f"{self._where()} has {len(self._kids)} children; index {key} is out of range"
                ) from None
        if isinstance(key, str):
            for kid in self._kids:
                if kid.name == key:
                    return kid
            raise KeyError(self._missing_child(key))
        raise TypeError(f"child index must be an int or a str, not {type(key).__name__}")

    def __getattr__(self, name: str) -> ModuleSelector:
        # only reached for names that are not attributes: look for a child of that name
        if name.startswith("__") or name in _NOT_CHILDREN:
            raise AttributeError(name)
        for kid in self._kids:
            if kid.name == name:
                return kid
        raise AttributeError(self._missing_child(name))

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | {k.name for k in self._kids if k.name.isidentifier()})

    def _where(self) -> str:
        return f"{self.path or 'root'} ({self._tag})"

    def _missing_child(self, name: str) -> str:
        names = [kid.name for kid in self._kids]
        msg = f"{self._where()} has no child {name!r}"
        close = difflib.get_close_matches(name, names, n=3)
        if close:
            msg += f"; did you mean {', '.join(repr(c) for c in close)}?"
        elif names:
            shown = ", ".join(repr(n) for n in names[:10]) + (", ..." if len(names) > 10 else "")
            msg += f"; its children are {shown}"
        else:
            msg += "; it has no children"
        return msg

    # ---- matching facts ------------------------------------------------------------------------
    def attributes(self) -> dict[str, str]:
        """The attributes selectors see, as strings (see ``attributes_of``: the module's
        public scalar attributes, its parameter slots and ``type``), plus ``path``. A
        ``PartialAttributes`` when some could not be read (a traced TorchScript module)."""
        known = self.memo(_ATTRIBUTES)
        attrs: dict[str, str] | None = known.get(id(self))
        if attrs is None:
            attrs = attributes_of(self.module)
            attrs["path"] = self.path
            known[id(self)] = attrs
        return attrs

    # ---- acting on the selection (what the 2021 k1lib's moduleSelector.freeze() / hookF() / hookB() did)
    def _chosen(self, prop: str | None) -> list[tuple[str, Module]]:
        """(path, module) of the selected nodes at and below this one (with ``prop``: those
        that have it, or ``all``), each module once."""
        from ._match import first_of_each_module

        nodes = [node for node in self.selected() if prop is None or prop in node]
        return [(node.path, node.module) for node in first_of_each_module(nodes)]

    def freeze(self, prop: str | None = None) -> Freeze:
        """Freeze the parameters of the selected modules (and their subtrees); a context
        manager that restores every flag on exit (``with l.moduleSelector.freeze():``)."""
        from ._act import set_requires_grad

        return set_requires_grad(self.module, self._chosen(prop), False, f"selected ({prop or 'any prop'})")

    def hook_forward(
        self, f: Callable[..., Any], prop: str | None = None
    ) -> contextlib.AbstractContextManager[None]:
        """Forward hooks ``f(path, module, inputs, output)`` on the selected modules, for a
        ``with`` block."""
        from ._act import hook_found

        return hook_found(self._chosen(prop), forward=f)

    def hook_backward(
        self, f: Callable[..., Any], prop: str | None = None
    ) -> contextlib.AbstractContextManager[None]:
        """Backward hooks ``f(path, module, grad, key)`` on the selected modules' output
        gradients, for a ``with`` block (as ``modsel.hooks(backward=f)``)."""
        from ._act import hook_found

        return hook_found(self._chosen(prop), backward=f)

    def explain(self) -> Explanation:
        """Which rules select this node, and for each other rule what failed (a ``str`` that
        notebooks show as a block, ``modsel.Explanation``)."""
        from ._select import explain

        return explain(self)

    def memo(self, key: object) -> dict[int, Any]:
        """The document's memo for ``key``: a dict from ``id(node)`` to whatever the matcher
        keeps per node (sibling positions, ``:has()`` answers, attributes). One dict per key
        for the whole document, so memoising creates no object per node."""
        table = self._memo.get(key)
        if table is None:
            table = self._memo[key] = {}
        return table

    # ---- display ------------------------------------------------------------------------------
    def __repr__(self) -> str:
        from ._render import render_text

        return render_text(self)

    def _repr_html_(self) -> str:
        from ._render import render_html

        return render_html(self)

    def tree(self, **options: Any) -> Tree:
        """The annotated tree as text, a ``str`` that notebooks show as collapsible HTML
        (``modsel.Tree``); options as ``modsel.render_text``."""
        from ._render import render_tree

        return render_tree(self, **options)


_NO_KIDS: list[ModuleSelector] = []
_NOT_CHILDREN = frozenset(ModuleSelector.__slots__) | {
    "depth",
    "order",
    "parameters",
    "props",
    "rules",
    "sheet",
    "freeze",
    "hook_forward",
    "hook_backward",
}
_ATTRIBUTES = object()
# memo key of the side table id(node) -> (props, rules), filled by modsel.select
SELECTED = object()


# the classes of TorchScript modules, whatever class was scripted or traced
SCRIPT_CLASSES = frozenset({"RecursiveScriptModule", "TracedModule", "TopLevelTracedModule"})


def tag_of(module: Module) -> str:
    """The type name a type selector compares with.

    The class name; for TorchScript modules (whose class is one of ``SCRIPT_CLASSES``) the
    name of the scripted or traced class; for a module whose class torch.distributed swapped
    (``fully_shard`` makes a ``Linear`` an ``FSDPLinear``) the name of the class it had.
    """
    original = getattr(module, "original_name", None)
    if isinstance(module, _script_module_type()) and isinstance(original, str):
        return original
    return user_class(type(module)).__name__


def user_class(cls: type) -> type:
    """``cls``, or the class it wraps when torch.distributed's composable APIs made it:
    ``fully_shard`` (FSDP2) and ``replicate`` swap a module's class for ``type(prefix +
    cls.__name__, (Wrapper, cls), ...)`` (``FSDPLinear``, whose bases are ``FSDPModule`` and
    ``Linear``), so that selectors, attributes and trees still see the user's class."""
    while True:
        bases = cls.__bases__
        if not (
            len(bases) == 2
            and getattr(bases[0], "__module__", "").startswith("torch.distributed.")
            and cls.__name__ != bases[1].__name__
            and cls.__name__.endswith(bases[1].__name__)
        ):
            return cls
        cls = bases[1]


_TAGS: dict[type, str] = {}  # class -> its tag, for classes whose tag does not depend on the instance


def class_tag(module: Module) -> str:
    """The type name of ``module`` as type selectors see it (``tag_of``: the class name, the
    scripted class for TorchScript, the user's class under ``fully_shard``), cached per class
    (this runs for every module of every tree). Public as ``modsel.type_name``."""
    cls = type(module)
    tag = _TAGS.get(cls)
    if tag is None:
        tag = tag_of(module)
        if cls.__name__ not in SCRIPT_CLASSES:
            _TAGS[cls] = tag
    return tag


def _script_module_type() -> type:
    import torch.jit

    return torch.jit.ScriptModule


_MRO_NAMES: dict[type, frozenset[str]] = {}


def class_names_of(node: ModuleSelector) -> frozenset[str]:
    """Names of every class in the module's MRO (what ``.Linear`` tests)."""
    cls = type(node.module)
    names = _MRO_NAMES.get(cls)
    if names is None:
        names = frozenset(c.__name__ for c in cls.__mro__)
        if isinstance(node.module, _script_module_type()):  # the scripted class's name too
            return names | {node._tag}
        _MRO_NAMES[cls] = names
    return names


def attributes_of(module: Module) -> dict[str, str]:
    """What attribute selectors read on a module, every value as text.

    - its public ``__dict__`` entries that are bool/int/float/str, enum members, or tuples/lists
      of them (written as ``_attr_text`` says);
    - for each registered parameter slot, ``"true"``/``"false"``: whether it holds a parameter
      (``Linear[bias=false]``);
    - ``type``: the qualified name of its class, ``f"{cls.__module__}.{cls.__qualname__}"``
      (``torch.nn.modules.linear.Linear``, ``peft.tuners.lora.layer.Linear``), to tell apart
      classes of the same name: ``Linear[type^="torch.nn."]``. A module that has its own public
      attribute or parameter slot named ``type`` keeps it (it is the module's data): ``type`` is
      then what that holds, or absent if it cannot be written as text.

    A TorchScript module keeps its attributes in its compiled class, and they are read from
    there (``_script_attributes``). A value that cannot be written as text is left out: one odd
    attribute must not break matching on the whole tree.
    """
    cls = type(module)
    qualname = _QUALNAMES.get(cls)
    if qualname is None:
        if issubclass(cls, _script_module_type()):
            return _script_attributes(module)
        qualname = _QUALNAMES[cls] = _qualified_name(user_class(cls))
    own = vars(module)
    params = module._parameters
    attrs: dict[str, str] = {} if "type" in own or "type" in params else {"type": qualname}
    for key, value in own.items():
        try:
            if key[0] == "_":  # most keys are nn.Module's own: key[0] is faster than startswith
                continue
            text = _attr_text(value)
        except Exception:  # a value whose __str__ raises, an int too long to print, a "" key
            continue
        if text is not None:
            attrs[key] = text
    for key, param in params.items():
        attrs[key] = "false" if param is None else "true"
    return attrs


# the qualified name of each eager module class met (the ``type`` attribute); never a
# TorchScript class, whose instances each have their own compiled class
_QUALNAMES: dict[type, str] = {}


def _qualified_name(cls: type) -> str:
    """``module.QualName`` of ``cls``; the plain ``__name__`` when a class's ``__module__`` or
    ``__qualname__`` cannot be read as text (one odd class must not break matching)."""
    try:
        module, qualname = getattr(cls, "__module__", None), cls.__qualname__
        if not isinstance(qualname, str):
            return cls.__name__
        return f"{module}.{qualname}" if isinstance(module, str) and module else qualname
    except Exception:
        return cls.__name__


class PartialAttributes(dict[str, str]):
    """The attributes of a module of which some could not be read (a traced TorchScript
    module), with ``reason`` saying why. A selector that asks for an attribute missing from it
    raises ``unreadable_attribute``'s error rather than match nothing: the module may well
    have that attribute."""

    __slots__ = ("reason",)

    def __init__(self, attrs: dict[str, str], reason: str) -> None:
        super().__init__(attrs)
        self.reason = reason


def unreadable_attribute(node: ModuleSelector, name: str) -> TargetError:
    """The error for a selector asking ``node`` for an attribute ``name`` that is not among
    the attributes read, when some could not be read (``PartialAttributes``)."""
    attrs = node.attributes()
    reason = attrs.reason if isinstance(attrs, PartialAttributes) else "some could not be read"
    return TargetError(
        f"cannot tell whether {node._where()} has the attribute {name!r}: {reason}. "
        "Match attribute selectors on the eager model, or on one made by torch.jit.script"
    )


def _script_attributes(module: Module) -> dict[str, str]:
    """The attributes of a TorchScript module, as ``attributes_of`` reads an eager one's.

    ``torch.jit.script`` compiles a module into a class of its own that keeps the constants
    (``__constants__`` and ``Final``: ``stride``, ``eps``, ``in_features``, ...), the typed
    attributes (``training``, the module's own) and the parameter slots (``bias`` holding
    ``None`` reads ``false``), and ``torch.jit.load`` gets the same class back: these are read,
    public names only, so the same selectors select the same modules as on the eager model.
    Attributes that scripting dropped (of a type TorchScript cannot hold, or ignored) are
    absent, as any attribute that cannot be written as text.

    ``type`` is the qualified name of the Python class when it is known (a scripted module: the
    eager module's exactly); for a loaded file, the name TorchScript saved, without its
    ``__torch__.`` prefix and ``___torch_mangle_N`` parts (a class of ``__main__`` reads
    ``__main__.Name``; TorchScript keeps ``__name__``, so a nested class reads ``module.Inner``).

    ``torch.jit.trace`` keeps parameters, buffers and ``training`` only: the attributes of a
    traced module, and of a loaded module whose class lacks constants its Python class declares
    (a saved trace), are ``PartialAttributes``.
    """
    script = vars(module).get("_actual_script_module", module)  # a TracedModule holds one
    traced = script is not module
    try:
        jit_type = script._c._type()
        concrete = vars(script).get("_concrete_type")
        if concrete is None:
            concrete = torch._C.ConcreteModuleType.from_jit_type(jit_type)
        values: dict[str, object] = dict(concrete.get_constants())
        slots: dict[str, bool] = {}
        for name, (kind, is_param) in concrete.get_attributes().items():
            if is_param:
                slots[name] = script._c.getattr(name) is not None
            elif kind.kind() != "TensorType":  # buffers are not attributes, as on eager modules
                values[name] = script._c.getattr(name)
        python_class = None if traced else concrete.py_class
        saved_name = jit_type.qualified_name()
    except (AttributeError, RuntimeError, TypeError) as e:  # a TorchScript this torch cannot read
        return PartialAttributes({}, f"its TorchScript class could not be read ({type(e).__name__}: {e})")
    names = values.keys() | slots.keys()
    attrs: dict[str, str] = {}
    if "type" not in names:
        attrs["type"] = _qualified_name(python_class) if python_class else _saved_class_name(saved_name)
    for name in sorted(names):  # the compiled class keeps no order
        if name.startswith("_"):
            continue
        if name in slots:
            attrs[name] = "true" if slots[name] else "false"
            continue
        try:
            text = _attr_text(values[name])
        except Exception:  # as for eager modules: a value that cannot be written is absent
            continue
        if text is not None:
            attrs[name] = text
    if traced:
        return PartialAttributes(
            attrs,
            "it is a torch.jit.trace module, which keeps parameters, buffers and `training`, "
            "not the module's other attributes",
        )
    if python_class is None:  # loaded: a saved trace lacks the constants of its class
        cls = _loaded_class(_saved_class_name(saved_name))
        declared = getattr(cls, "__constants__", ())
        if cls is not None and isinstance(declared, (list, tuple, set, frozenset)):
            lost = [c for c in declared if isinstance(c, str) and c not in names]
            if lost:
                return PartialAttributes(
                    attrs,
                    f"its TorchScript class lacks the constants {', '.join(map(repr, lost))} that "
                    f"{cls.__qualname__} declares (a module saved by torch.jit.trace keeps none)",
                )
    return attrs


_MANGLE = re.compile(r"___torch_mangle_\d+")


def _saved_class_name(qualified: str) -> str:
    """The Python qualified name of a TorchScript class from the name TorchScript saved:
    ``__torch__.torch.nn.modules.conv.___torch_mangle_1.Conv2d`` is
    ``torch.nn.modules.conv.Conv2d``, ``__torch__.Net`` (from ``__main__``) ``__main__.Net``."""
    parts = [p for p in qualified.split(".") if not _MANGLE.fullmatch(p)]
    if parts and parts[0] == "__torch__":
        parts = parts[1:] if len(parts) > 2 else ["__main__", *parts[1:]]
    return ".".join(parts)


def _loaded_class(qualified: str) -> type | None:
    """The module class of that qualified name if its module is imported already (nothing
    is imported: the name comes from a file), else None."""
    module_name, _, rest = qualified.rpartition(".")
    while module_name:
        owner = sys.modules.get(module_name)
        if owner is not None:
            found: object = owner
            for part in rest.split("."):
                found = getattr(found, part, None)
            return found if isinstance(found, type) and issubclass(found, Module) else None
        module_name, _, head = module_name.rpartition(".")
        rest = f"{head}.{rest}"
    return None


def _attr_text(value: object) -> str | None:
    """``value`` as selectors compare it (see ``_scalar_text``); a tuple or list of such values
    comma-joined without spaces (``Conv2d[stride="2,2"]``); None when it has no such text."""
    cls = type(value)  # the exact types first: this runs for every attribute of every module
    if cls is str:
        return value  # type: ignore[return-value]
    if cls is bool:
        return "true" if value else "false"
    if cls is tuple or cls is list or (isinstance(value, (tuple, list)) and not isinstance(value, Enum)):
        parts = [_scalar_text(v) for v in value]  # type: ignore[attr-defined]
        return None if None in parts else ",".join(parts)  # type: ignore[arg-type]
    return _scalar_text(value)


def _scalar_text(value: object) -> str | None:
    """A bool as ``true``/``false``, a float by ``repr`` (``1e-05``), an int or str as itself;
    an enum member by its value when that is one of these (a ``str`` enum: its string, an
    ``IntEnum``: its number), else by its name; None for anything else."""
    cls = type(value)  # the exact types first
    if cls is str:
        return value  # type: ignore[return-value]
    if cls is bool:
        return "true" if value else "false"
    if cls is int:
        return str(value)
    if cls is float:
        return repr(value)
    if isinstance(value, Enum):
        inner = value.value
        if isinstance(inner, _ATTR_SCALARS) and not isinstance(inner, Enum):
            return _scalar_text(inner)
        return value.name
    if isinstance(value, float):  # a subclass (numpy's float64): its number, not its repr
        return float.__repr__(value)
    if isinstance(value, (int, str)):  # a subclass: as it writes itself
        return str(value)
    return None


def build(model: Module) -> ModuleSelector:
    """The mirror tree of ``model``; its root has the name ``root``."""
    with paused_gc():
        root = new_root(model)
        grow(root)
    return root


def new_root(model: Module, node_class: type[ModuleSelector] | None = None) -> ModuleSelector:
    """A lone root node for ``model``, ready for ``grow``; every node ``grow`` adds below it is
    of the root's class (``node_class``, a subclass of ModuleSelector, or ModuleSelector).
    A ``torch.compile`` / DDP / DataParallel wrapper is seen through (``unwrap``)."""
    if not isinstance(model, Module):
        raise TypeError(f"expected an nn.Module, got {type(model).__name__}: {model!r:.80}")
    model = unwrap(model)
    cls = ModuleSelector if node_class is None else node_class
    if not (isinstance(cls, type) and issubclass(cls, ModuleSelector)):
        raise TypeError(f"node_class must be a subclass of modsel.ModuleSelector, got {cls!r}")
    return cls(model, "root", None, 0, "")


def grow(
    root: ModuleSelector,
    parents: list[ModuleSelector] | None = None,
    test: Callable[[ModuleSelector], bool] | None = None,
) -> list[ModuleSelector]:
    """Create the tree below a fresh ``root`` and return its nodes in document (pre-)order.

    With ``test``, return only the nodes that pass it; each node is tested as soon as its
    children exist (its ancestors, siblings and children are there, deeper nodes not yet).
    Nodes that got children are appended to ``parents`` (for ``dismantle``).
    """
    # This loop is the floor of every match: nodes are made with object.__new__ and their
    # slots set inline (the same fields as ModuleSelector.__init__), which saves a Python call
    # per module, about a tenth of the time of a whole match.
    new, node_cls, no_kids, tags = object.__new__, type(root), _NO_KIDS, _TAGS
    memo = root._memo
    found: list[ModuleSelector] = []
    keep = found.append
    # the modules with children that have a place already: only such a module can be its own
    # ancestor (a reference cycle), so only those pay for the walk up that checks it, and a
    # 10,000-deep chain is not quadratic. Kept by the modules' own hash, not id(), which would
    # make an int per module; a hash that says "equal" for another module only costs a walk
    placed: set[Module] = set()
    with contextlib.suppress(TypeError):  # an unhashable root: its children walk up instead
        placed.add(root.module)
    stack = [root]
    pop, extend = stack.pop, stack.extend
    node, name, mod = root, "", None
    try:
        while stack:
            node = pop()
            mods = node.module._modules
            if mods:
                prefix = node.path + "." if node.parent is not None else ""
                kids: list[ModuleSelector] = []
                for name, mod in mods.items():
                    if mod is None:
                        continue
                    if mod._modules:  # AttributeError for a value that is not a module: below
                        try:
                            if mod not in placed:
                                placed.add(mod)
                            elif _is_ancestor(mod, node):  # it contains itself further up: skip
                                continue
                        except TypeError:  # an unhashable module class: always walk up
                            if _is_ancestor(mod, node):
                                continue
                    kid = new(node_cls)
                    kid.module = mod
                    kid.name = name
                    kid.parent = node
                    kid._index = len(kids)
                    kid.path = prefix + name
                    kid._kids = no_kids
                    kid._memo = memo
                    tag = tags.get(type(mod))  # inlined class_tag: once per module of the tree
                    kid._tag = tag if tag is not None else class_tag(mod)
                    kids.append(kid)
                if kids:
                    node._kids = kids
                    extend(reversed(kids))
                    if parents is not None:
                        parents.append(node)
            if test is None or test(node):
                keep(node)
    except AttributeError:
        # checked here, not per module: the loop above is the floor of every match
        if mod is None or isinstance(mod, Module):
            raise
        raise not_a_module(node.path, name, mod) from None
    if test is None:
        root.order = found
    return found


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while a mirror tree is built and matched.

    The tree is made of reference cycles (parent links), so making 100k nodes with the collector
    on triggers full collections that walk the whole heap, model included: that alone can cost
    more than the walk. The nodes are collected later, or freed at once by ``dismantle``.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def dismantle(parents: list[ModuleSelector]) -> None:
    """Break a tree's cycles (give it the ``parents`` list that ``expand`` filled), so that
    reference counting frees it at once: for trees that never reach the caller."""
    if parents:  # the first is the root: drop its document-order list
        parents[0].__dict__.pop("order", None)
    for node in parents:
        node._kids = _NO_KIDS
        node._memo.clear()


def not_a_module(parent_path: str, name: str, value: object) -> TargetError:
    """The error for a value in a module's ``_modules`` that is neither a module nor ``None``
    (torch itself would fail on it with an AttributeError from deep inside a walk)."""
    path = f"{parent_path}.{name}" if parent_path else name
    where = f"the module at {parent_path!r}" if parent_path else "the root module"
    return TargetError(
        f"{path!r} is of type {type(value).__name__}, not an nn.Module: {where} holds it in its "
        f"_modules under {name!r}, where only modules and None may be"
    )


def walk_parameters(tops: Iterable[tuple[str, Module]]) -> Iterator[tuple[str, Parameter]]:
    """``(name, parameter)`` for every parameter of the modules ``tops`` (``(path, module)``
    pairs) and of the modules below them: the names, order and deduplication of
    ``module.named_parameters(prefix=path)`` (each module at its first place only, each
    parameter once; later tops skip what earlier ones reached), walked without recursion,
    since torch's own walk recurses and fails on models nested deeper than Python's
    recursion limit."""
    seen_modules: set[int] = set()
    seen: set[int] = set()
    for path, top in tops:
        stack = [(path, top)]
        while stack:
            prefix, module = stack.pop()
            if id(module) in seen_modules:
                continue
            seen_modules.add(id(module))
            dot = prefix + "." if prefix else ""
            for name, param in module._parameters.items():
                if param is not None and id(param) not in seen:
                    seen.add(id(param))
                    yield dot + name, param
            kids = module._modules
            if kids:
                below = []
                for name, kid in kids.items():
                    if kid is None:
                        continue
                    if not isinstance(kid, Module):
                        raise not_a_module(prefix, name, kid)
                    below.append((dot + name, kid))
                stack.extend(reversed(below))


def _is_ancestor(module: Module, node: ModuleSelector | None) -> bool:
    while node is not None:
        if node.module is module:
            return True
        node = node.parent
    return False


def preorder(root: ModuleSelector) -> Iterator[ModuleSelector]:
    """Every node below and at ``root``, in document (pre-)order."""
    stack = [root]
    pop, extend = stack.pop, stack.extend
    while stack:
        node = pop()
        yield node
        kids = node._kids
        if kids:
            extend(reversed(kids))
