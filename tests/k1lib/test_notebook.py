"""The seed README's cells as a notebook in a real Jupyter kernel: no cell errors, plots come
out as images, the progress line is redrawn in place."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

from .test_readme import CELLS  # noqa: E402

ILLUSTRATION = {20}  # pseudo-code with undefined names, not a cell of the original notebook
PLOTS = {5, 7, 8, 11, 12, 13}  # SliceablePlots: an image, then the text


def test_readme_runs_as_a_notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # one torch thread in the kernel too: on a busy 2-core machine a second thread makes the tiny
    # README network tens of times slower (measured: 120 s instead of 1 s for one cell)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    kept = [i for i in range(len(CELLS)) if i not in ILLUSTRATION]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(CELLS[i].rstrip("\n")) for i in kept]
    # the kernel runs in tmp_path (where Autosave-like files would go); k1lib comes from the
    # same environment as the tests (an editable install)
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    for index, cell in zip(kept, nb.cells, strict=True):
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert not errors, f"cell {index} failed: {errors[0].ename}: {errors[0].evalue}"
        if index in PLOTS:
            kinds = [set(o.get("data", {})) for o in cell.outputs]
            assert any("image/png" in k for k in kinds), f"cell {index} drew no image: {kinds}"
            texts = "".join(o.get("data", {}).get("text/plain", "") for o in cell.outputs)
            assert "Sliceable plot. Can..." in texts
    printed = "".join(o.get("text", "") for o in nb.cells[kept.index(3)].outputs)
    assert "Run cancelled: Low loss 1 achieved!.\nSaved to autosave-2.pth" in printed
    assert (tmp_path / "autosave-2.pth").exists()
    landscape = nb.cells[kept.index(9)].outputs
    assert any("image/png" in o.get("data", {}) for o in landscape), "LossLandscape drew no image"
    assert "8/8 Finished [-3.2, 3.2] range" in "".join(o.get("text", "") for o in landscape)
