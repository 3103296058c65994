"""The ``modsel`` command (``modsel._cli.main`` and ``python -m modsel``): exit status, output
modes, targets (factories, pickled models, TorchScript, state_dicts) and stylesheet files."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import modsel
from modsel._cli import main

from .models import network

ROOT = Path(__file__).resolve().parents[2]
NETWORK = "tests.modsel.models:network"
NOT_A_MODEL = 42
MODEL = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))


def broken_factory() -> nn.Module:
    raise RuntimeError("boom from the factory")


def dict_factory() -> dict[str, int]:
    return {"a": 1}


def exiting_factory() -> nn.Module:
    raise SystemExit(0)  # would read as "selected" if it reached the interpreter


def interrupting_factory() -> nn.Module:
    raise KeyboardInterrupt


class NotAnException(BaseException):
    pass


def odd_factory() -> nn.Module:
    raise NotAnException("raised by the factory")


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(code: int, out: str, err: str, *said: str) -> None:
    """Exit status 2, nothing on stdout, and one line on stderr (no traceback) that says ``said``."""
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1, err
    assert err.startswith("modsel: ")
    for text in said:
        assert text in err


# ---- exit status ---------------------------------------------------------------------------------


def test_match_exits_0_and_prints_the_tree() -> None:
    code, out, err = run(NETWORK, "SkipBlock #0: HookParam\nSkipBlock: HookModule")
    assert code == 0
    assert err == ""
    lines = [" ".join(line.split()) for line in out.splitlines()]
    assert lines[:2] == ["ModuleSelector:", "root: Network"]
    assert lines.count("2: SkipBlock HookModule") == 1
    assert lines.count("0: Linear HookParam") == 3


def test_no_match_exits_1() -> None:
    code, out, err = run(NETWORK, "Conv2d")
    assert code == 1
    assert "selected no module" in err
    assert out.startswith("ModuleSelector:\nroot: Network")  # the tree is still printed


def test_no_match_with_paths_prints_nothing() -> None:
    assert run(NETWORK, "Conv2d", "--paths")[:2] == (1, "")


def test_bad_selector_exits_2_with_the_caret_message() -> None:
    code, out, err = run(NETWORK, "Linear:propA")
    assert code == 2
    assert out == ""
    assert "unknown pseudo-class ':propA'" in err
    assert "at line 1, column 7" in err
    assert err.rstrip("\n").endswith("  Linear:propA\n        ^")


def test_bad_selector_on_a_later_line() -> None:
    code, _, err = run(NETWORK, "Linear: a\nReLU >> B")
    assert code == 2
    assert "at line 2, column 7" in err
    assert err.rstrip("\n").endswith("  ReLU >> B\n        ^")


def test_negative_depth_exits_2() -> None:
    code, out, err = run(NETWORK, "Linear", "--depth", "-1")
    assert code == 2
    assert out == ""
    assert "--depth" in err


def test_help_lists_the_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        run("--help")
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for said in ("0 when some module was selected", "1 when none was", "cannot be loaded", "130"):
        assert said in text


# ---- bad targets ---------------------------------------------------------------------------------


def test_unknown_module() -> None:
    code, out, err = run("no_such_package_for_modsel:Model", "Linear")
    assert code == 2
    assert out == ""
    assert "no_such_package_for_modsel" in err
    assert "cannot import" in err


def test_unknown_attribute_suggests_close_matches() -> None:
    code, _, err = run("torch.nn:Transformr", "Linear")
    assert code == 2
    assert "'Transformr'" in err
    assert "did you mean" in err
    assert "Transformer" in err.split("did you mean", 1)[1]


def test_unknown_nested_attribute() -> None:
    code, _, err = run("tests.modsel.models:network.nope", "Linear")
    assert code == 2
    assert "'nope'" in err


def test_factory_that_raises() -> None:
    code, out, err = run("tests.modsel.test_cli:broken_factory", "Linear")
    assert code == 2
    assert out == ""
    assert "RuntimeError" in err
    assert "boom from the factory" in err


def test_factory_needing_arguments() -> None:
    code, _, err = run("torch.nn:Linear", "Linear")
    assert code == 2
    assert "no arguments" in err


def test_target_that_is_not_a_module_or_factory() -> None:
    code, _, err = run("tests.modsel.test_cli:NOT_A_MODEL", "Linear")
    assert code == 2
    assert "int" in err
    assert "not a model" in err


def test_factory_returning_something_else() -> None:
    code, _, err = run("tests.modsel.test_cli:dict_factory", "Linear")
    assert code == 2
    assert "dict" in err
    assert "nn.Module" in err


def test_target_neither_file_nor_factory() -> None:
    code, _, err = run("does-not-exist.pt", "Linear")
    assert code == 2
    assert "package.module:factory" in err


def test_module_instance_attribute_is_a_target() -> None:
    # an attribute that already is an nn.Module is used as it is
    code, out, _ = run("tests.modsel.test_cli:MODEL", "Linear", "--paths")
    assert code == 0
    assert out.splitlines() == ["0", "2"]


# ---- output modes --------------------------------------------------------------------------------


def test_paths() -> None:
    code, out, err = run(NETWORK, "SkipBlock > Sequential > Linear:first-child", "--paths")
    assert code == 0
    assert err == ""
    assert out.splitlines() == ["bulk.2.seq.0", "bulk.3.seq.0", "bulk.4.seq.0"]


def test_paths_of_the_transformer_match_named_modules() -> None:
    code, out, _ = run("torch.nn:Transformer", "LayerNorm", "--paths")
    assert code == 0
    expected = [name for name, m in nn.Transformer().named_modules() if type(m) is nn.LayerNorm]
    assert len(expected) == 32
    assert out.splitlines() == expected


def test_json() -> None:
    code, out, _ = run(NETWORK, "#bulk > Linear: a\n#bulk > #1: b, c", "--json")
    assert code == 0
    assert json.loads(out) == [
        {"path": "bulk.0", "type": "Linear", "props": ["a"]},
        {"path": "bulk.1", "type": "LeakyReLU", "props": ["b", "c"]},
        {"path": "bulk.5", "type": "Linear", "props": ["a"]},
    ]


def test_json_without_props_gives_all() -> None:
    code, out, _ = run(NETWORK, "Network", "--json")
    assert code == 0
    assert json.loads(out) == [{"path": "", "type": "Network", "props": ["all"]}]


def test_json_no_match() -> None:
    code, out, _ = run(NETWORK, "Conv2d", "--json")
    assert code == 1
    assert json.loads(out) == []


def test_paths_and_json_are_exclusive() -> None:
    with pytest.raises(SystemExit) as info:
        run(NETWORK, "Linear", "--paths", "--json")
    assert info.value.code == 2


def test_depth() -> None:
    code, out, _ = run(NETWORK, "Linear: a", "--depth", "2")
    assert code == 0
    assert [" ".join(line.split()) for line in out.splitlines()] == [
        "ModuleSelector:",
        "root: Network",
        "bulk: Sequential",
        "0: Linear a",
        "1: LeakyReLU",
        "2: SkipBlock (+7 modules) … 3 selected below",
        "3: SkipBlock (+7 modules) … 3 selected below",
        "4: SkipBlock (+7 modules) … 3 selected below",
        "5: Linear a",
    ]


def test_only_selected() -> None:
    code, out, _ = run(NETWORK, "#bulk > Linear: a", "--only-selected")
    assert code == 0
    assert [" ".join(line.split()) for line in out.splitlines()] == [
        "ModuleSelector:",
        "root: Network",
        "bulk: Sequential",
        "0: Linear a",
        "5: Linear a",
    ]


def test_params() -> None:
    code, out, _ = run(NETWORK, "#bulk > Linear: a", "--params", "--only-selected")
    assert code == 0
    assert [" ".join(line.split()) for line in out.splitlines()] == [
        "ModuleSelector:",
        "root: Network 1,021",
        "bulk: Sequential 1,021",
        "0: Linear 20 a",
        "5: Linear 11 a",
    ]


def long_list() -> nn.Module:
    return nn.ModuleList([nn.Linear(1, 1) for _ in range(8)])


def test_no_fold() -> None:
    target = "tests.modsel.test_cli:long_list"
    _, folded, _ = run(target, "Linear")
    _, full, _ = run(target, "Linear", "--no-fold")
    assert "1…7: Linear ×7 (same as 0)" in folded
    assert "…" not in full
    assert len(full.splitlines()) == 2 + 8


# ---- stylesheet files ----------------------------------------------------------------------------


def test_stylesheet_from_file(tmp_path: Path) -> None:
    css = tmp_path / "hooks.css"
    css.write_text(
        "/* the seed README */\nSkipBlock #0: HookParam\nSkipBlock: HookModule\n", encoding="utf-8"
    )
    code, out, _ = run(NETWORK, f"@{css}")
    assert code == 0
    assert out == run(NETWORK, "SkipBlock #0: HookParam\nSkipBlock: HookModule")[1]


def test_stylesheet_file_with_error_reports_line(tmp_path: Path) -> None:
    css = tmp_path / "bad.css"
    css.write_text("Linear: a\n\nReLU:b\n", encoding="utf-8")
    code, _, err = run(NETWORK, f"@{css}")
    assert code == 2
    assert "at line 3, column 5" in err
    assert "bad.css" in err  # which file


def test_missing_stylesheet_file(tmp_path: Path) -> None:
    code, out, err = run(NETWORK, f"@{tmp_path / 'nope.css'}")
    assert code == 2
    assert out == ""
    assert "nope.css" in err


def test_binary_stylesheet_file(tmp_path: Path) -> None:
    css = tmp_path / "notepad.css"
    css.write_bytes("Linear".encode("utf-16"))  # starts with the byte order mark ff fe
    assert_one_line_error(*run(NETWORK, f"@{css}"), "notepad.css", "not UTF-8", "UnicodeDecodeError")


# ---- model files ---------------------------------------------------------------------------------


def test_pickled_model_needs_trust(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save(network(), path)
    code, out, err = run(str(path), "SkipBlock", "--paths")
    assert code == 2
    assert out == ""
    assert "--trust" in err
    assert "runs code" in err  # says why


def test_pickled_model_with_trust(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save(network(), path)
    code, out, err = run(str(path), "SkipBlock", "--paths", "--trust")
    assert code == 0
    assert err == ""
    assert out.splitlines() == ["bulk.2", "bulk.3", "bulk.4"]


# torch 2.10+ deprecates TorchScript; the file format still loads
@pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")
def test_torchscript_loads_without_trust_and_keeps_class_names(tmp_path: Path) -> None:
    path = tmp_path / "scripted.pt"
    torch.jit.script(network()).save(str(path))
    code, out, err = run(str(path), "SkipBlock > Sequential > Linear:first-child: x", "--json")
    assert code == 0, err
    assert json.loads(out) == [
        {"path": f"bulk.{i}.seq.0", "type": "Linear", "props": ["x"]} for i in (2, 3, 4)
    ]
    code, out, _ = run(str(path), "Network > Sequential > LeakyReLU", "--paths")
    assert (code, out) == (0, "bulk.1\n")


def test_state_dict_gives_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(network().state_dict(), path)
    for extra in ([], ["--trust"]):
        code, out, err = run(str(path), "Linear", *extra)
        assert code == 2
        assert out == ""
        assert "state_dict" in err
        assert "package.module:factory" in err


@pytest.mark.parametrize("content", [b"garbage", b"this is not a model", b""])
def test_damaged_file_is_not_called_a_pickled_model(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    code, out, err = run(str(path), "Linear")
    assert code == 2
    assert out == ""
    assert "junk.pt" in err
    assert "holds a pickled model" not in err  # it holds no model at all: --trust would not help


def rewrite_zip(src: Path, dst: Path, change: Callable[[str, bytes], bytes], extra: str = "") -> None:
    with zipfile.ZipFile(src) as z:
        members = [(info, z.read(info)) for info in z.infolist()]
    with zipfile.ZipFile(dst, "w") as out:
        for info, data in members:
            out.writestr(info, change(info.filename, data))
        if extra:
            out.writestr(f"{members[0][0].filename.split('/')[0]}/{extra}", b"")


@pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")
@pytest.mark.parametrize("damage", ["garbage code", "name not UTF-8"])
def test_damaged_torchscript_file(tmp_path: Path, damage: str) -> None:
    good, path = tmp_path / "scripted.pt", tmp_path / "damaged.pt"
    torch.jit.script(network()).save(str(good))
    if damage == "garbage code":  # torch's message runs over many lines with the source
        rewrite_zip(good, path, lambda name, data: b"def (:\n" if name.endswith(".py") else data)
    else:  # zipfile raises UnicodeDecodeError reading the names
        marker = "\u00e9" * 4
        rewrite_zip(good, path, lambda _, data: data, extra=marker)
        raw = path.read_bytes()
        assert raw.count(marker.encode()) == 2  # the local header and the central directory
        path.write_bytes(raw.replace(marker.encode(), b"\xff" * 8))
    assert_one_line_error(*run(str(path), "Linear"), "damaged.pt")


class ExitsWhenUnpickled:
    def __reduce__(self) -> tuple[object, tuple[int]]:
        return sys.exit, (0,)


def test_trusted_pickle_that_exits(tmp_path: Path) -> None:
    path = tmp_path / "exits.pt"
    torch.save(ExitsWhenUnpickled(), path)
    assert_one_line_error(*run(str(path), "Linear", "--trust"), "exits.pt", "SystemExit: 0")


# ---- the target's own code fails: exit 2 and one line, never a traceback or 0 --------------------

HELPER = "modsel_cli_test_helper"  # prefix of the modules the tests below write to tmp_path


@pytest.fixture
def write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str], str]]:
    """Writes a module that only this test can import; returns its name."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(name: str, source: str) -> str:
        (tmp_path / f"{HELPER}_{name}.py").write_text(source, encoding="utf-8")
        return f"{HELPER}_{name}"

    yield write
    for name in [n for n in sys.modules if n.startswith(HELPER)]:
        del sys.modules[name]


