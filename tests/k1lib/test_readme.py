"""The seed README (tests/k1lib/seed/README_2021.md, copied from the 2021 k1lib) runs verbatim.

Every ```python cell runs in order in one namespace, as in a notebook; a cell's last expression
is its output (its repr), and what it prints is captured. Each test checks what the README
shows for that cell.
"""

from __future__ import annotations

import ast
import contextlib
import io
import re
from pathlib import Path
from typing import Any

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

SEED = Path(__file__).parent / "seed" / "README_2021.md"
CELLS = re.findall(r"```python\n(.*?)```", SEED.read_text(), re.S)


def _section_output(cell: int) -> str:
    """The README's output block after cell ``cell`` (4-space indented text), dedented."""
    text = SEED.read_text()
    start = text.index(f"```python\n{CELLS[cell]}```") + len(f"```python\n{CELLS[cell]}```")
    end = text.find("```python", start)
    block = text[start : end if end != -1 else len(text)]
    lines = [line[4:] for line in block.splitlines() if line.startswith("    ") or not line.strip()]
    return "\n".join(lines).strip("\n")


def _squash(text: str) -> list[str]:
    """Lines with runs of spaces squeezed, empty lines dropped: for tree layouts."""
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


class Notebook:
    """Runs cells like a notebook kernel does."""

    def __init__(self) -> None:
        self.namespace: dict[str, Any] = {"__name__": "__readme__"}

    def run(self, cell: int) -> tuple[Any, str]:
        source = CELLS[cell]
        tree = ast.parse(source)
        result = None
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            last = tree.body[-1] if tree.body else None
            if isinstance(last, ast.Expr) and not source.rstrip().endswith(";"):
                exec(compile(ast.Module(tree.body[:-1], []), f"<cell {cell}>", "exec"), self.namespace)
                result = eval(compile(ast.Expression(last.value), f"<cell {cell}>", "eval"), self.namespace)
            else:
                exec(compile(tree, f"<cell {cell}>", "exec"), self.namespace)
        return result, stdout.getvalue()


@pytest.fixture(scope="module")
def nb() -> Notebook:
    torch.manual_seed(0)
    return Notebook()


def test_cell_0_imports(nb: Notebook) -> None:
    nb.run(0)
    for name in ("torch", "nn", "optim", "F", "np", "plt", "partial", "math", "os", "time", "k1lib"):
        assert name in nb.namespace, name


def test_cells_1_2_define_the_network(nb: Notebook) -> None:
    nb.run(1)
    nb.run(2)
    assert sum(1 for _ in nb.namespace["Network"]().modules()) == 29


def test_cell_3_trains_until_the_low_loss(nb: Notebook) -> None:
    _, out = nb.run(3)
    assert out.endswith("Run cancelled: Low loss 1 achieved!.\nSaved to autosave-2.pth\n"), out
    assert re.search(r"Progress: +\d+%, epoch: +\d+/10, batch: +\d+/\d+, elapsed: +[\d.]+s", out)


def test_cell_4_the_callback_list(nb: Notebook) -> None:
    result, _ = nb.run(4)
    assert repr(result) == _section_output(4)


def test_cell_5_param_finder(nb: Notebook) -> None:
    result, out = nb.run(5)
    assert "Suggested param: " in out
    assert repr(result) == _section_output(5).split("\n\n\n")[-1].strip()


def test_cell_6_loss(nb: Notebook) -> None:
    result, out = nb.run(6)
    assert out.endswith("Run cancelled: Low loss 1 achieved!.\nSaved to autosave-2.pth\n"), out
    assert repr(result) == _section_output(6).split("Saved to autosave-2.pth")[-1].strip()


@pytest.mark.parametrize("cell", [7, 8])
def test_cells_7_8_loss_plots(nb: Notebook, cell: int) -> None:
    result, _ = nb.run(cell)
    expected = _section_output(cell).split("![png]")[0].strip() or _section_output(cell)
    expected = _section_output(cell)[_section_output(cell).index("Sliceable plot.") :]
    assert repr(result) == expected
    fig = result.plot()
    assert fig.axes and all(ax.lines for ax in fig.axes)


def test_cell_9_loss_landscape(nb: Notebook) -> None:
    result, out = nb.run(9)
    assert "8/8" in out and "Finished [-3.2, 3.2] range" in out
    assert result is None or hasattr(result, "savefig") or hasattr(result, "_repr_png_")


def test_cell_10_hook_param_repr(nb: Notebook) -> None:
    result, _ = nb.run(10)
    expected = _section_output(10)
    counted = re.compile(r"6 params, (\d+) means and stds each")
    match = counted.search(repr(result))
    assert match is not None, repr(result)
    assert int(match.group(1)) == len(nb.namespace["l"].HookParam[0].means) > 0
    assert counted.sub("N", repr(result)) == counted.sub("N", expected)


@pytest.mark.parametrize("cell", [11, 12, 13])
def test_cells_11_to_13_hook_plots(nb: Notebook, cell: int) -> None:
    result, _ = nb.run(cell)
    assert repr(result) == _section_output(cell).split("\n\n\n")[-1].strip()
    assert result.plot() is not None


def test_cell_14_module_selector(nb: Notebook) -> None:
    result, _ = nb.run(14)
    assert _squash(repr(result)) == _squash(_section_output(14))


def test_cell_15_css(nb: Notebook) -> None:
    result, _ = nb.run(15)
    assert _squash(repr(result)) == _squash(_section_output(15))


@pytest.mark.parametrize("cell", [16, 17])
def test_cells_16_17_data_reprs(nb: Notebook, cell: int) -> None:
    result, _ = nb.run(cell)
    assert repr(result) == _section_output(cell)


def test_cell_18_data_sample(nb: Notebook) -> None:
    (x, y), _ = nb.run(18)
    assert x.dtype == y.dtype == torch.bfloat16
    assert x.shape == y.shape == (64,)
    assert float(x.min()) >= -5 and float(x.max()) <= 5
    assert torch.allclose(y.float(), torch.exp(x.float()), rtol=2e-2)


def test_cell_19_learner_repr(nb: Notebook) -> None:
    result, _ = nb.run(19)
    text = repr(result)
    expected = _section_output(19)
    assert text.splitlines()[:8] == expected.splitlines()[:8]  # l.model: and the network's first lines
    assert "l.opt:\n    Adam (\n    Parameter Group 0\n" in text
    assert "l.cbs:\n    Callbacks:\n    - ProgressBar\n    - DontTrainValid\n" in text
    assert text[text.rindex("Use...") :] == expected[expected.rindex("Use...") :]


def test_cell_20_is_illustration_not_a_cell(nb: Notebook) -> None:
    # the README shows the idea of a loop with undefined names (epochs, getData, train)
    with pytest.raises(NameError):
        nb.run(20)


def test_cells_21_22_define_callbacks(nb: Notebook) -> None:
    nb.run(21)
    nb.run(22)
    assert issubclass(nb.namespace["ProgressBar"], nb.namespace["k1lib"].Callback)
