"""``SliceablePlot``: a plot that can be zoomed by slicing and restyled with pyplot calls, each
giving a new plot.

A ``SliceablePlot`` holds a draw function, the slice(s) to draw and a chain of pyplot calls to
make afterwards. In Jupyter nothing is drawn until it is shown: it shows its image and then its
text, once (it leaves no figure in pyplot for the inline backend to show a second time). In a
script (no Jupyter kernel) each plot is also drawn at once as pyplot's current figure, so
``l.Loss.plot(); plt.savefig("loss.png")`` saves it, and ``plt.show()`` shows it; the figure the
previous plot left there is closed then, so building many plots holds one figure at most.
``p.plot()`` returns a figure, ``p.save(path)`` writes an image. It never calls ``plt.show()``.
Figures it opens get a tight layout (labels inside the image), and a drawing with no data at all
says so in the figure instead of showing empty axes. pyplot is imported on first draw.

    >>> import matplotlib.pyplot as plt
    >>> def draw(sl):
    ...     plt.plot(list(range(100))[sl])
    >>> p = SliceablePlot(draw)[10:][5:].yscale("log")
    >>> p.slices, [call.name for call in p.decorators]
    (slice(15, None, None), ['yscale'])
"""

from __future__ import annotations

import difflib
import importlib
import io
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["SliceablePlot"]

_HEADER = """Sliceable plot. Can...
- p[a:b]: to focus on a specific range of the plot
- p.yscale("log"): to perform operation as if you're using plt"""

# written on the axes of a drawing with no data at all: a plot made before any training, or
# sliced past its end
NO_DATA = "no data yet: run l.run(...) first\n(or the slice holds no data)"

# pyplot functions a chain must not call: they would show, close or replace the figure drawn
_NOT_IN_CHAIN = {
    "show": "SliceablePlot never shows a window; use p.plot() for the figure or p.save(path)",
    "close": "SliceablePlot closes the figures it opens itself",
    "figure": "it would start a new figure after the drawing; the draw function makes the figure",
    "subplots": "it would start a new figure after the drawing; the draw function makes the figure",
    "savefig": "use p.save(path), which draws and then saves",
}


@dataclass(frozen=True)
class PlotCall:
    """One pyplot call of a plot's chain: ``plt.<name>(*args, **kwargs)``, made after drawing."""

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def __call__(self) -> None:
        import matplotlib.pyplot as plt

        getattr(plt, self.name)(*self.args, **self.kwargs)

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"plt.{self.name}({', '.join(parts)})"


def _pyplot_function(name: str) -> Callable[..., Any]:
    """The pyplot function ``name``, or an ``AttributeError`` that says why not."""
    import matplotlib.pyplot as plt

    if name in _NOT_IN_CHAIN:
        raise AttributeError(f"p.{name}() is not available on a SliceablePlot: {_NOT_IN_CHAIN[name]}")
    f: object = None if name.startswith("_") else getattr(plt, name, None)
    if not callable(f) or isinstance(f, type):
        names = [n for n in dir(plt) if not n.startswith("_") and n not in _NOT_IN_CHAIN]
        names = [n for n in names if callable(getattr(plt, n)) and not isinstance(getattr(plt, n), type)]
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"; did you mean {' or '.join(f'p.{c}()' for c in close)}?" if close else ""
        raise AttributeError(
            f"'SliceablePlot' has no attribute {name!r}, and {name!r} is not a pyplot function{hint}"
        )
    return f


def _check_slice(sl: object, what: str) -> slice:
    if not isinstance(sl, slice):
        raise TypeError(f"{what} must be a slice like p[10:] or p[:0.5], got {type(sl).__name__} {sl!r}")
    for part in ("start", "stop", "step"):
        value = getattr(sl, part)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise TypeError(f"{what}.{part} must be a number or None, got {type(value).__name__} {value!r}")
    if sl.step is not None and (not isinstance(sl.step, int) or sl.step <= 0):
        raise ValueError(f"{what}.step must be a positive int, got {sl.step!r}")
    return sl


def _is_full(sl: slice) -> bool:
    return sl.start is None and sl.stop is None and sl.step in (None, 1)


def compose(outer: slice, inner: slice) -> slice:
    """The slice ``s`` with ``seq[s] == seq[outer][inner]`` for every sequence ``seq``.

    Exact for non-negative int bounds and positive steps. Either slice may be anything when the
    other is ``[:]``. Other pairs (negative or float bounds) depend on the data's length or on how
    the draw function reads floats, so they raise ``ValueError``: slice the original plot once.

        >>> compose(slice(10, None), slice(5, None))
        slice(15, None, None)
        >>> compose(slice(2, 20, 2), slice(1, 5))
        slice(4, 12, 2)
    """
    if _is_full(inner):
        return outer
    if _is_full(outer):
        return inner
    bounds = (outer.start, outer.stop, inner.start, inner.stop)
    if not all(b is None or (isinstance(b, int) and b >= 0) for b in bounds):
        raise ValueError(
            f"cannot slice {_show(outer)} again with {_show(inner)}: with negative or float bounds the "
            "result depends on the data's length; slice the unsliced plot once instead"
        )
    a1, s1 = outer.start or 0, outer.step or 1
    a2, s2 = inner.start or 0, inner.step or 1
    stops = [b for b in (outer.stop, None if inner.stop is None else a1 + inner.stop * s1) if b is not None]
    start = None if outer.start is None and inner.start is None else a1 + a2 * s1
    step = None if outer.step is None and inner.step is None else s1 * s2
    return slice(start, min(stops) if stops else None, step)


