"""``k1lib.viz.SliceablePlot``: slicing composes, pyplot calls chain in order, drawing and saving
close their figures and never show, the repr is the README's, and Jupyter gets image then text."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from matplotlib.axes import Axes

import k1lib.viz
from k1lib.viz import PlotCall, SliceablePlot, compose

matplotlib.use("Agg")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DATA = [float(i) for i in range(100)]
HEADER = """Sliceable plot. Can...
- p[a:b]: to focus on a specific range of the plot
- p.yscale("log"): to perform operation as if you're using plt"""
LOSS_DOCS = (
    "Reminder: the actual slice you put in is for the training plot. The valid loss's plot will update "
    "automatically to be in the same time frame"
)
PARAM_FINDER_DOCS = (
    "Reminder: slice range here is actually [0, 1], because it's kinda hard to slice the normal way"
)


def ydata(ax: Axes) -> list[float]:
    """The y values of the first line drawn on ``ax``."""
    return [float(v) for v in np.asarray(ax.lines[0].get_ydata())]


class Recorder:
    """A draw function that plots DATA[slices] and remembers what it was given."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def __call__(self, slices: Any) -> None:
        self.calls.append(slices)
        if isinstance(slices, tuple):
            _, axes = plt.subplots(1, len(slices))
            for ax, sl in zip(axes, slices, strict=True):
                ax.plot(DATA[sl])
        else:
            plt.plot(DATA[slices])


@pytest.fixture(autouse=True)
def lazy(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in Jupyter: plots are drawn only when shown. Outside Jupyter each plot is also drawn at
    once as pyplot's current figure (test_script_mode_* below, and tests/k1lib/test_plots.py)."""
    monkeypatch.setattr(k1lib.viz, "_in_jupyter", lambda: True)


@pytest.fixture(autouse=True)
def no_open_figures() -> Iterator[None]:
    """Every test starts and ends with no pyplot figure open: drawing closes what it opens."""
    plt.close("all")
    yield
    assert plt.get_fignums() == []


@pytest.fixture(autouse=True)
def no_show(monkeypatch: pytest.MonkeyPatch) -> None:
    def show(*args: object, **kwargs: object) -> None:
        raise AssertionError("plt.show() was called")

    monkeypatch.setattr(plt, "show", show)


# ---- repr ----------------------------------------------------------------------------------------


def test_repr_is_the_readmes() -> None:
    assert repr(SliceablePlot(Recorder())) == HEADER


@pytest.mark.parametrize("docs", [LOSS_DOCS, PARAM_FINDER_DOCS])
def test_repr_with_docs(docs: str) -> None:
    p = SliceablePlot(Recorder(), docs=docs)
    assert repr(p) == f"{HEADER}\n\n{docs}"
    assert repr(p[10:].yscale("log")) == repr(p)  # docs survive slicing and chaining


def test_repr_draws_nothing() -> None:
    draw = Recorder()
    repr(SliceablePlot(draw))
    assert draw.calls == []


# ---- slicing -------------------------------------------------------------------------------------


def test_slicing_composes() -> None:
    p = SliceablePlot(Recorder())
    assert p[10:][5:].slices == p[15:].slices == slice(15, None)
    assert p[10:50][5:10].slices == slice(15, 20)
    assert p[10:50][5:100].slices == slice(15, 50)
    assert p[::2][1:3].slices == slice(2, 6, 2)  # items 2 and 4
    assert p[:][3:].slices == slice(3, None)


def test_slicing_returns_a_new_plot() -> None:
    p = SliceablePlot(Recorder())
    q = p[10:]
    assert q is not p and p.slices == slice(None) and q.slices == slice(10, None)


bound = st.none() | st.integers(0, 40)


@given(
    outer=st.builds(slice, bound, bound, st.none() | st.integers(1, 4)),
    inner=st.builds(slice, bound, bound, st.none() | st.integers(1, 4)),
    n=st.integers(0, 60),
)
def test_compose_is_slicing_twice(outer: slice, inner: slice, n: int) -> None:
    seq = list(range(n))
    assert seq[compose(outer, inner)] == seq[outer][inner]


any_bound = st.none() | st.integers(-40, 40) | st.floats(0, 1)


@given(any_slice=st.builds(slice, any_bound, any_bound))
def test_slicing_the_unsliced_plot_keeps_the_slice(any_slice: slice) -> None:
    assert SliceablePlot(Recorder())[any_slice].slices == any_slice
    assert SliceablePlot(Recorder(), any_slice)[:].slices == any_slice


def test_fractions_as_in_param_finder() -> None:
    draw = Recorder()
    SliceablePlot(lambda sl: draw(slice(None, round(sl.stop * len(DATA)))))[:0.99].plot()
    assert draw.calls == [slice(None, 99)]


