"""The ``modsel`` command: print a model's annotated tree for a stylesheet.

    modsel torch.nn:Transformer "TransformerEncoderLayer Linear: lora"
    modsel "torch.nn:Transformer(d_model=64, nhead=4)" "LayerNorm" --params
    modsel mymodel:build "Linear: lora" --depth 2          # mymodel.py in the current folder
    modsel model.pt "Conv2d[kernel_size='3,3']" --paths --trust

Exit status: 0 when some module was selected, 1 when none was, 2 when the arguments are wrong, the
target cannot be loaded or the stylesheet cannot be read or parsed, 130 when interrupted (Ctrl-C).
A failure is one line on stderr, never a traceback: loading a target runs code that is not ours
(importing a module, calling a factory, unpickling with ``--trust``), and whatever that code raises,
``SystemExit`` included, is a failure to load, never a result.

The target is imported as ``python -m`` would: the current folder comes first on ``sys.path``
while it loads (the console script does not put it there, ``python -m modsel`` does), so a
``mymodel.py`` next to the user is found either way. A factory's arguments are literals only,
read with ``ast.literal_eval``: the target names code to run, its arguments never are code.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib
import json
import os
import sys
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TextIO

from torch.nn import Module

from ._document import ModuleSelector
from ._errors import ModselError, SelectorSyntaxError, TargetError
from ._match import first_of_each_module
from ._render import printable, render_text
from ._select import select

__all__ = ["load_target", "main"]

EXIT_MATCHED, EXIT_NO_MATCH, EXIT_BAD_INPUT = 0, 1, 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT: what shells report for a program stopped by Ctrl-C
_DETAIL = 200  # characters kept of a foreign exception's message in the one-line report


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="modsel",
        description="Select modules of a PyTorch model with CSS and print the annotated tree.",
        epilog="Exit status: 0 when some module was selected, 1 when none was, 2 when the "
        "arguments are wrong, the target cannot be loaded or the stylesheet cannot be read or "
        "parsed, 130 when interrupted.",
    )
    p.add_argument(
        "target",
        help="'package.module:factory', called with no arguments (torch.nn:Transformer) or with "
        "literal ones ('torch.nn:Transformer(d_model=64, nhead=4)'); the current folder is "
        "searched first, as python -m does; this imports the module and runs the factory, so "
        "name only code you trust. Or a file saved with torch.save(model) or TorchScript",
    )
    p.add_argument("css", help="a stylesheet ('Linear: lora; LayerNorm'), or @FILE to read one")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--paths", action="store_true", help="print one selected path per line")
    out.add_argument("--json", action="store_true", help="print the selected modules as JSON")
    p.add_argument(
        "--depth",
        type=int,
        metavar="N",
        help="print the tree at most N levels deep (a cut node says how many selected modules it hides)",
    )
    p.add_argument(
        "--only-selected", action="store_true", help="print only selected modules and their ancestors"
    )
    p.add_argument(
        "--params", action="store_true", help="add parameter counts per subtree (and how many are frozen)"
    )
    p.add_argument("--no-fold", action="store_true", help="print runs of identical siblings in full")
    p.add_argument(
        "--trust",
        action="store_true",
        help="allow loading a whole pickled model: unpickling runs code from the file",
    )
    return p


def main(
    argv: Sequence[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """Run the command line; returns the exit status (argparse exits 2 itself on bad usage)."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    args = _parser().parse_args(argv)
    try:
        return _run(args, out, err)
    except KeyboardInterrupt:  # the user stopped us: neither a result nor bad input
        print("modsel: interrupted", file=err)
        return EXIT_INTERRUPTED