def _show(sl: slice) -> str:
    def part(v: object) -> str:
        return "" if v is None else repr(v)

    text = f"{part(sl.start)}:{part(sl.stop)}"
    return f"[{text}:{sl.step}]" if sl.step is not None else f"[{text}]"


def _in_jupyter() -> bool:
    """Whether this runs in a Jupyter kernel, whose inline backend shows every figure pyplot
    holds at the end of a cell (so a plot must leave none there, or it is shown twice)."""
    ipython = sys.modules.get("IPython")  # never imported here: a script has no kernel
    get_ipython = getattr(ipython, "get_ipython", None)
    shell = get_ipython() if callable(get_ipython) else None
    return getattr(shell, "kernel", None) is not None


class _Current:
    """The figure the latest plot left as pyplot's current one (scripts only)."""

    figure: Figure | None = None


def _has_data(ax: Axes) -> bool:
    if any(len(line.get_xdata()) for line in ax.lines):  # type: ignore[arg-type]
        return True
    return bool(ax.collections or ax.images or ax.patches or ax.texts or ax.tables)


def _finish(fig: Figure) -> None:
    """Say so on a figure with no data at all, and lay it out so labels are not clipped."""
    shown = [ax for ax in fig.axes if ax.get_visible()]
    if shown and not any(_has_data(ax) for ax in shown):
        for ax in shown:
            ax.text(0.5, 0.5, NO_DATA, transform=ax.transAxes, ha="center", va="center", color="gray")
    if fig.get_layout_engine() is None:
        with warnings.catch_warnings():  # axes tight_layout cannot fit (3D, say) stay as they are
            warnings.simplefilter("ignore")
            fig.tight_layout()


