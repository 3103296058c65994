"""``ParamCapture``: mean, std, min and max of parameters, one row a batch into a
``ParamRecord``, on the parameters' device (no host sync; parameters of one shape are reduced
together by ``_stats.Reducer``). No hooks and no Learner: whoever drives it calls ``end_batch``
after the optimizer step (HookParam at ``endBatch``, ``k1lib.watch`` at ``w.step()``) and
``combine`` where every rank is (HookParam at ``endEpoch`` and ``endRun``, the watch at the end
of its block): nothing here, statistics of sharded parameters (``_sharded_params``) are put
together there."""

from __future__ import annotations

from torch import Tensor, nn

from ._param_record import ParamRecord
from ._stats import STATS, Reducer

__all__ = ["ParamCapture"]


class ParamCapture:
    """Statistics of ``params`` (``(name, parameter)`` pairs) written into ``record``."""

    def __init__(self, params: list[tuple[str, nn.Parameter]], record: ParamRecord) -> None:
        self._params = [p for _, p in params]
        self._record = record
        self._views: list[Tensor] = []
        self._reducer = Reducer(STATS)
        self._key: tuple[object, ...] = ()  # Reducer.key of the views (their shapes and dtypes)

    def start(self, expected: int | None = None) -> None:
        """Read the parameters from now on, with room for ``expected`` rows (when known).
        Called again at each epoch: it takes plain tensors sharing each parameter's storage
        (cheaper to read than Parameters), in case a parameter's ``.data`` was replaced."""
        self._views = [p.detach() for p in self._params]
        self._key = self._reducer.key(self._views)
        if self._views and expected:
            self._record.reserve(expected, self._views[0].device)

    def end_batch(self, key: int | None = None) -> None:
        """One row: the statistics of every parameter now. ``key`` (the batch's number) matches
        the rows of different ranks in a ``ShardedParamCapture``; unused here."""
        views = self._views
        if views:
            self._reducer(views, into=self._record.next_row(views[0].device), key=self._key)

    def exchanges(self) -> bool:
        """Whether ``combine`` is a collective (``ShardedParamCapture`` of sharded parameters)."""
        return False

    def combine(self) -> None:
        """Where the ranks put their rows together (``ShardedParamCapture``): nothing to do
        for whole parameters."""

    def stop(self) -> None:
        """Let go of the parameters."""
        self._params, self._views = [], []
