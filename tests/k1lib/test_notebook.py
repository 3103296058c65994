"""The seed README's cells as a notebook in a real Jupyter kernel: no cell errors, plots come
out as images, the progress line is redrawn in place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

from .test_readme import CELLS  # noqa: E402

ILLUSTRATION = {20}  # pseudo-code with undefined names, not a cell of the original notebook
PLOTS = {5, 7, 8, 11, 12, 13}  # SliceablePlots: an image, then the text


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, list[int], Path]:
    """The README's cells, and a last cell ``l.run(1)`` with no semicolon, executed once."""
    # one torch thread in the kernel too: on a busy 2-core machine a second thread makes the tiny
    # README network tens of times slower (measured: 120 s instead of 1 s for one cell)
    folder = tmp_path_factory.mktemp("notebook")
    kept = [i for i in range(len(CELLS)) if i not in ILLUSTRATION]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(CELLS[i].rstrip("\n")) for i in kept]
    nb.cells.append(nbformat.v4.new_code_cell("l.run(1)"))
    # the kernel runs in a folder of its own (where Autosave's files go); k1lib comes from the
    # same environment as the tests (an editable install)
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(folder)}}
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        client.execute()
    return nb, kept, folder


def test_readme_runs_as_a_notebook(executed: tuple[Any, list[int], Path]) -> None:
    nb, kept, folder = executed
    for index, cell in zip(kept, nb.cells, strict=False):
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert not errors, f"cell {index} failed: {errors[0].ename}: {errors[0].evalue}"
        if index in PLOTS:
            kinds = [set(o.get("data", {})) for o in cell.outputs]
            assert any("image/png" in k for k in kinds), f"cell {index} drew no image: {kinds}"
            texts = "".join(o.get("data", {}).get("text/plain", "") for o in cell.outputs)
            assert "Sliceable plot. Can..." in texts
    printed = "".join(o.get("text", "") for o in nb.cells[kept.index(3)].outputs)
    assert printed.startswith("Run cancelled: Low loss 1 achieved!.\nSaved to autosave-2.pth")
    assert (folder / "autosave-2.pth").exists()
    landscape = nb.cells[kept.index(9)].outputs
    assert any("image/png" in o.get("data", {}) for o in landscape), "LossLandscape drew no image"
    assert "8/8 Finished [-3.2, 3.2] range" in _shown_text(landscape)


def _shown_text(outputs: list[Any]) -> str:
    """What a notebook shows as text: streams, and the text form of displays."""
    return "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)


def test_progress_is_one_display_updated_in_place(executed: tuple[Any, list[int], Path]) -> None:
    nb, kept, _ = executed
    run = nb.cells[kept.index(3)].outputs
    displays = [o for o in run if "k1lib-progress" in o.get("data", {}).get("text/html", "")]
    assert len(displays) == 1, [o.output_type for o in run]
    text = displays[0].data["text/plain"].splitlines()
    # where the run stops depends on the untrained network (the seed's output: epoch 1 of 10)
    assert text[0].startswith("epoch  0/10  train loss ")
    assert all(line.startswith("epoch ") for line in text[:-1])
    assert text[-1].startswith("Progress: ") and f"epoch: {len(text) - 2:2}/10" in text[-1]
    assert "\r" not in _shown_text(run)


def test_a_cell_ending_in_run_shows_no_learner(executed: tuple[Any, list[int], Path]) -> None:
    nb, _, _ = executed
    outputs = nb.cells[-1].outputs
    assert not [o for o in outputs if o.output_type == "execute_result"]
    assert "Learner" not in _shown_text(outputs)


def test_exported_html_shows_one_progress_line_per_run(executed: tuple[Any, list[int], Path]) -> None:
    nbconvert = pytest.importorskip("nbconvert")
    nb, kept, folder = executed
    page, _ = nbconvert.HTMLExporter().from_notebook_node(nb)
    (folder / "readme.html").write_text(page)
    # the lab template gives each code cell a div of class "jp-Cell jp-CodeCell"
    cells = page.split('class="jp-Cell jp-CodeCell')[1:]
    assert len(cells) == len(nb.cells)
    counts = {i: cells[kept.index(i)].count("Progress:") for i in (3, 6, 9)}
    assert counts == {3: 1, 6: 1, 9: 1}, counts
    assert cells[-1].count("Progress: 100%, epoch:  0/1") == 1
