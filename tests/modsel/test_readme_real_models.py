"""The README's "Real models" section runs as written, and prints the tree it shows."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import pytest
import torch

import modsel

README = Path(__file__).parents[2] / "README.md"

# torch.jit.script warns that TorchScript is deprecated; the README uses it on purpose
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("### Real models\n")
    return text[start : text.index("\n### ", start + 1)]


def _blocks(section: str) -> tuple[str, str]:
    code = re.search(r"```python\n(.*?)```", section, re.S)
    shown = re.search(r"```\n(ModuleSelector:.*?)```", section, re.S)
    assert code is not None and shown is not None
    return code.group(1), shown.group(1)


def test_the_real_models_section_runs_and_prints_its_tree(tmp_path: Path) -> None:
    code, shown = _blocks(_section())
    out = io.StringIO()
    namespace: dict[str, object] = {}
    cwd = os.getcwd()
    os.chdir(tmp_path)  # it saves net.pt
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, str(README), "exec"), namespace)
    finally:
        os.chdir(cwd)
    assert out.getvalue() == shown

    model = namespace["model"]
    adapted = modsel.paths(model, 'Linear[type^="peft."]')  # type: ignore[arg-type]
    assert len(adapted) == 8 and all(p.endswith(("q_proj", "v_proj")) for p in adapted)
    loaded = torch.jit.load(str(tmp_path / "net.pt"))
    assert modsel.paths(loaded, 'Conv2d[stride="2,2"][bias=false]') == ["0"]
