"""Plots in scripts and notebooks (issue 14, "Why" list and point 7): every plot object saves a
non-blank image, ``plt.savefig`` right after ``.plot()`` saves the plot (not a blank figure),
labels are inside the image, legends sit outside the curves, a plot before any run says so,
and in Jupyter nothing is left in pyplot for the inline backend to show a second time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
from matplotlib.figure import Figure

import k1lib.viz
from k1lib.viz import NO_DATA, SliceablePlot

from .helpers import learner

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def closed() -> Iterator[None]:
    plt.close("all")
    yield
    plt.close("all")


def trained() -> Any:
    l = learner(train=6, valid=2)
    l.cbs.remove("Autosave")
    l.run(2)
    return l


def rendered(fig: Figure) -> RendererAgg:
    """Draw ``fig`` (closed, as plot() returns it) on an Agg canvas, as savefig would."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def not_blank(path: Path) -> None:
    image = matplotlib.image.imread(path)
    rgb = image[..., :3]
    non_white = (rgb < 0.95).any(axis=-1).mean()
    assert rgb.std() > 0.02 and non_white > 0.01, (float(rgb.std()), float(non_white))


PLOTS: dict[str, Callable[[Any], SliceablePlot]] = {
    "Loss": lambda l: l.Loss.plot(),
    "Loss sliced": lambda l: l.Loss.plot()[3:].yscale("log"),
    "HookModule": lambda l: l.HookModule.plot(),
    "HookParam": lambda l: l.HookParam.plot(),
    "ParamFinder": lambda l: l.ParamFinder.plot(samples=10),
    "LossLandscape": lambda l: l.LossLandscape.plot(resolution=3, ranges=(0.5, 2), pairs=1),
}


@pytest.fixture(scope="module")
def fitted() -> Any:
    return trained()


@pytest.mark.filterwarnings("ignore:ParamFinder")
@pytest.mark.parametrize("name", PLOTS)
def test_save_writes_a_non_blank_image(fitted: Any, name: str, tmp_path: Path) -> None:
    l = fitted
    p = PLOTS[name](l)
    assert isinstance(p, SliceablePlot)
    p.save(tmp_path / "p.png")
    not_blank(tmp_path / "p.png")


@pytest.mark.filterwarnings("ignore:ParamFinder")
@pytest.mark.parametrize("name", PLOTS)
def test_plt_savefig_right_after_plot(fitted: Any, name: str, tmp_path: Path) -> None:
    l = fitted
    PLOTS[name](l)
    plt.savefig(tmp_path / "p.png")  # what a script writes after l.Loss.plot()
    not_blank(tmp_path / "p.png")
    assert len(plt.get_fignums()) == 1


def test_plt_savefig_saves_the_last_plot_and_one_figure_stays_open(fitted: Any) -> None:
    l = fitted
    for _ in range(25):  # more than pyplot's 20-figure warning
        p = l.Loss.plot()[2:]
    fig = plt.gcf()
    assert plt.get_fignums() == [fig.number]
    assert fig.axes[0].get_title() == p.plot().axes[0].get_title() == "Train loss, batch 2 to 12"


def test_in_jupyter_nothing_is_drawn_until_shown(fitted: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    l = fitted
    monkeypatch.setattr(k1lib.viz, "_in_jupyter", lambda: True)
    p = l.Loss.plot()[2:].yscale("log")
    assert plt.get_fignums() == []  # the inline backend would show a held figure a second time
    assert p._repr_png_().startswith(b"\x89PNG")
    assert plt.get_fignums() == []


def test_loss_x_label_is_inside_the_saved_image(fitted: Any) -> None:
    l = fitted
    fig = l.Loss.plot().plot()
    renderer = rendered(fig)
    for ax in fig.axes:
        box = ax.xaxis.label.get_window_extent(renderer)
        assert box.y0 >= 0 and box.x0 >= 0 and box.x1 <= fig.bbox.width


@pytest.mark.parametrize("name", ["HookParam", "HookModule"])
def test_legend_is_outside_the_panels(fitted: Any, name: str) -> None:
    l = fitted
    fig = PLOTS[name](l).plot()
    renderer = rendered(fig)
    assert fig.legends, "no legend"
    legend = fig.legends[0].get_window_extent(renderer)
    for ax in fig.axes:
        if ax.get_visible():
            assert not legend.overlaps(ax.get_window_extent(renderer)), ax.get_title()


def test_landscape_plot_is_sliceable_and_shows_its_image_alone(fitted: Any) -> None:
    l = fitted
    p = l.LossLandscape.plot(resolution=3, ranges=(0.5, 2), pairs=2)
    assert [ax.get_title() for ax in p.plot().axes] == ["[-0.5, 0.5]", "[-2, 2]"] * 2
    assert [ax.get_title() for ax in p[1:].plot().axes] == ["[-2, 2]"] * 2
    assert p._text is False  # the README shows the landscape's image without the repr text


@pytest.mark.parametrize("name", ["Loss", "HookModule", "HookParam"])
def test_plot_before_any_run_says_so(name: str, tmp_path: Path) -> None:
    l = learner()
    fig = PLOTS[name](l).plot()
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert NO_DATA in texts
    assert "run l.run(...) first" in NO_DATA


def test_an_empty_slice_says_so(fitted: Any) -> None:
    l = fitted
    fig = l.Loss.plot()[1000:].plot()
    assert NO_DATA in [t.get_text() for ax in fig.axes for t in ax.texts]


def test_a_plot_with_data_has_no_message(fitted: Any) -> None:
    l = fitted
    fig = l.Loss.plot().plot()
    assert all(not ax.texts for ax in fig.axes)
    assert all(np.asarray(ax.lines[0].get_ydata()).size for ax in fig.axes)