@pytest.mark.parametrize(
    ("first", "second"), [(slice(10, None), slice(-5, None)), (slice(-20, None), slice(5, None))]
)
def test_negative_bounds_after_a_slice_raise(first: slice, second: slice) -> None:
    p = SliceablePlot(Recorder())[first]
    with pytest.raises(ValueError, match="depends on the data's length; slice the unsliced plot once"):
        p[second]


def test_float_bounds_after_a_slice_raise() -> None:
    with pytest.raises(ValueError, match=r"cannot slice \[:0.5\] again with \[0.1:\]"):
        SliceablePlot(Recorder())[:0.5][0.1:]


@pytest.mark.parametrize(
    ("index", "error", "message"),
    [
        (5, TypeError, "p\\[...\\] must be a slice like p\\[10:\\] or p\\[:0.5\\], got int 5"),
        (slice("a", None), TypeError, "p\\[...\\].start must be a number or None, got str 'a'"),
        (slice(None, None, 0), ValueError, "p\\[...\\].step must be a positive int, got 0"),
        (slice(None, None, -1), ValueError, "step must be a positive int, got -1"),
        ((slice(1, None), slice(2, None)), TypeError, "a single-panel plot takes one slice, got 2"),
    ],
)
def test_bad_index(index: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        SliceablePlot(Recorder())[index]


def test_draw_gets_the_slice() -> None:
    draw = Recorder()
    fig = SliceablePlot(draw)[10:][5:20].plot()
    assert draw.calls == [slice(15, 30)]
    assert ydata(fig.axes[0]) == DATA[15:30]


# ---- multi-panel ---------------------------------------------------------------------------------


def test_multi_panel_slices() -> None:
    draw = Recorder()
    p = SliceablePlot(draw, (slice(None), slice(None)))
    assert p[10:].slices == (slice(10, None), slice(10, None))  # one slice zooms every panel
    assert p[10:][1:, 2:].slices == (slice(11, None), slice(12, None))
    fig = p[:5, 90:].plot()
    assert draw.calls == [(slice(None, 5), slice(90, None))]
    assert [ydata(ax) for ax in fig.axes] == [DATA[:5], DATA[90:]]


def test_multi_panel_needs_one_slice_per_panel() -> None:
    p = SliceablePlot(Recorder(), (slice(None),) * 3)
    with pytest.raises(TypeError, match="this plot has 3 panels: give one slice or 3, got 2 slices"):
        p[1:, 2:]
    with pytest.raises(TypeError, match="this plot has 3 panels: give one slice or 3, got int 4"):
        p[4]  # type: ignore[index]
    with pytest.raises(ValueError, match="one slice per panel, got an empty tuple"):
        SliceablePlot(Recorder(), ())


# ---- pyplot calls --------------------------------------------------------------------------------


def test_pyplot_calls_apply_after_drawing() -> None:
    fig = SliceablePlot(Recorder())[1:].yscale("log").xlabel("batch").grid(True).plot()
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.get_xlabel() == "batch"
    assert ax.xaxis.get_gridlines()[0].get_visible()


def test_pyplot_calls_apply_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    fig = SliceablePlot(Recorder()).xlabel("first").yscale("log").xlabel("second").yscale("linear").plot()
    assert fig.axes[0].get_xlabel() == "second" and fig.axes[0].get_yscale() == "linear"
    order: list[str] = []
    monkeypatch.setattr(plt, "title", lambda *a, **k: order.append(f"title{a}"))
    monkeypatch.setattr(plt, "ylim", lambda *a, **k: order.append(f"ylim{a}{k}"))
    draw = Recorder()

    def draw_and_log(sl: slice) -> None:
        order.append("draw")
        draw(sl)

    SliceablePlot(draw_and_log).title("t").ylim(0, top=5).plot()
    assert order == ["draw", "title('t',)", "ylim(0,){'top': 5}"]


def test_pyplot_calls_make_new_plots() -> None:
    p = SliceablePlot(Recorder())
    grid, log = p.grid(True), p.yscale("log")
    assert p.decorators == () and grid.decorators == (PlotCall("grid", (True,), {}),)
    assert log.decorators == (PlotCall("yscale", ("log",), {}),)
    assert repr(log[5:].decorators[0]) == "plt.yscale('log')" and log[5:].slices == slice(5, None)


def test_unknown_pyplot_name_raises_with_close_matches() -> None:
    p = SliceablePlot(Recorder())
    with pytest.raises(AttributeError, match=r"'yscal' is not a pyplot function; did you mean p\.yscale\(\)"):
        p.yscal("log")
    with pytest.raises(AttributeError, match=r"'nothing_like_this' is not a pyplot function$"):
        p.nothing_like_this  # noqa: B018
    assert not hasattr(p, "_repr_html_")
    assert not hasattr(p, "__array__")
    with pytest.raises(AttributeError, match="'rcParams' is not a pyplot function"):
        p.rcParams  # noqa: B018  (a pyplot attribute, but not a function)


@pytest.mark.parametrize("name", ["show", "close", "figure", "subplots", "savefig"])
def test_pyplot_calls_that_would_break_the_figure_are_refused(name: str) -> None:
    with pytest.raises(AttributeError, match=f"p.{name}\\(\\) is not available on a SliceablePlot"):
        getattr(SliceablePlot(Recorder()), name)


def test_dir_lists_pyplot_functions() -> None:
    names = dir(SliceablePlot(Recorder()))
    assert "yscale" in names and "plot" in names and "slices" in names


# ---- drawing, saving, figures --------------------------------------------------------------------


def test_save_writes_a_png(tmp_path: Path) -> None:
    path = tmp_path / "plot.png"
    SliceablePlot(Recorder())[50:].save(path, dpi=50)
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 50 and image.shape[1] > 50 and image.shape[2] in (3, 4)


def test_repr_png() -> None:
    data = SliceablePlot(Recorder())._repr_png_()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000


def test_figures_are_closed_even_when_drawing_fails() -> None:
    def draw(sl: slice) -> None:
        plt.subplots(1, 2)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        SliceablePlot(draw).plot()
    # the autouse fixture checks that nothing is left open


def test_many_plots_leave_nothing_open(tmp_path: Path) -> None:
    p = SliceablePlot(Recorder())
    for i in range(30):
        p[i:].plot()
        p[i:]._repr_png_()
    assert plt.get_fignums() == []


def test_draw_function_that_opens_its_own_figure() -> None:
    def draw(sl: slice) -> None:  # like Loss.plot: two panels on a figure of its own
        _, axes = plt.subplots(1, 2)
        axes[0].plot(DATA[sl])
        axes[1].plot(DATA[sl][::2])

    fig = SliceablePlot(draw)[90:].title("valid").plot()
    assert len(fig.axes) == 2
    assert ydata(fig.axes[0]) == DATA[90:]
    assert fig.axes[1].get_title() == "valid"  # pyplot calls act on the current (last) axes


def test_plot_into_given_axes() -> None:
    fig, (left, right) = plt.subplots(1, 2)
    try:
        returned = SliceablePlot(Recorder())[:3].ylabel("y").plot(ax=right)
        assert returned is fig
        assert len(left.lines) == 0 and ydata(right) == DATA[:3]
        assert right.get_ylabel() == "y"
        assert plt.get_fignums() == [fig.number]  # the caller's figure stays open
    finally:
        plt.close(fig)


def test_returned_figure_still_saves(tmp_path: Path) -> None:
    fig = SliceablePlot(Recorder()).plot()
    fig.savefig(tmp_path / "again.png")
    assert (tmp_path / "again.png").read_bytes().startswith(PNG_MAGIC)


def test_not_callable_plot_function() -> None:
    with pytest.raises(TypeError, match="plotF must be a function that draws, got int"):
        SliceablePlot(3)  # type: ignore[arg-type]


# ---- Jupyter -------------------------------------------------------------------------------------


def test_ipython_display_shows_image_then_text(monkeypatch: pytest.MonkeyPatch) -> None:
    shown: list[tuple[dict[str, Any], dict[str, Any]]] = []
    display_module = types.ModuleType("IPython.display")
    display_module.display = lambda *objs, **kwargs: shown.extend((obj, kwargs) for obj in objs)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", types.ModuleType("IPython"))
    monkeypatch.setitem(sys.modules, "IPython.display", display_module)

    p = SliceablePlot(Recorder(), docs=LOSS_DOCS)[10:]
    p._ipython_display_()
    (image, image_kwargs), (text, text_kwargs) = shown
    assert image_kwargs == text_kwargs == {"raw": True}
    assert image["image/png"].startswith(PNG_MAGIC)
    assert text == {"text/plain": f"{HEADER}\n\n{LOSS_DOCS}"}


# ---- scripts -------------------------------------------------------------------------------------


def test_script_mode_draws_at_once_as_the_current_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(k1lib.viz, "_in_jupyter", lambda: False)
    draw = Recorder()
    p = SliceablePlot(draw)[10:].yscale("log")
    assert draw.calls == [slice(None), slice(10, None), slice(10, None)]
    fig = plt.gcf()
    assert plt.get_fignums() == [fig.number]  # the earlier plots' figures are closed
    assert ydata(fig.axes[0]) == DATA[10:] and fig.axes[0].get_yscale() == "log"
    assert p.plot() is not fig and plt.get_fignums() == [fig.number]
    plt.close("all")