@pytest.mark.parametrize(
    ("source", "said"),
    [
        ("raise RuntimeError('kaboom on import\\nsecond line')\n", "RuntimeError: kaboom on import"),
        ("def f(:\n", "SyntaxError"),
        ("import sys\nsys.exit(0)\n", "SystemExit: 0"),
    ],
    ids=["raises", "syntax error", "exits 0"],
)
def test_target_module_that_raises_on_import(
    write_module: Callable[[str, str], str], source: str, said: str
) -> None:
    name = write_module("raises_on_import", source)
    code, out, err = run(f"{name}:model", "Linear")
    assert_one_line_error(code, out, err, "cannot import", repr(name), said)


def test_attribute_lookup_that_raises(write_module: Callable[[str, str], str]) -> None:
    name = write_module("lookup", "def __getattr__(name):\n    return {}[name]\n")
    code, out, err = run(f"{name}:model", "Linear")
    assert_one_line_error(code, out, err, "looking up 'model'", f"{name}:model", "KeyError: 'model'")


@pytest.mark.parametrize(
    ("target", "said"),
    [
        ("tests.modsel.test_cli:exiting_factory", "SystemExit: 0"),
        ("sys:exit", "SystemExit"),
        ("tests.modsel.test_cli:odd_factory", "NotAnException: raised by the factory"),
    ],
)
def test_factory_that_exits_is_a_load_failure(target: str, said: str) -> None:
    assert_one_line_error(*run(target, "Linear"), f"calling {target!r}", said)


