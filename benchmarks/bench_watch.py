"""Cost of watching every module (HookModule + HookParam) in each place it runs: the Learner,
a plain loop with ``k1lib.watch``, a Lightning fit with ``k1lib.lightning.Watch`` and a Hugging
Face ``Trainer`` with ``k1lib.hf.WatchCallback``; each against the same loop without it.

    python benchmarks/bench_watch.py [--quick]

Goals (issue "Introspection anywhere"): the plain-loop ``watch`` on every module costs no more
than HookModule + HookParam in the Learner (measured in the same run; the issue quotes 1.53x on
the README network and 1.17x on an MLP 512 x 6); the Lightning and Hugging Face callbacks add at
most 5% over ``watch`` in a plain loop, i.e. their ratio is at most 1.05 x the plain loop's.
Ratios are medians of alternated runs in one process, 1 thread, in CPU time (process_time).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import k1lib
from benchmarks.bench_hooks import learner
from benchmarks.bench_learner import alternate, loss_f, mlp_case, raw_loop, readme_case, start
from tests.k1lib.helpers import Batches


def ratio_of(times: tuple[list[float], list[float]]) -> float:
    return statistics.median(o / b for o, b in zip(times[1], times[0], strict=True))


def line(name: str, times: tuple[list[float], list[float]], batches: int, goal: float | None) -> float:
    ratio = ratio_of(times)
    base, other = (statistics.median(t) / batches * 1e6 for t in times)
    verdict = "" if goal is None else f"goal <= {goal:.3f}x  {'PASS' if ratio <= goal else 'FAIL'}"
    added = statistics.median(o - b for b, o in zip(*times, strict=True)) / batches * 1e6
    print(f"  {name:34s} {base:9.1f} -> {other:9.1f} us/batch (+{added:6.1f}) ratio {ratio:5.3f}x  {verdict}")
    return ratio


def plain(model: nn.Module, data: Batches, opt: torch.optim.Optimizer, watched: bool) -> Callable[[], None]:
    """One epoch of a plain loop (training, then validation under no_grad), with or without
    ``k1lib.watch(model, "*")`` around it."""

    def run() -> None:
        if watched:
            with k1lib.watch(model, "*") as w:
                raw_loop(model, data, opt, w.step)
        else:
            raw_loop(model, data, opt)

    return run


def lightning_fit(model: nn.Module, data: Batches, watched: bool) -> Callable[[], None] | None:
    try:
        import k1lib.lightning  # imports lightning; an ImportError without it
    except ImportError:
        return None
    import lightning as L  # noqa: N812

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return loss_f(self.net(batch[0]), batch[1])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=1e-4)

    module = Module()

    def run() -> None:
        callbacks = [k1lib.lightning.Watch("*", log_every=None)] if watched else []
        trainer = L.Trainer(
            max_epochs=1,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_progress_bar=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            callbacks=callbacks,
        )
        # batch_size=None: the list's batches as they are (a bare list is several loaders to it)
        trainer.fit(module, torch.utils.data.DataLoader(data.train, batch_size=None))

    return run


def hf_train(model: nn.Module, data: Batches, watched: bool, folder: str) -> Callable[[], None] | None:
    try:
        import k1lib.hf  # imports transformers; an ImportError without it
    except ImportError:
        return None
    import transformers

    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"loss": loss_f(self.net(x), labels)}

    wrapped = Wrapped()
    rows = [{"x": xb[i], "labels": yb[i]} for xb, yb in data.train for i in range(len(xb))]
    size = len(data.train[0][0])

    def run() -> None:
        args = transformers.TrainingArguments(
            output_dir=folder,
            per_device_train_batch_size=size,
            num_train_epochs=1,
            report_to=[],
            use_cpu=True,
            save_strategy="no",
            logging_strategy="no",
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        callbacks = [k1lib.hf.WatchCallback("*")] if watched else []
        trainer = transformers.Trainer(model=wrapped, args=args, train_dataset=rows, callbacks=callbacks)
        trainer.train()

    return run


def case(name: str, make: Callable[[], tuple[nn.Module, Batches]], repeats: int, folder: str) -> None:
    print(name)
    torch.manual_seed(0)
    model, data = make()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    batches = len(data.train) + len(data.valid)
    runs = [learner(model, data, opt, False), learner(model, data, opt, True)]
    for run in runs:
        run()
    times = alternate(*runs, repeats, time.process_time)
    in_learner = line("Learner, HookModule + HookParam", times, batches, None)
    runs = [plain(model, data, opt, False), plain(model, data, opt, True)]
    for run in runs:
        run()
    watch = line("plain loop, k1lib.watch", alternate(*runs, repeats, time.process_time), batches, in_learner)
    for label, pair in (
        ("Lightning, k1lib.lightning.Watch", [lightning_fit(model, data, w) for w in (False, True)]),
        ("HF Trainer, k1lib.hf.WatchCallback", [hf_train(model, data, w, folder) for w in (False, True)]),
    ):
        if pair[0] is None or pair[1] is None:
            print(f"  {label:34s} not installed")
            continue
        first, second = pair[0], pair[1]
        first(), second()
        times = alternate(first, second, max(3, repeats // 3), time.process_time)
        line(label, times, len(data.train), 1.05 * watch)


def main() -> int:
    repeats = start(__doc__)
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        case("README network, batch 64", readme_case, repeats, folder)
        case("MLP 512 x 6, batch 256", mlp_case, repeats, folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