def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.depth is not None and args.depth < 0:
        print(f"modsel: --depth must be 0 or more, not {args.depth}", file=err)
        return EXIT_BAD_INPUT
    try:
        css = _read_css(args.css)
        with _cwd_on_path():
            model = load_target(args.target, trust=args.trust)
        root = select(model, css)
    except SelectorSyntaxError as e:
        where = f" {args.css[1:]!r}" if args.css.startswith("@") else ""
        print(f"modsel: bad stylesheet{where}: {e}", file=err)
        return EXIT_BAD_INPUT
    except ModselError as e:  # a target or stylesheet file that cannot be loaded or read
        print(f"modsel: {_one_line(str(e))}", file=err)
        return EXIT_BAD_INPUT
    selected = _selected(root)
    if args.paths:
        for node in selected:
            print(printable(node.path), file=out)
    elif args.json:
        rows = [{"path": n.path, "type": n.tag, "props": list(n.props)} for n in selected]
        print(json.dumps(rows, indent=2), file=out)
    else:
        print(
            render_text(
                root,
                params=args.params,
                max_depth=args.depth,
                fold=None if args.no_fold else 5,
                only_selected=args.only_selected,
            ),
            file=out,
        )
    if not selected:
        print("modsel: the stylesheet selected no module", file=err)
        return EXIT_NO_MATCH
    return EXIT_MATCHED


def _one_line(message: str, limit: int = 1000) -> str:
    """``message`` as one terminal-safe line (control characters escaped, an ESC from a
    target cannot reach the terminal), cut to ``limit`` characters (a 100k-character target
    is not echoed whole)."""
    line = printable(message)
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _selected(root: ModuleSelector) -> list[ModuleSelector]:
    return first_of_each_module(list(root.selected()))


def _read_css(css: str) -> str:
    if not css.startswith("@"):
        return css
    path = css[1:]
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        reason = e.strerror or _describe(e)
    except UnicodeDecodeError as e:  # a binary file, or text in another encoding
        reason = f"not UTF-8 text ({_describe(e)})"
    raise TargetError(f"cannot read stylesheet file {path!r}: {reason}")


def _describe(e: BaseException) -> str:
    """``Type: message`` as a traceback's last line writes it, but on one line: the first
    non-blank line of the message (torch's can run to a C++ stack), cut to ``_DETAIL``
    characters, control characters escaped."""
    kind = type(e).__qualname__
    if type(e).__module__ != "builtins":
        kind = f"{type(e).__module__}.{kind}"
    try:
        text = str(e)
    except Exception:  # a foreign exception's __str__ can fail too
        text = "(the message cannot be printed)"
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if len(line) > _DETAIL:
        line = line[: _DETAIL - 1] + "…"
    return f"{kind}: {printable(line)}" if line else kind


@contextmanager
def _cwd_on_path() -> Iterator[None]:
    """The current folder first on ``sys.path`` while the target loads, as ``python -m`` puts
    it: a console script starts with its own folder there instead, and ``modsel mymod:build``
    could not import the ``mymod.py`` the user is looking at (nor unpickle a model whose class
    lives there). Taken off afterwards, since ``main`` may run inside another program or a test.
    Nothing is added where it is first already (``python -m modsel``) or where the interpreter
    was told not to add it (``python -P``, ``PYTHONSAFEPATH``)."""
    try:
        cwd = os.getcwd()
    except OSError:  # the folder was deleted under us: there is nothing to import from it
        cwd = ""
    if (
        not cwd
        or getattr(sys.flags, "safe_path", False)
        or (sys.path and os.path.abspath(sys.path[0] or os.curdir) == cwd)
    ):
        yield
        return
    entry = cwd  # a str object of our own: removed by identity, whatever the target did to sys.path
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        for i, path in enumerate(sys.path):
            if path is entry:
                del sys.path[i]
                break