def test_interrupt_while_loading_exits_130() -> None:
    try:
        result = run("tests.modsel.test_cli:interrupting_factory", "Linear")
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped main()")
    assert result == (130, "", "modsel: interrupted\n")


def long_message_factory() -> nn.Module:
    raise ValueError("x" * 10_000)


def test_a_long_message_is_cut() -> None:
    code, _, err = run("tests.modsel.test_cli:long_message_factory", "Linear")
    assert code == 2
    assert len(err) < 400
    assert err.rstrip("\n").endswith("x…")


# ---- the real entry point ------------------------------------------------------------------------


def test_python_dash_m_modsel() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "modsel", "torch.nn:Transformer", "LayerNorm", "--paths"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 32
    assert lines[0] == "encoder.layers.0.norm1"
    assert lines[-1] == "decoder.norm"
    assert "encoder.norm" in lines


@pytest.mark.parametrize(
    ("target", "status"), [("sys:exit", 2), ("tests.modsel.test_cli:interrupting_factory", 130)]
)
def test_real_exit_status_when_the_target_exits(target: str, status: int) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "modsel", target, "Linear"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == status
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr


FORGED = nn.ModuleDict({"a\nb": nn.Linear(1, 1)})


def test_paths_with_control_characters_are_escaped() -> None:
    code, out, _ = run("tests.modsel.test_cli:FORGED", "Linear", "--paths")
    assert code == 0
    assert out == "a\\nb\n"


