"""The progress output: epoch lines with what was recorded, a live line with the time left,
messages on their own lines, the right form for a terminal, a log and Jupyter."""

from __future__ import annotations

import io
import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

import k1lib
from k1lib import _live
from k1lib._live import Live, duration, say

from .helpers import learner
from .test_metrics import classifier


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _bar(l: Any, stream: io.StringIO, refresh: float = 10.0) -> Any:
    l.cbs.remove("ProgressBar") if "ProgressBar" in l.cbs else None
    bar = k1lib.callbacks.ProgressBar(refresh=refresh, stream=stream)
    l.cbs.append(bar)
    return bar


def test_each_epoch_gets_a_line_with_its_values_time_and_samples_per_second() -> None:
    l = classifier(lr=0.1)
    l.cbs.withAccuracy()
    out = io.StringIO()
    _bar(l, out)
    l.run(3)
    lines = out.getvalue().splitlines()
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert len(epochs) == 3
    for i, line in enumerate(epochs):
        assert line.startswith(f"epoch {i}/3  train loss {l.Loss.epoch.train[i]:.4g}")
        assert f"valid loss {l.Loss.epoch.valid[i]:.4g}" in line
        assert f"train accuracy {l.accuracy.epoch.train[i]:.4g}" in line
        assert f"valid accuracy {l.accuracy.epoch.valid[i]:.4g}" in line
        # 23 training samples an epoch over the training part's time
        match = re.search(r"  ([\d.]+)(k|M)? samples/s$", line)
        assert match is not None, line
        assert re.search(r"  \d+\.\d\ds  ", line), line  # the epoch's time
    assert lines[-1].startswith("Progress: 100%, epoch:  2/3")


def test_samples_per_second_counts_the_training_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    # the progress bar's clock moves 1 s each time it is read: startRun, startEpoch, then
    # startValidBatches (a log draws no live line in between, so nothing else reads it)
    ticks = iter(range(10**6))
    clock = types.SimpleNamespace(perf_counter=lambda: float(next(ticks)))
    monkeypatch.setattr(k1lib.callbacks.progress_bar, "time", clock)
    l = classifier(lr=0.1)  # 23 training samples in 4 batches
    out = io.StringIO()
    _bar(l, out)
    l.run(1)
    line = next(x for x in out.getvalue().splitlines() if x.startswith("epoch 0/1"))
    assert line.endswith("  2.00s  23 samples/s"), line  # the epoch took 2 ticks, training 1


def test_a_dict_batch_counts_its_first_tensor() -> None:
    from k1lib.callbacks.progress_bar import _count

    assert _count({"input_ids": torch.zeros(7, 3), "mask": torch.zeros(7, 3)}) == 7
    assert _count((torch.zeros(5, 2), torch.zeros(5))) == 5
    assert _count(torch.zeros(())) == 1 and _count("text") == 0
    assert _count({"temperature": torch.tensor(1.0), "x": torch.zeros(8, 2)}) == 8  # not the scalar


def test_an_epoch_cancelled_before_its_values_are_recorded_shows_no_stale_values() -> None:
    l = learner(train=4, valid=2)
    l.cbs.withCancelOnLowLoss(1e9, epochMode=True)  # cancels at the first epoch's end
    out = io.StringIO()
    _bar(l, out)
    l.run(5)
    text = out.getvalue()
    epochs = [line for line in text.splitlines() if line.startswith("epoch ")]
    assert len(epochs) <= 1
    recorded = len(l.Loss.epoch.train)
    if epochs and not recorded:
        assert "loss" not in epochs[0]


def test_on_a_terminal_the_live_line_is_redrawn_and_messages_start_on_their_own_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    l = learner(train=40, valid=4)
    l.cbs.withCancelOnLowLoss(1e9)  # cancels during the first batches
    screen = _Terminal()
    _bar(l, screen, refresh=1e9)
    monkeypatch.setattr(sys, "stdout", screen)  # the messages go to the same screen
    l.run(3)
    text = screen.getvalue()
    assert "\rProgress:" in text
    assert "\nRun cancelled: Low loss 1e+09 achieved!.\n" in text, text[-300:]
    # the last live line was finished before the message
    before = text.split("Run cancelled")[0]
    assert before.endswith("\n") and before.rstrip("\n").rsplit("\r", 1)[-1].startswith("Progress:")


