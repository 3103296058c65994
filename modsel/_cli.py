"""The ``modsel`` command: print a model's annotated tree for a stylesheet.

    modsel torch.nn:Transformer "TransformerEncoderLayer Linear: lora"
    modsel model.pt "Conv2d[kernel_size='3,3']" --paths --trust

Exit status: 0 when some module was selected, 1 when none was, 2 when the arguments are wrong, the
target cannot be loaded or the stylesheet cannot be read or parsed, 130 when interrupted (Ctrl-C).
A failure is one line on stderr, never a traceback: loading a target runs code that is not ours
(importing a module, calling a factory, unpickling with ``--trust``), and whatever that code raises,
``SystemExit`` included, is a failure to load, never a result.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import os
import sys
import zipfile
from collections.abc import Iterator, Sequence
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
        help="'package.module:factory' (called with no arguments, e.g. torch.nn:Transformer; "
        "this imports the module and runs the factory, so name only code you trust), "
        "or a file saved with torch.save(model) or TorchScript",
    )
    p.add_argument("css", help="a stylesheet ('Linear: lora; LayerNorm'), or @FILE to read one")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--paths", action="store_true", help="print one selected path per line")
    out.add_argument("--json", action="store_true", help="print the selected modules as JSON")
    p.add_argument("--depth", type=int, metavar="N", help="print the tree at most N levels deep")
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
        model = load_target(args.target, trust=args.trust)
        root = select(model, css)
    except SelectorSyntaxError as e:
        where = f" {args.css[1:]!r}" if args.css.startswith("@") else ""
        print(f"modsel: bad stylesheet{where}: {e}", file=err)
        return EXIT_BAD_INPUT
    except ModselError as e:  # a target or stylesheet file that cannot be loaded or read
        print(f"modsel: {e}", file=err)
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
    with ``trust``) or ``package.module:factory`` called with no arguments.

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
        return obj
    if not callable(obj):
        raise TargetError(f"{target!r} is a {type(obj).__name__}, not a model or a factory")
    with _loading(f"calling {target!r} with no arguments failed"):
        model = obj()
    if not isinstance(model, Module):
        raise TargetError(f"{target!r}() returned a {type(model).__name__}, not an nn.Module")
    return model


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