# ---- constructor arguments in the target ---------------------------------------------------------


def sized(n: int, width: int = 2, bias: bool = True) -> nn.Module:
    return nn.ModuleList([nn.Linear(width, width, bias=bias) for _ in range(n)])


def test_factory_with_positional_and_keyword_arguments() -> None:
    code, out, err = run("tests.modsel.test_cli:sized(3, width=5)", "Linear", "--params")
    assert (code, err) == (0, "")
    lines = [" ".join(line.split()) for line in out.splitlines()]
    assert lines[1:] == [
        "root: ModuleList 90",
        "0: Linear 30 all",
        "1: Linear 30 all",
        "2: Linear 30 all",
    ]


def test_class_with_keyword_arguments() -> None:
    target = "torch.nn:Transformer(d_model=16, nhead=2, num_encoder_layers=1, num_decoder_layers=1)"
    code, out, _ = run(target, "LayerNorm", "--paths")
    assert code == 0
    assert len(out.splitlines()) == 7  # 2 + 3 in the layers, one after each stack


@pytest.mark.parametrize(
    ("args", "model"),
    [
        ("(2, bias=False)", "root: ModuleList (+2 modules) 8"),
        ("( 1 , width = 3 )", "root: ModuleList (+1 module) 12"),
        ("(+2, width=1)", "root: ModuleList (+2 modules) 4"),
        ("(n=1, width=2, bias=None)", "root: ModuleList (+1 module) 4"),
    ],
)
def test_literal_arguments(args: str, model: str) -> None:
    code, out, _ = run(f"tests.modsel.test_cli:sized{args}", "Linear", "--params", "--depth", "0")
    assert code == 0
    assert " ".join(out.splitlines()[1].split()).startswith(model)


