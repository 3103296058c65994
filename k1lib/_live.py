"""Progress output that reads well wherever it goes: a live line redrawn in place, permanent
lines above it (one per epoch), and messages on their own lines.

- In Jupyter (standard output is the kernel's): one display, updated in place (a ``display_id``),
  with an HTML form and a text twin, so that an executed notebook exported to HTML shows the
  final state once instead of one line per redraw.
- On a terminal: the live line is redrawn with ``\\r``; a permanent line replaces it and the live
  line comes back below on the next redraw.
- Anywhere else (a file, a CI log): permanent lines as they come, and the live line as a full
  line at most every ``logEvery`` seconds and once at the end, never thousands of ``\\r``.

``say(text)`` prints a message ("Saved to ...", "Run cancelled: ...") on its own line: it ends a
live terminal line first, so the message is never glued to the progress.
"""

from __future__ import annotations

import html
import shutil
import sys
import time
import weakref
from typing import Any, TextIO

__all__ = ["Live", "duration", "say"]

# the live outputs open now (say() ends their lines); weak: one dropped unclosed goes with it
_active: weakref.WeakSet[Live] = weakref.WeakSet()
_STYLE = (
    "font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, 'DejaVu Sans Mono', monospace; "
    "white-space: pre; line-height: 1.35; font-size: 12px"
)


def duration(seconds: float) -> str:
    """``0.42s``, ``12.3s``, ``3m05s``, ``2h04m``: short and of a fixed shape."""
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02}m"


def _kernel_stdout(out: TextIO) -> bool:
    """Whether ``out`` is a Jupyter kernel's standard output (where displays can be updated)."""
    if out is not sys.stdout or not type(out).__module__.startswith("ipykernel"):
        return False
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and getattr(shell, "kernel", None) is not None


class Live:
    """One live line below permanent lines, on ``stream`` (standard output by default).

    ``show(text, fraction)`` redraws the live line (at most ``refresh`` times a second on a
    terminal or in Jupyter, every ``logEvery`` seconds in logs; ``force`` draws now);
    ``line(text)`` adds a permanent line; ``close(text)`` draws the final state and ends the
    output. Use it as a context manager or call ``close``."""

    def __init__(self, stream: TextIO | None = None, refresh: float = 10.0, logEvery: float = 10.0) -> None:  # noqa: N803
        self.out = stream if stream is not None else sys.stdout
        self.mode = "jupyter" if _kernel_stdout(self.out) else "terminal" if _isatty(self.out) else "log"
        # a notebook display is resent whole at each update: at most 4 a second there
        self.every = (
            logEvery if self.mode == "log" else max(1 / refresh, 0.25 if self.mode == "jupyter" else 0)
        )
        self.lines: list[str] = []  # the permanent lines (kept for the Jupyter display)
        self.text = ""  # the live line
        self.fraction: float | None = None
        # when the live line was last drawn: a log gets its first line after logEvery seconds
        self._last = time.perf_counter() if self.mode == "log" else -float("inf")
        self._drawn = 0  # terminal: width of the live line on screen now (0: none)
        self._handle: Any = None  # Jupyter: the display updated in place
        self._current: tuple[str, float | None] | None = None  # the live line as last drawn
        self._dirty = False  # Jupyter: permanent lines not displayed yet
        self._closed = False
        _active.add(self)

    def __enter__(self) -> Live:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- drawing -------------------------------------------------------------------------------
    def show(self, text: str, fraction: float | None = None, force: bool = False) -> None:
        """Make ``text`` the live line (``fraction``: progress from 0 to 1, drawn as a bar in
        Jupyter); drawn now if ``force`` or the last draw is old enough."""
        self.text, self.fraction = text, fraction
        now = time.perf_counter()
        if self._closed or (not force and now - self._last < self.every):
            return
        self._last, self._current = now, (text, fraction)
        if self.mode == "jupyter":
            self._display()
        elif self.mode == "terminal":
            # one row at most: a wrapped line would leave a row behind at each redraw
            text = text[: max(shutil.get_terminal_size().columns - 1, 20)]
            self._write("\r" + text.ljust(self._drawn))
            self._drawn = len(text)
        else:
            self._write(text.rstrip() + "\n")

    def due(self) -> bool:
        """Whether ``show`` would draw now (callers skip building a line that would not be)."""
        return not self._closed and time.perf_counter() - self._last >= self.every

    def line(self, text: str) -> None:
        """A permanent line, above the live one."""
        if self._closed:
            return
        self.lines.append(text)
        if self.mode == "jupyter":
            # the display is resent whole: at most every `every` seconds, so a run of
            # thousands of short epochs does not send thousands of ever longer displays
            self._dirty = True
            if self.due():
                self._last = time.perf_counter()
                self._display()
        elif self.mode == "terminal":
            self._write("\r" + text.ljust(self._drawn) + "\n")
            self._drawn, self._current = 0, None
            self._last = -float("inf")  # the live line comes back at the next show()
        else:
            self._write(text + "\n")

    def end_line(self) -> None:
        """Terminal: move below a live line that is on screen (before a message is printed)."""
        if self.mode == "terminal" and self._drawn:
            self._write("\n")
            self._drawn, self._current = 0, None
            self._last = -float("inf")

    def close(self, text: str | None = None, fraction: float | None = None) -> None:
        """Draw the final live line (``text`` and ``fraction``, else the current ones) and end
        the output."""
        if self._closed:
            return
        if text is not None:
            self.text, self.fraction = text, fraction
        if (self.text and self._current != (self.text, self.fraction)) or self._dirty:
            self.show(self.text, self.fraction, force=True)
        self.end_line()
        self._closed = True
        _active.discard(self)

    # ---- the forms -------------------------------------------------------------------------------
    def _write(self, text: str) -> None:
        if self.mode == "terminal":
            for other in list(_active):  # a live line of another (a run inside a run) ends first
                if other is not self:
                    other.end_line()
        self.out.write(text)
        self.out.flush()

    def _display(self) -> None:
        from IPython.display import display

        self._dirty = False
        data = {"text/plain": "\n".join([*self.lines, self.text]), "text/html": self.html()}
        if self._handle is None:
            self._handle = display(data, raw=True, display_id=True)  # type: ignore[no-untyped-call]
        else:
            self._handle.update(data, raw=True)

    def html(self) -> str:
        """The Jupyter form: the permanent lines and the live line (with a bar) in monospace."""
        rows = [html.escape(line) for line in self.lines]
        live = html.escape(self.text.rstrip())
        if self.fraction is not None:
            value = min(max(self.fraction, 0.0), 1.0)
            style = "width: 14em; vertical-align: middle"
            live = f'<progress value="{value:.4f}" max="1" style="{style}"></progress> ' + live
        body = "\n".join([*rows, live])
        return f'<div class="k1lib-progress" style="{_STYLE}">{body}</div>'


def _isatty(out: TextIO) -> bool:
    try:
        return bool(out.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def say(text: str) -> None:
    """Print ``text`` on its own line: after a live terminal line, not glued to it."""
    for live in _active:
        live.end_line()
    print(text, flush=True)