@contextmanager
def _loading(what: str) -> Iterator[None]:
    """Run a step of loading the target that runs code which is not ours (an import, an
    attribute lookup, a factory, unpickling) and turn whatever it raises into one
    ``TargetError`` line, ``what: Type: message``.

    ``BaseException`` on purpose: a ``SystemExit(0)`` from a factory (or the target
    ``sys:exit``) must not exit 0, "selected". ``KeyboardInterrupt`` is the user stopping
    modsel and passes through, and so does a ``TargetError``, which already says what failed
    (a ``SelectorSyntaxError`` from a factory is the factory's failure, not the stylesheet's).
    """
    try:
        yield
    except (KeyboardInterrupt, TargetError):
        raise
    except BaseException as e:
        raise TargetError(f"{what}: {_describe(e)}") from None


def load_target(target: str, *, trust: bool = False) -> Module:
    """The model a command-line target names: a file (TorchScript, or ``torch.save(model)``
    with ``trust``) or ``package.module:factory``, called with no arguments, or with literal
    ones: ``package.module:factory(3, width=8)``.

    Importing the module and calling the factory run its code, as importing it would. Every
    failure, whatever the target's code raised (``SystemExit`` included), is a ``TargetError``
    with a one-line message; only ``KeyboardInterrupt`` passes through.
    """
    if os.path.exists(target):
        return _load_file(target, trust)
    if ":" in target:
        return _load_factory(target)
    raise TargetError(
        f"target {target!r} is neither a file nor 'package.module:factory' (like torch.nn:Transformer)"
    )


def _load_factory(target: str) -> Module:
    module_name, _, attr_path = target.partition(":")
    call: tuple[list[object], dict[str, object]] | None = None
    paren = attr_path.find("(")
    if paren >= 0:
        call = _arguments(target, attr_path[paren:])
        attr_path = attr_path[:paren].strip()
    elif ")" in attr_path:
        raise TargetError(f"bad arguments in target {_shown(target)}: ')' without '('")
    module_name = module_name.strip()
    if not module_name or not attr_path:
        raise TargetError(f"target {target!r} must look like 'package.module:factory'")
    with _loading(f"cannot import {module_name!r} (from target {target!r})"):
        obj: object = importlib.import_module(module_name)
    for part in attr_path.split("."):
        with _loading(f"looking up {part!r} (in target {target!r}) failed"):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                names = [n for n in dir(obj) if not n.startswith("_")]
                close = difflib.get_close_matches(part, names, n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise TargetError(f"{module_name}:{attr_path}: no attribute {part!r}{hint}") from None
    if isinstance(obj, Module):
        if call is not None:  # calling a model runs its forward
            raise TargetError(
                f"{module_name}:{attr_path} is already a model (a {type(obj).__name__}), "
                f"not a factory: drop the arguments in {target!r}"
            )
        return obj
    if not callable(obj):
        raise TargetError(f"{target!r} is a {type(obj).__name__}, not a model or a factory")
    args, kwargs = call if call is not None else ([], {})
    with _loading(f"calling {target!r}" + (" with no arguments" if call is None else "") + " failed"):
        model = obj(*args, **kwargs)
    if not isinstance(model, Module):
        shown = target if call is not None else f"{target}()"
        raise TargetError(f"{shown!r} returned a {type(model).__name__}, not an nn.Module")
    return model


_LITERALS = "numbers, strings, bytes, True, False, None, and tuples, lists, dicts and sets of them"


def _arguments(target: str, text: str) -> tuple[list[object], dict[str, object]]:
    """The positional and keyword arguments written in ``text``, ``"(3, width=8)"``.

    Python's own parser reads the list (as the call ``f(3, width=8)``) and each argument must be
    a literal (``ast.literal_eval``): no names, calls, operators or unpacking, so that reading a
    target never runs code the target does not name. A bad list is a ``TargetError`` naming the
    part that is wrong.
    """

    def bad(why: str) -> TargetError:
        return TargetError(f"bad arguments in target {_shown(target)}: {why}")

    source = "f" + text.strip()
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as e:  # unbalanced parentheses, a positional argument after a keyword one, ...
        raise bad(printable(str(e.msg))) from None
    except Exception as e:  # the parser gives up on some inputs (too deep, too long)
        raise bad(_describe(e)) from None
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "f"):
        raise bad(f"expected one argument list '(...)' at the end, not {_shown(text.strip())}")
    args: list[object] = []
    kwargs: dict[str, object] = {}
    for arg in call.args:
        if isinstance(arg, ast.Starred):
            raise bad(f"{_shown(_segment(source, arg))}: unpacking is not allowed; write the values")
        args.append(_literal(source, arg, bad))
    for kw in call.keywords:
        if kw.arg is None:
            raise bad(f"{_shown(_segment(source, kw))}: unpacking is not allowed; write the values")
        if kw.arg in kwargs:  # a SyntaxError only when compiled, which ast.parse does not do
            raise bad(f"keyword argument repeated: {kw.arg}")
        kwargs[kw.arg] = _literal(source, kw.value, bad)
    return args, kwargs