@pytest.mark.parametrize(
    ("args", "said"),
    [
        ("(x)", "'x' is not a literal"),
        ("(1, width=[1, y])", "'y' is not a literal"),
        ("(len([]))", "'len([])' is not a literal"),
        ("(__import__('os'))", "\"__import__('os')\" is not a literal"),
        ("(__import__('os').system('false'))", "is not a literal"),
        ("(lambda: 0)", "'lambda: 0' is not a literal"),
        ("(-x)", "'x' is not a literal"),
        ("(3", "'(' was never closed"),
        ("(3))", "unmatched ')'"),
        (")", "')' without '('"),
        ("(1)(2)", "one argument list '(...)' at the end, not '(1)(2)'"),
        ("(1).x", "one argument list"),
        ("(*a)", "'*a': unpacking is not allowed"),
        ("(**k)", "'**k': unpacking is not allowed"),
        ("(a=1, a=2)", "keyword argument repeated: a"),
        ("(n=1, 2)", "positional argument follows keyword argument"),
        ("({[1]: 2})", "'{[1]: 2}': TypeError: unhashable type"),
        ("(10**9)", "'10**9' is not a literal"),
    ],
)
def test_bad_arguments_are_one_line_before_anything_is_imported(args: str, said: str) -> None:
    target = f"no_such_module_for_modsel:build{args}"  # the arguments fail first: nothing is imported
    assert_one_line_error(*run(target, "Linear"), "bad arguments in target", said)


def test_a_very_long_bad_argument_list_is_cut() -> None:
    code, out, err = run("no_such_module_for_modsel:build(" + "x" * 5000 + ")", "Linear")
    assert_one_line_error(code, out, err, "is not a literal")
    assert len(err) < 700


def test_arguments_to_a_model_are_refused() -> None:
    assert_one_line_error(*run("tests.modsel.test_cli:MODEL(1)", "Linear"), "already a model", "Sequential")


def test_a_factory_that_fails_on_its_arguments() -> None:
    target = "tests.modsel.test_cli:sized(1, 2, 3, 4)"
    code, out, err = run(target, "Linear")
    assert_one_line_error(code, out, err, f"calling {target!r} failed", "TypeError")
    assert "no arguments" not in err


def test_a_factory_given_arguments_returning_something_else() -> None:
    assert_one_line_error(
        *run("tests.modsel.test_cli:dict_factory()", "Linear"),
        "'tests.modsel.test_cli:dict_factory()'",
        "dict",
    )


# ---- the current folder is importable, as with python -m -----------------------------------------