def test_saved_to_comes_after_the_final_progress_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    l = learner(train=10, valid=2)  # with the default Autosave
    screen = _Terminal()
    _bar(l, screen, refresh=1e9)
    monkeypatch.setattr(sys, "stdout", screen)
    l.run(2)
    lines = screen.getvalue().split("\n")
    saved = next(i for i, line in enumerate(lines) if line.startswith("Saved to "))
    assert lines[saved - 1].rsplit("\r", 1)[-1].startswith("Progress: 100%")


def test_time_left_is_shown_while_the_run_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = iter(range(10**6))
    clock = types.SimpleNamespace(perf_counter=lambda: float(next(ticks)))
    monkeypatch.setattr(k1lib.callbacks.progress_bar, "time", clock)
    l = learner(train=4, valid=0)
    bar = _bar(l, io.StringIO())
    lines = []
    l.cbs.withCheckpoint("endBatch", lambda cb: lines.append(bar.line()), name="Peek")
    l.run(2)
    # halfway (epoch 1 of 2, batch 0): time left equals time elapsed
    halfway = [line for line in lines if line.startswith("Progress:  50%")]
    assert halfway, lines
    elapsed = float(re.search(r"elapsed:\s+([\d.]+)s", halfway[0]).group(1))  # type: ignore[union-attr]
    assert f"left: {duration(elapsed):>6}" in halfway[0]
    assert "left" not in lines[-1] or not lines[-1].startswith("Progress: 100%")


def test_duration_format() -> None:
    assert [duration(s) for s in (0.123, 12.34, 185, 7440)] == ["0.12s", "12.3s", "3m05s", "2h04m"]


def test_the_progress_bar_reads_no_tensor_in_batches(host_reads_raise_in_batches: Any) -> None:
    l = classifier(lr=0.1)
    l.cbs = k1lib.Callbacks()
    host_reads_raise_in_batches(l.cbs)
    l.cbs.withLoss().withAccuracy()
    out = _Terminal()
    _bar(l, out, refresh=1e9)  # draws at every batch
    l.run(2)
    assert out.getvalue().count("\rProgress:") >= 8


def test_other_ranks_print_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    l = learner(train=4, valid=2)
    out = io.StringIO()
    _bar(l, out)
    monkeypatch.setattr(type(l), "rank", property(lambda self: 1))
    l.run(2)
    assert out.getvalue() == ""


class _FakeHandle:
    def __init__(self, shown: list[dict[str, str]]) -> None:
        self.shown = shown

    def update(self, data: dict[str, str], raw: bool) -> None:
        self.shown.append(data)


def test_in_jupyter_one_display_is_updated_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    shown: list[dict[str, str]] = []
    displays = []

    def display(data: dict[str, str], raw: bool, display_id: bool) -> _FakeHandle:
        displays.append(data)
        shown.append(data)
        return _FakeHandle(shown)

    monkeypatch.setitem(sys.modules, "IPython.display", types.SimpleNamespace(display=display))
    monkeypatch.setattr(_live, "_kernel_stdout", lambda out: True)
    out = io.StringIO()
    l = learner(train=6, valid=2)
    _bar(l, out, refresh=1e9)
    l.run(2)
    assert out.getvalue() == ""  # nothing written as text
    assert len(displays) == 1 and len(shown) >= 2  # one display, updated
    final = shown[-1]
    text = final["text/plain"].splitlines()
    assert text[0].startswith("epoch 0/2  train loss") and text[1].startswith("epoch 1/2")
    assert text[-1].startswith("Progress: 100%")
    assert "<progress" in final["text/html"] and "monospace" in final["text/html"]
    assert "epoch 1/2  train loss" in final["text/html"]


def test_html_form_escapes_its_text() -> None:
    live = Live(io.StringIO())
    live.line("epoch <b>0</b> & more")
    live.show("<script>", 0.5, force=True)
    assert "&lt;b&gt;0&lt;/b&gt; &amp; more" in live.html() and "&lt;script&gt;" in live.html()
    assert '<progress value="0.5000"' in live.html()
    live.close()


def test_a_log_gets_no_live_line_before_log_every_seconds() -> None:
    out = io.StringIO()
    with Live(out, logEvery=60) as live:
        for i in range(100):
            live.show(f"step {i}")
        live.line("epoch 0")
    assert out.getvalue() == "epoch 0\nstep 99\n"


