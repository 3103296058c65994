"""The README's recipes ("Everyday training", "Watching any training loop") run as written and
do what their comments say."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path
from typing import Any

import torch

README = Path(__file__).parents[2] / "README.md"


def _recipe(heading: str = "### Everyday training") -> str:
    """The first python block after ``heading``."""
    text = README.read_text(encoding="utf-8")
    start = text.index(heading)
    block = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert block is not None
    return block.group(1)


def test_the_everyday_training_recipe(tmp_path: Path) -> None:
    namespace: dict[str, object] = {}
    out = io.StringIO()
    cwd = os.getcwd()
    os.chdir(tmp_path)  # it writes best.pth and autosaves
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(_recipe(), str(README), "exec"), namespace)
    finally:
        os.chdir(cwd)
    l: object = namespace["l"]
    valid_losses = l.Loss.epoch.valid  # type: ignore[attr-defined]
    accuracies = l.accuracy.epoch.valid  # type: ignore[attr-defined]
    assert len(valid_losses) < 12, "early stopping never stopped the run"
    assert "Early stopping" in out.getvalue()
    best = min(range(len(valid_losses)), key=valid_losses.__getitem__)
    outputs, targets = l.predict()  # type: ignore[attr-defined]
    accuracy = (outputs.argmax(1) == targets).double().mean().item()
    assert abs(accuracy - accuracies[best]) < 1e-9  # the best epoch's weights are back
    assert (tmp_path / "best.pth").exists()
    lrs = [step[0] for step in l.OneCycle.lrs]  # type: ignore[attr-defined]
    peak = max(range(len(lrs)), key=lrs.__getitem__)
    assert abs(lrs[0] - 3e-2 / 25) < 1e-12 and lrs == sorted(lrs[: peak + 1]) + lrs[peak + 1 :]  # warmup
    assert peak == len(lrs) - 1 or lrs[-1] < lrs[peak]  # then down, where the run got that far
    assert torch.is_tensor(outputs)
    # TensorBoard has each epoch's validation accuracy (float32) and each step's lr
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    valid = EventAccumulator(str(tmp_path / "runs/quadrants/valid")).Reload()
    logged = [(e.step, e.value) for e in valid.Scalars("accuracy")]
    assert logged == [(i, torch.tensor(a).float().item()) for i, a in enumerate(accuracies)]
    lr = EventAccumulator(str(tmp_path / "runs/quadrants/lr")).Reload()
    assert [e.value for e in lr.Scalars("lr")] == [torch.tensor(v).float().item() for v in lrs]


def test_the_watching_any_training_loop_recipe() -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    namespace: dict[str, object] = {}
    exec(compile(_recipe("### Watching any training loop"), str(README), "exec"), namespace)
    w: Any = namespace["w"]
    model: Any = namespace["model"]
    assert w.HookModule.names == ["0", "2", "4"] and w.HookParam.names == ["4.weight", "4.bias"]
    assert len(w.HookModule[0].backward.stds) == 24 == len(w.HookParam.data)  # 8 batches x 3 epochs
    assert w.HookModule[2].backward.means.isfinite().all()
    assert repr(w.HookParam).startswith("HookParam record: 2 params, 24 means and stds each:")
    assert isinstance(w.HookModule.plot("means", "stds").plot(), Figure)
    assert all(not m._forward_hooks for m in model.modules())  # nothing left after the block
