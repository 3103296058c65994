"""The README's "Everyday training" recipe runs as written and does what its comments say."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import torch

README = Path(__file__).parents[2] / "README.md"


def _recipe() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("### Everyday training")
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