def test_say_ends_a_live_terminal_line(capsys: pytest.CaptureFixture[str]) -> None:
    screen = _Terminal()
    with Live(screen, refresh=1e9) as live:
        live.show("Progress:  10%", force=True)
        say("a message")
        live.show("Progress:  20%", force=True)
    assert screen.getvalue() == "\rProgress:  10%\n\rProgress:  20%\n"
    assert capsys.readouterr().out == "a message\n"
    assert live not in _live._active


def test_loss_landscape_progress_in_a_log_is_its_final_line(capsys: pytest.CaptureFixture[str]) -> None:
    from .helpers import readme_learner

    l = readme_learner()
    l.LossLandscape.compute(resolution=5, ranges=(0.1, 1), pairs=1)
    out = capsys.readouterr().out
    assert out == "Progress: 100%          2/2 Finished [-1, 1] range\n"


def test_run_returns_none_so_a_notebook_cell_shows_nothing() -> None:
    l = learner()
    assert l.run(1) is None and len(l.Loss.epoch.train) == 1


def test_a_jupyter_display_is_resent_at_most_four_times_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    # thousands of short epochs: each update resends the whole display, so they are throttled
    sent: list[dict[str, str]] = []

    def display(data: dict[str, str], raw: bool, display_id: bool) -> _FakeHandle:
        sent.append(data)
        return _FakeHandle(sent)

    monkeypatch.setitem(sys.modules, "IPython.display", types.SimpleNamespace(display=display))
    monkeypatch.setattr(_live, "_kernel_stdout", lambda out: True)
    with Live(io.StringIO(), refresh=1e9) as live:
        for i in range(2000):
            live.line(f"epoch {i}")
            live.show(f"Progress {i}")
    assert len(sent) <= 5  # the first, the last, and what 4 a second allows in between
    assert sent[-1]["text/plain"].splitlines()[-2:] == ["epoch 1999", "Progress 1999"]
    assert len(sent[-1]["text/plain"].splitlines()) == 2001


def test_a_run_inside_a_run_keeps_the_outer_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    l = learner(train=6, valid=2)
    out = _Terminal()
    bar = _bar(l, out, refresh=1e9)
    l.cbs.withCheckpoint(
        "startEpoch",
        lambda cb: cb.learner.ParamFinder.run(samples=10) if cb.learner.epoch == 1 else None,
        name="Finder",
    )
    l.run(3)
    text = out.getvalue()
    rows = [line.rsplit("\r", 1)[-1] for line in text.split("\n")]
    epochs = [row for row in rows if row.startswith("epoch ") and "train loss" in row]
    assert [e.split("  ")[0] for e in epochs] == ["epoch 0/3", "epoch 1/3", "epoch 2/3"], text
    assert text.rstrip("\n").rsplit("\r", 1)[-1].startswith("Progress: 100%, epoch:  2/3")
    assert bar._runs == [] and not list(_live._active)


def test_a_loader_without_length_shows_progress_by_epochs() -> None:
    l = learner(train=6, valid=2)
    l.data = k1lib.data.Data(iter(l.data.train), iter(l.data.valid))  # plain iterators: no len
    out = io.StringIO()
    bar = _bar(l, out)
    lines: list[str] = []
    l.cbs.withCheckpoint("endBatch", lambda cb: lines.append(bar.line()), name="Peek")
    l.run(1)
    assert lines[0].startswith("Progress:   0%, epoch:  0/1, batch:   0, elapsed:")
    assert out.getvalue().splitlines()[-1].startswith("Progress: 100%, epoch:  0/1, batch:")


def test_suspending_the_bar_ends_its_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    l = learner(train=6, valid=2)
    out = _Terminal()
    bar = _bar(l, out, refresh=1e9)

    done: list[bool] = []

    def suspend_once(cb: Any) -> None:
        if (cb.learner.epoch, cb.learner.batch) == (0, 2) and not done:
            cb.learner.cbs.suspend(["ProgressBar"])
            done.append(True)

    l.cbs.withCheckpoint("endBatch", suspend_once)
    l.run(2)
    assert out.getvalue().endswith("\n") and not list(_live._active)
    l.cbs.restore()
    l.run(1)  # the suspended run is forgotten
    assert len(bar._runs) == 0
    assert out.getvalue().rsplit("\r", 1)[-1].startswith("Progress: 100%, epoch:  0/1")


def test_the_live_line_fits_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    screen = _Terminal()
    with Live(screen, refresh=1e9) as live:
        live.show("x" * 100, force=True)
    assert screen.getvalue() == "\r" + "x" * 39 + "\n"