MYMOD = """
from torch import nn


class Net(nn.Module):
    def __init__(self, n=2, width=4):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(width, width) for _ in range(n)])


def build(n=2, width=4):
    return Net(n, width)
"""

# what the installed console script runs (see the project's [project.scripts]); run as a file,
# Python puts the file's folder first on sys.path, not the working folder, as for the real one
LAUNCHER = "import sys\nfrom modsel._cli import main\nsys.exit(main())\n"


def _env() -> dict[str, str]:
    """The environment of a subprocess that imports the same modsel as these tests."""
    env = dict(os.environ)
    here = str(Path(modsel.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    return env


@pytest.fixture(params=["console script", "launcher"])
def modsel_command(request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    """The ``modsel`` command as a user runs it: the installed console script, and a launcher
    file with the same code (which models it even where the package is not installed)."""
    if request.param == "console script":
        script = shutil.which("modsel", path=str(Path(sys.executable).parent))
        if script is None:
            pytest.skip("the modsel console script is not installed next to this Python")
        return [script]
    launcher = tmp_path / "bin" / "modsel_launcher.py"
    launcher.parent.mkdir()
    launcher.write_text(LAUNCHER, encoding="utf-8")
    return [sys.executable, str(launcher)]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder holding ``mymod.py``, which nothing but the working folder puts on sys.path."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "mymod.py").write_text(MYMOD, encoding="utf-8")
    return work


def _modsel(command: list[str], workdir: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command, *argv], capture_output=True, text=True, timeout=120, cwd=workdir, env=_env()
    )


def test_console_script_loads_a_factory_from_the_current_folder(
    modsel_command: list[str], workdir: Path
) -> None:
    result = _modsel(modsel_command, workdir, "mymod:build", "Linear", "--paths")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["layers.0", "layers.1"]


def test_console_script_passes_constructor_arguments(modsel_command: list[str], workdir: Path) -> None:
    result = _modsel(modsel_command, workdir, "mymod:build(3, width=8)", "Linear", "--params", "--depth", "1")
    assert result.returncode == 0, result.stderr
    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    assert lines[1:] == ["root: Net 216", "layers: ModuleList (+3 modules) 216 … 3 selected below"]


def test_console_script_rejects_code_in_the_arguments(modsel_command: list[str], workdir: Path) -> None:
    (workdir / "marker").unlink(missing_ok=True)
    target = "mymod:build(__import__('pathlib').Path('marker').touch())"
    result = _modsel(modsel_command, workdir, target, "Linear")
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "is not a literal" in result.stderr
    assert not (workdir / "marker").exists()


def test_console_script_unpickles_a_class_from_the_current_folder(
    modsel_command: list[str], workdir: Path
) -> None:
    save = "import mymod, torch; torch.save(mymod.build(), 'net.pt')"  # -c: the folder is on sys.path
    subprocess.run([sys.executable, "-c", save], check=True, cwd=workdir, env=_env(), timeout=120)
    result = _modsel(modsel_command, workdir, "net.pt", "Linear", "--paths", "--trust")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["layers.0", "layers.1"]


CWD_MODULE = "modsel_cli_test_cwd_module"


def test_main_imports_from_the_working_folder_and_restores_sys_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / f"{CWD_MODULE}.py").write_text(MYMOD, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    before = list(sys.path)
    try:
        assert run(f"{CWD_MODULE}:build(1)", "Linear", "--paths")[:2] == (0, "layers.0\n")
        assert sys.path == before  # main() may run inside a program: it leaves sys.path as it was
        assert_one_line_error(*run(f"{CWD_MODULE}:build('x')", "Linear"), "calling", "TypeError")
        assert sys.path == before
    finally:
        sys.modules.pop(CWD_MODULE, None)


def test_a_target_with_control_characters_or_a_huge_one_gives_one_short_safe_line() -> None:
    err = io.StringIO()
    assert main(["torch.nn:Lin\x1b[2Jear", "Linear"], io.StringIO(), err) == 2
    assert "\x1b" not in err.getvalue() and "\\x1b" in err.getvalue()
    assert err.getvalue().count("\n") == 1
    err = io.StringIO()
    assert main(["x" * 100_000 + ":f", "Linear"], io.StringIO(), err) == 2
    assert len(err.getvalue()) < 1100 and err.getvalue().count("\n") == 1