def _literal(source: str, node: ast.expr, bad: Callable[[str], TargetError]) -> object:
    """The value of one argument, or ``bad(...)`` naming the smallest part that is not a literal
    (``y`` in ``[1, y]``; a call as a whole: ``__import__('os')``)."""
    try:
        return ast.literal_eval(node)
    except Exception as e:  # ValueError for a non-literal; TypeError for {[1]: 2}, ...
        error = e
    part = node
    while not isinstance(part, ast.Call):  # the innermost part that fails on its own
        inner = next(
            (kid for kid in ast.iter_child_nodes(part) if isinstance(kid, ast.expr) and not _is_literal(kid)),
            None,
        )
        if inner is None:
            break
        part = inner
    if isinstance(error, ValueError):
        raise bad(f"{_shown(_segment(source, part))} is not a literal (allowed: {_LITERALS})")
    raise bad(f"{_shown(_segment(source, part))}: {_describe(error)}")


def _is_literal(node: ast.expr) -> bool:
    try:
        ast.literal_eval(node)
    except Exception:  # whatever literal_eval refuses
        return False
    return True


def _segment(source: str, node: ast.AST) -> str:
    return ast.get_source_segment(source, node) or ast.unparse(node)


def _shown(text: str) -> str:
    """``text`` quoted for a one-line message: control characters escaped, cut to ``_DETAIL``."""
    if len(text) > _DETAIL:
        text = text[: _DETAIL - 1] + "…"
    return printable(repr(text))


def _is_torchscript(path: str) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any(name.split("/", 1)[-1].startswith(("code/", "constants.pkl")) for name in z.namelist())
    except Exception:  # not a zip, or a damaged one (bad names, versions): torch.load says which
        return False


def _load_file(path: str, trust: bool) -> Module:
    import pickle

    import torch

    if _is_torchscript(path):
        with _loading(f"cannot load TorchScript file {path!r}"):  # a damaged archive fails many ways
            return torch.jit.load(path, map_location="cpu")  # type: ignore[no-untyped-call,no-any-return]
    # torch.load raises many kinds on damaged files, and with --trust the pickle runs its code
    with _loading(f"cannot load {path!r}"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=not trust)
        except pickle.UnpicklingError as e:
            if not trust and "Unsupported global" in str(e):  # a real pickle of classes: code runs
                raise TargetError(
                    f"{path!r} holds a pickled model; loading it runs code stored in the file. "
                    "If you trust where it came from, add --trust."
                ) from None
            detail = str(e).rsplit("WeightsUnpickler error:", 1)[-1].strip().splitlines()
            reason = printable(detail[0][:_DETAIL]) if detail else _describe(e)
            raise TargetError(f"cannot load {path!r}: {reason}") from None
    if isinstance(obj, Module):
        return obj
    if isinstance(obj, dict):
        raise TargetError(
            f"{path!r} holds a dict (a state_dict?), not a model: modsel needs the "
            "module tree, so point it at 'package.module:factory' that builds the model instead"
        )
    raise TargetError(f"{path!r} holds a {type(obj).__name__}, not an nn.Module")
