"""Data for ``Learner``: a ``Data`` shell around a train and a valid loader, a tensor-backed
``DataLoader``, and ``FunctionDataset``, toy regression sets of (x, f(x)) pairs.

``DataLoader`` keeps the whole set as two tensors and cuts batches out of them: one permutation
per epoch, then views, so an epoch costs two gathers and no per-sample Python work. It is for
data that fits in memory; for anything else hand ``Data`` a ``torch.utils.data.DataLoader``
(``Data`` accepts any iterables of batches).

    >>> data = Data.fromDataset(FunctionDataset.exp, batchSize=64)
    >>> len(data.train), len(data.valid)
    (126, 31)
    >>> xb, yb = data.train.sample
    >>> xb.shape, yb.dtype
    (torch.Size([64]), torch.bfloat16)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Subset, TensorDataset

__all__ = ["Data", "DataLoader", "FunctionDataset"]

Batch = tuple[Tensor, Tensor]


def _check_batch_size(batchSize: object) -> int:  # noqa: N803 - the README's name
    if isinstance(batchSize, bool) or not isinstance(batchSize, int) or batchSize <= 0:
        raise ValueError(f"batchSize must be a positive int, got {batchSize!r}")
    return batchSize


# ---- FunctionDataset -----------------------------------------------------------------------------


class _Preset:
    """A class attribute that builds its ``FunctionDataset`` on first access and keeps it, so
    importing k1lib draws no random numbers and the presets cost nothing until used."""

    def __init__(self, build: Callable[[], FunctionDataset]) -> None:
        self._build = build
        self._value: FunctionDataset | None = None
        self._name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    def __get__(self, obj: object, owner: type | None = None) -> FunctionDataset:
        if self._value is None:
            self._value = self._build()
            self._value.name = self._name
        return self._value


def _inverse() -> FunctionDataset:
    # |x| uniform on [0.1, 5] with a random sign: 1/x stays within [-10, 10]
    gen = torch.Generator().manual_seed(0)
    n = 10_000
    magnitude = 0.1 + 4.9 * torch.rand(n, generator=gen, dtype=torch.float64)
    sign = torch.randint(0, 2, (n,), generator=gen, dtype=torch.float64) * 2 - 1
    return FunctionDataset._from_x(torch.reciprocal, magnitude * sign)


class FunctionDataset:
    """``n`` pairs ``(x, f(x))``, x drawn uniformly from ``[low, high]`` with a fixed ``seed``.

    ``f`` maps a float64 tensor of x to a tensor of y; both are then stored as ``dtype``
    (bfloat16 by default, as the README's samples are), so y is f of the exact x, rounded, not
    f of the rounded x. ``ds[i]`` is ``(x[i], y[i])`` (a slice or index tensor gives batches);
    ``ds.x`` and ``ds.y`` are the whole tensors.

    Ready-made sets of 10,000 samples, built on first access and the same every run:
    ``exp``, ``sin`` and ``linear`` (``2x + 1``) with x in [-5, 5]; ``log`` with x in (0, 5];
    ``inverse`` with x in [-5, -0.1] or [0.1, 5].

        >>> ds = FunctionDataset(lambda x: x**2, n=4, low=0, high=1)
        >>> len(ds), ds.x.dtype, ds[0][0].shape, ds[:2][1].shape
        (4, torch.bfloat16, torch.Size([]), torch.Size([2]))
    """

    exp = _Preset(lambda: FunctionDataset(torch.exp))
    log = _Preset(lambda: FunctionDataset(torch.log, low=0.0, high=5.0))
    inverse = _Preset(_inverse)
    linear = _Preset(lambda: FunctionDataset(lambda x: 2 * x + 1))
    sin = _Preset(lambda: FunctionDataset(torch.sin))

    def __init__(
        self,
        f: Callable[[Tensor], Tensor],
        n: int = 10_000,
        low: float = -5.0,
        high: float = 5.0,
        seed: int = 0,
        *,
        dtype: torch.dtype = torch.bfloat16,
    ) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ValueError(f"n must be a positive int, got {n!r}")
        if not low < high:
            raise ValueError(f"low must be below high, got low={low!r}, high={high!r}")
        gen = torch.Generator().manual_seed(seed)
        # high - u * width with u in [0, 1) lies in (low, high]: log's x never hits 0
        x = high - torch.rand(n, generator=gen, dtype=torch.float64) * (high - low)
        self._set(f, x, dtype)

    @classmethod
    def _from_x(
        cls, f: Callable[[Tensor], Tensor], x: Tensor, dtype: torch.dtype = torch.bfloat16
    ) -> FunctionDataset:
        """The pairs ``(x, f(x))`` for given x (a 1-d tensor), stored as ``dtype``."""
        ds = cls.__new__(cls)
        ds._set(f, x.double(), dtype)
        return ds

    def _set(self, f: Callable[[Tensor], Tensor], x: Tensor, dtype: torch.dtype) -> None:
        y = f(x)
        if not isinstance(y, Tensor) or y.shape != x.shape:
            raise ValueError(
                f"f must map a tensor of {len(x)} x values to a tensor of the same shape, got {_describe(y)}"
            )
        self.x = x.to(dtype)
        self.y = y.to(dtype)
        self.name = getattr(f, "__name__", type(f).__name__)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int | slice | Tensor) -> Batch:
        return self.x[index], self.y[index]

    def __repr__(self) -> str:
        lo, hi = self.x.min().item(), self.x.max().item()
        return (
            f"FunctionDataset {self.name}: {len(self)} samples, x in [{lo:.4g}, {hi:.4g}], "
            f"{str(self.x.dtype).removeprefix('torch.')}"
        )


# ---- DataLoader ----------------------------------------------------------------------------------


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"{type(value).__name__} {value!r:.60}"


def _as_tensors(data: object) -> Batch:
    """``(x, y)`` tensors for a pair of tensors or a dataset (see ``DataLoader``)."""
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        x, y = data
    else:
        backed = _tensor_backed(data)
        x, y = backed if backed is not None else _stack_items(data)
    if x.dim() == 0 or y.dim() == 0 or len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {_describe(x)} and {_describe(y)}")
    return x, y


def _tensor_backed(data: object) -> Batch | None:
    """The tensors behind ``data`` when they can be read without a per-sample loop."""
    if isinstance(data, Subset):
        inner = _tensor_backed(data.dataset)
        if inner is None:
            return None  # read through the Subset: only its own items
        index = torch.as_tensor(data.indices, dtype=torch.long)
        return inner[0][index], inner[1][index]
    x, y = getattr(data, "x", None), getattr(data, "y", None)
    if isinstance(x, Tensor) and isinstance(y, Tensor):
        return x, y
    if isinstance(data, TensorDataset) and len(data.tensors) == 2:
        return data.tensors[0], data.tensors[1]
    return None


def _stack_items(dataset: object) -> Batch:
    if not (isinstance(dataset, Sized) and hasattr(dataset, "__getitem__")):
        raise TypeError(
            f"data must be a pair of tensors (x, y) or a dataset with len() and [i], got {_describe(dataset)}"
        )
    n = len(dataset)
    if n == 0:
        raise ValueError("data is empty: a dataset of length 0")
    items: list[Any] = [dataset[i] for i in range(n)]
    for i, item in enumerate(items):
        if not (isinstance(item, tuple | list) and len(item) == 2):
            raise ValueError(f"each item of the dataset must be a pair (x, y), got {item!r:.60} at index {i}")
    try:
        return (
            torch.stack([torch.as_tensor(item[0]) for item in items]),
            torch.stack([torch.as_tensor(item[1]) for item in items]),
        )
    except (RuntimeError, TypeError, ValueError) as e:
        raise ValueError(f"the items of the dataset cannot be stacked into tensors: {e}") from e


class DataLoader:
    """Batches ``(xb, yb)`` of ``batchSize`` samples, the last one partial unless ``dropLast``.

    ``data`` is a pair of tensors ``(x, y)`` (same length; the first dimension indexes samples)
    or a dataset. Datasets backed by tensors are read without a loop: ``FunctionDataset`` (or
    anything with tensor attributes ``x`` and ``y``), ``TensorDataset`` of two tensors, and a
    ``Subset`` of those. Any other dataset with ``len()`` and ``[i]`` giving pairs ``(x, y)`` is
    read item by item once, here, and the items stacked.

    With ``shuffle`` every ``for`` draws a new order (from torch's global generator, or from
    ``seed`` when given). ``len(dl)`` is the number of batches; ``dl.sample`` is the first batch
    in stored order.

        >>> dl = DataLoader((torch.arange(10), torch.arange(10) * 2), batchSize=4, shuffle=False)
        >>> len(dl), [len(xb) for xb, _ in dl]
        (3, [4, 4, 2])
    """

    def __init__(
        self,
        data: object,
        batchSize: int = 32,  # noqa: N803
        shuffle: bool = True,
        dropLast: bool = False,  # noqa: N803
        seed: int | None = None,
    ) -> None:
        self.batchSize = _check_batch_size(batchSize)
        self.x, self.y = _as_tensors(data)
        self.shuffle = shuffle
        self.dropLast = dropLast
        self._generator = None if seed is None else torch.Generator().manual_seed(seed)
        if dropLast and len(self.x) < self.batchSize:
            raise ValueError(
                f"dropLast=True with batchSize={self.batchSize} leaves no batch from {len(self.x)} samples"
            )

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batchSize if self.dropLast else math.ceil(n / self.batchSize)

    def __iter__(self) -> Iterator[Batch]:
        x, y = self.x, self.y
        if self.shuffle:
            order = torch.randperm(len(x), generator=self._generator)
            x, y = x[order], y[order]
        if self.dropLast:
            end = len(self) * self.batchSize
            x, y = x[:end], y[:end]
        return zip(torch.split(x, self.batchSize), torch.split(y, self.batchSize), strict=True)

    @property
    def sample(self) -> Batch:
        """The first batch, in stored order (the same every time)."""
        return self.x[: self.batchSize], self.y[: self.batchSize]

    def __repr__(self) -> str:
        return f"""DataLoader object. {len(self)} batches total, use...
- for data in dl: print(data)
- it = iter(dl); data = next(it)
- len(dl): to get dataloader's length
- dl.sample: to get a sample of the data"""


# ---- Data ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Split:
    """What ``fromDataset`` made: every sample in split order (``x``, ``y``: training first,
    the loaders view them), where each came from (``order[i]`` is the dataset's index of
    sample ``i``; None: the dataset's own order), how many train, and the two loaders."""

    x: Tensor
    y: Tensor
    order: Tensor | None
    train: int
    loaders: tuple[DataLoader, DataLoader]


def train_size(n: int, trainSplit: float, batchSize: int) -> int:  # noqa: N803
    """How many of ``n`` samples ``fromDataset`` trains on: the fewest whole batches holding
    more than ``n * trainSplit`` (the 2021 rule: 126 batches of 64 from 10,000 samples at 0.8);
    when that takes every sample, one whole batch fewer; when not even one whole batch leaves a
    sample for validation (``n <= batchSize``), ``round(n * trainSplit)``. Either side gets at
    least one sample."""
    if n < 2:
        raise ValueError(f"{n} sample cannot be split: train and valid need at least 1 each")
    size = (math.floor(n * trainSplit / batchSize) + 1) * batchSize
    if size < n:
        return size
    size = (n - 1) // batchSize * batchSize
    if size > 0:
        return size
    return min(max(round(n * trainSplit), 1), n - 1)


def check_split(state: object) -> dict[str, Any]:
    """``state`` (``Data.state_dict()["split"]``, from a file) checked: ``samples`` an int
    n >= 2, ``train`` an int in [1, n - 1], ``order`` None or an integer tensor holding each
    of ``0 .. n-1`` once. ``ValueError`` naming what is wrong."""
    if not (isinstance(state, dict) and {"samples", "train", "order"} <= set(state)):
        raise ValueError("the split should be a dict of 'samples', 'train' and 'order'")
    n, train, order = state["samples"], state["train"], state["order"]
    if not (_is_int(n) and n >= 2 and _is_int(train) and 0 < train < n):
        raise ValueError(f"the split's counts are samples={n!r}, train={train!r}: need 0 < train < samples")
    if order is not None:
        ok = (
            isinstance(order, Tensor)
            and order.layout == torch.strided
            and not order.is_meta
            and order.dtype in (torch.int32, torch.int64)
            and order.shape == (n,)
        )
        if ok:
            index = order.long()
            ok = bool(index.min() >= 0 and index.max() < n) and bool(
                (torch.bincount(index, minlength=n) == 1).all()
            )
        if not ok:
            raise ValueError(f"the split's order is not a permutation of the {n} sample indices")
    return {"samples": n, "train": train, "order": order}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class Data:
    """A shell holding the loaders a ``Learner`` trains on (``train``) and checks on (``valid``).

    Either may be any iterable of ``(xb, yb)`` batches, e.g. a ``torch.utils.data.DataLoader``.
    ``state_dict`` / ``load_state_dict`` carry the split of a ``fromDataset`` one (checkpoints).
    """

    def __init__(self, train: Iterable[Any], valid: Iterable[Any]) -> None:
        for name, loader in (("train", train), ("valid", valid)):
            if not isinstance(loader, Iterable):
                raise TypeError(f"{name} must be an iterable of batches, got {_describe(loader)}")
        # typed Any: callers use what their loaders offer (len, .sample) without casts
        self.train: Any = train
        self.valid: Any = valid
        self._split: _Split | None = None

    @staticmethod
    def fromDataset(  # noqa: N802
        dataset: Any,
        batchSize: int = 32,  # noqa: N803
        trainSplit: float = 0.8,  # noqa: N803
        shuffle: bool = True,
        seed: int | None = None,
    ) -> Data:
        """Split ``dataset`` on a batch boundary: training gets the fewest whole batches that
        hold *more* than ``len * trainSplit`` samples, validation the rest. Every training batch
        is full; this is the 2021 k1lib's split, which the README's numbers come from (10,000
        samples, 0.8, batches of 64: 126 training batches, 31 validation, 157 an epoch). Where
        that would leave validation nothing (64 samples, 0.8, batches of 16), training gets one
        batch fewer; neither side is ever empty (``train_size``).

        With ``shuffle`` the split is random and the train loader draws a new order each epoch:
        from torch's global generator, or with ``seed`` from a generator of their own (the same
        split and orders every time). Without, the first samples train, in order. The valid
        loader keeps its order. ``dataset`` is anything ``DataLoader`` takes.

        Checkpoints keep the split (``state_dict``): ``l.load`` puts it back, so a resumed run
        trains and validates on the same samples as the saved one.
        """
        _check_batch_size(batchSize)
        if isinstance(trainSplit, bool) or not isinstance(trainSplit, int | float) or not 0 < trainSplit < 1:
            raise ValueError(f"trainSplit must be a fraction strictly between 0 and 1, got {trainSplit!r}")
        if seed is not None and not _is_int(seed):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        x, y = _as_tensors(dataset)
        split = train_size(len(x), trainSplit, batchSize)
        order, loader_seed = None, None
        if shuffle:
            generator = None if seed is None else torch.Generator().manual_seed(seed)
            order = torch.randperm(len(x), generator=generator)
            x, y = x[order], y[order]
            if generator is not None:  # the train loader's own, drawn from the split's
                loader_seed = int(torch.randint(2**62, (), generator=generator))
        train = DataLoader((x[:split], y[:split]), batchSize, shuffle=shuffle, seed=loader_seed)
        valid = DataLoader((x[split:], y[split:]), batchSize, shuffle=False)
        data = Data(train, valid)
        data._split = _Split(x, y, order, split, (train, valid))
        return data

    def _made_split(self) -> _Split | None:
        """The split ``fromDataset`` made, while ``train`` and ``valid`` are still its loaders."""
        split = self._split
        if split is None or self.train is not split.loaders[0] or self.valid is not split.loaders[1]:
            return None
        return split

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of the data: for ``fromDataset``'s, the split
        (``{"split": {"samples": n, "train": k, "order": indices or None}}``: which samples of
        the dataset train, in what stored order); ``{}`` for data made otherwise. The data
        itself is never saved."""
        split = self._made_split()
        if split is None:
            return {}
        order = split.order
        if order is not None and len(order) < 2**31:
            order = order.int()  # half the bytes in the file
        return {"split": {"samples": len(split.x), "train": split.train, "order": order}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Put back the split ``state_dict`` gave, on the same dataset (its samples are taken
        from this Data's, which must have as many): the loaders keep their batch size and
        generators and get the saved samples. ``ValueError`` if it does not fit; then nothing
        changed."""
        if "split" not in state:
            return
        saved = check_split(state["split"])
        split = self._made_split()
        if split is None:
            raise ValueError(
                "this Data has no split to set: it was not made by Data.fromDataset, or its loaders "
                "were replaced"
            )
        n = len(split.x)
        if saved["samples"] != n:
            raise ValueError(f"the split is of {saved['samples']} samples; this Data's dataset has {n}")
        everything = torch.arange(n)
        inverse = torch.empty_like(everything)
        inverse[everything if split.order is None else split.order] = everything
        order = None if saved["order"] is None else saved["order"].long()
        index = inverse if order is None else inverse[order]
        x, y = split.x[index], split.y[index]
        k = saved["train"]
        train, valid = split.loaders
        train.x, train.y = x[:k], y[:k]
        valid.x, valid.y = x[k:], y[k:]
        self._split = _Split(x, y, order, k, split.loaders)

    def __repr__(self) -> str:
        return "`Data` object, just a shell containing 2 `DataLoader`s: `.train` and `.valid`"