class SliceablePlot:
    """A plot drawn by ``plotF(slices)`` with pyplot, zoomed by slicing, restyled by pyplot calls.

    ``plotF`` draws into the current figure (or opens its own, e.g. with ``plt.subplots``); it is
    given ``slices``: one ``slice``, or a tuple of slices, one per panel, when built with a tuple.
    What a bound means is up to ``plotF`` (batch numbers, or fractions of a range); ``docs`` is
    shown under the repr and is the place to say so.

    - ``p[a:b]`` is a new plot of that range of the current one (``p[10:][5:]`` is ``p[15:]``);
      on a multi-panel plot ``p[a:b]`` zooms every panel and ``p[a:b, c:d]`` each its own.
    - ``p.<f>(...)`` for a pyplot function ``f`` (``p.yscale("log")``, ``p.xlabel("x")``) is a new
      plot that calls ``plt.f(...)`` after drawing, in the order the calls were chained. They act
      on the current axes, the last one drawn, as pyplot's functions do.
    - ``p.plot(ax=None)`` draws and returns the figure, ``p.save(path)`` writes an image file.

    Outside Jupyter every new plot (built, sliced or restyled) is also drawn at once as pyplot's
    current figure (see the module doc). ``text=False`` shows the image alone in Jupyter, without
    the repr under it.
    """

    __slots__ = ("_decorators", "_docs", "_plotF", "_slices", "_text")

    def __init__(
        self,
        plotF: Callable[[Any], object],  # noqa: N803 - the README's name
        slices: slice | tuple[slice, ...] = slice(None),
        docs: str | None = None,
        *,
        decorators: tuple[PlotCall, ...] = (),
        text: bool = True,
    ) -> None:
        if not callable(plotF):
            raise TypeError(f"plotF must be a function that draws, got {type(plotF).__name__}")
        if isinstance(slices, tuple):
            if not slices:
                raise ValueError("slices must hold one slice per panel, got an empty tuple")
            slices = tuple(_check_slice(sl, f"slices[{i}]") for i, sl in enumerate(slices))
        else:
            slices = _check_slice(slices, "slices")
        if docs is not None and not isinstance(docs, str):
            raise TypeError(f"docs must be a str, got {type(docs).__name__}")
        self._plotF = plotF
        self._slices: slice | tuple[slice, ...] = slices
        self._docs = docs
        self._decorators = tuple(decorators)
        self._text = text
        if not _in_jupyter():
            self._make_current()

    @property
    def plotF(self) -> Callable[[Any], object]:  # noqa: N802
        return self._plotF

    @property
    def slices(self) -> slice | tuple[slice, ...]:
        """What ``plotF`` is given: a slice, or a tuple of slices for a multi-panel plot."""
        return self._slices

    @property
    def docs(self) -> str | None:
        return self._docs

    @property
    def decorators(self) -> tuple[PlotCall, ...]:
        """The pyplot calls made after drawing, in order."""
        return self._decorators

    def _replace(
        self, slices: slice | tuple[slice, ...] | None = None, decorators: tuple[PlotCall, ...] | None = None
    ) -> SliceablePlot:
        return SliceablePlot(
            self._plotF,
            self._slices if slices is None else slices,
            self._docs,
            decorators=self._decorators if decorators is None else decorators,
            text=self._text,
        )

    # ---- building --------------------------------------------------------------------------------

    def __getitem__(self, index: slice | tuple[slice, ...]) -> SliceablePlot:
        current = self._slices
        if isinstance(current, slice):
            if isinstance(index, tuple):
                raise TypeError(f"a single-panel plot takes one slice, got {len(index)}: {index!r}")
            return self._replace(slices=compose(current, _check_slice(index, "p[...]")))
        if isinstance(index, slice):  # one slice zooms every panel
            index = (index,) * len(current)
        elif not isinstance(index, tuple) or len(index) != len(current):
            got = f"{len(index)} slices" if isinstance(index, tuple) else f"{type(index).__name__} {index!r}"
            raise TypeError(
                f"this plot has {len(current)} panels: give one slice or {len(current)}, got {got}"
            )
        return self._replace(
            slices=tuple(
                compose(outer, _check_slice(inner, f"p[...][{i}]"))
                for i, (outer, inner) in enumerate(zip(current, index, strict=True))
            )
        )

    def __getattr__(self, name: str) -> Callable[..., SliceablePlot]:
        # only reached for names that are not attributes: a pyplot function to chain, or an error
        _pyplot_function(name)

        def chain(*args: Any, **kwargs: Any) -> SliceablePlot:
            return self._replace(decorators=(*self._decorators, PlotCall(name, args, dict(kwargs))))

        chain.__name__ = name
        chain.__doc__ = f"A new plot that calls plt.{name}(...) after drawing."
        return chain

    def __dir__(self) -> list[str]:
        import matplotlib.pyplot as plt

        return sorted(set(super().__dir__()) | {n for n in dir(plt) if not n.startswith("_")})

    # ---- drawing ---------------------------------------------------------------------------------

    def plot(self, ax: Axes | None = None) -> Figure:
        """Draw and return the figure.

        Without ``ax`` a new figure is drawn; with ``ax`` (from pyplot, e.g. ``plt.subplots``)
        drawing starts on it. A draw function that opens its own figure gets that one returned.
        Figures opened here are closed before returning (they stay usable, but pyplot no longer
        holds them), so nothing accumulates; ``ax``'s own figure is left open.
        """
        return self._draw(ax, keep=False)

    def _draw(self, ax: Axes | None, keep: bool) -> Figure:
        """Draw; close the figures opened here, except the one returned when ``keep``."""
        import matplotlib.pyplot as plt

        before = set(plt.get_fignums())
        fig: Figure | None = None
        try:
            if ax is None:
                plt.figure()
            else:
                plt.sca(ax)
            self._plotF(self._slices)
            for call in self._decorators:
                call()
            fig = plt.gcf()
            if ax is None:  # a figure of ours: a caller's axes keep the caller's layout
                _finish(fig)
        finally:
            for number in set(plt.get_fignums()) - before:
                if not (keep and fig is not None and number == fig.number):
                    plt.close(number)
        return fig

    def _make_current(self) -> None:
        """Draw as pyplot's current figure, in place of the one the previous plot left there."""
        import matplotlib.pyplot as plt

        previous, _Current.figure = _Current.figure, None
        if previous is not None:
            plt.close(previous)  # nothing happens if the user closed it already
        _Current.figure = self._draw(None, keep=True)

    def save(self, path: str | os.PathLike[str], **savefig_kwargs: Any) -> None:
        """Draw and write the image to ``path``; the format follows its extension (PNG for .png).
        ``savefig_kwargs`` go to ``Figure.savefig`` (``bbox_inches="tight"`` unless given)."""
        savefig_kwargs.setdefault("bbox_inches", "tight")
        self.plot().savefig(path, **savefig_kwargs)

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.plot().savefig(buffer, format="png", bbox_inches="tight")
        return buffer.getvalue()

    def _ipython_display_(self) -> None:
        # The image, then the text below it, as the README shows. With only _repr_png_ Jupyter
        # would show the image alone, so both are published here as two outputs.
        display = importlib.import_module("IPython.display").display
        display({"image/png": self._repr_png_(), "text/plain": "<SliceablePlot image>"}, raw=True)
        if self._text:
            display({"text/plain": repr(self)}, raw=True)

    def __repr__(self) -> str:
        return f"{_HEADER}\n\n{self._docs}" if self._docs else _HEADER


def indices(sl: slice, n: int) -> tuple[int, int, int]:
    """``sl.indices(n)``, where float bounds are fractions of ``n`` (``p[0.5:]``: the second
    half), for plots sliced by batch."""

    def bound(value: object) -> object:
        return round(value * n) if isinstance(value, float) else value

    return slice(bound(sl.start), bound(sl.stop), sl.step).indices(n)
