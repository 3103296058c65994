"""``k1lib.data``: the FunctionDataset presets, DataLoader batching and shuffling, Data and its
``fromDataset`` split, and the errors for bad arguments."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader as TorchDataLoader
from torch.utils.data import Subset, TensorDataset

from k1lib.data import Data, DataLoader, FunctionDataset

PRESETS = ["exp", "log", "inverse", "linear", "sin"]
FUNCTIONS = {"exp": torch.exp, "log": torch.log, "inverse": torch.reciprocal, "linear": lambda x: 2 * x + 1}
FUNCTIONS["sin"] = torch.sin

README_REPR = """DataLoader object. {} batches total, use...
- for data in dl: print(data)
- it = iter(dl); data = next(it)
- len(dl): to get dataloader's length
- dl.sample: to get a sample of the data"""


def pairs(dl: DataLoader) -> list[tuple[float, float]]:
    """Every (x, y) of one epoch, as Python floats."""
    return [(float(x), float(y)) for xb, yb in dl for x, y in zip(xb, yb, strict=True)]


# ---- FunctionDataset -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", PRESETS)
def test_presets_are_10k_bfloat16_pairs(name: str) -> None:
    ds = getattr(FunctionDataset, name)
    assert len(ds) == 10_000
    assert ds.x.shape == ds.y.shape == (10_000,)
    assert ds.x.dtype == ds.y.dtype == torch.bfloat16
    x, y = ds[3]
    assert x.shape == () and x == ds.x[3] and y == ds.y[3]
    assert getattr(FunctionDataset, name) is ds  # built once


@pytest.mark.parametrize("name", PRESETS)
def test_presets_hold_f_of_x(name: str) -> None:
    ds = getattr(FunctionDataset, name)
    x, y = ds.x.double(), ds.y.double()
    expected = FUNCTIONS[name](x)
    # y is f of the exact x, rounded; x itself is rounded to bfloat16 (relative error <= 2^-9),
    # which moves f(x) by at most |f'(x)| * |x| * 2^-9; y's own rounding adds 2^-9 of |y|
    slack = (torch.func.vmap(torch.func.grad(FUNCTIONS[name]))(x).abs() * x.abs() + y.abs()) * 2**-8
    assert bool(((y - expected).abs() <= slack + 1e-6).all())


def test_preset_ranges() -> None:
    for name in ["exp", "linear", "sin"]:
        x = getattr(FunctionDataset, name).x.float()
        assert -5 <= x.min() < -4.9 and 4.9 < x.max() <= 5, name
    log_x = FunctionDataset.log.x.float()
    assert log_x.min() > 0 and log_x.max() <= 5
    assert bool(torch.isfinite(FunctionDataset.log.y.float()).all())
    inverse_x = FunctionDataset.inverse.x.float()
    assert inverse_x.abs().min() >= 0.099 and inverse_x.abs().max() <= 5
    assert (inverse_x < 0).any() and (inverse_x > 0).any()
    assert FunctionDataset.inverse.y.float().abs().max() <= 10.1


def test_x_is_roughly_uniform() -> None:
    counts = torch.histc(FunctionDataset.exp.x.float(), bins=10, min=-5, max=5)
    assert bool(((counts > 900) & (counts < 1100)).all()), counts


def test_custom_dataset_is_reproducible_and_seeded() -> None:
    a = FunctionDataset(torch.sin, n=100, low=0, high=1, seed=3)
    b = FunctionDataset(torch.sin, n=100, low=0, high=1, seed=3)
    c = FunctionDataset(torch.sin, n=100, low=0, high=1, seed=4)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)
    assert len(a) == 100 and a.x.float().min() >= 0 and a.x.float().max() <= 1
    assert torch.equal(FunctionDataset(torch.exp).x, FunctionDataset.exp.x)


def test_custom_dtype_and_batch_indexing() -> None:
    ds = FunctionDataset(lambda x: x * 3, n=10, dtype=torch.float32)
    assert ds.x.dtype == torch.float32
    xb, yb = ds[2:5]
    assert torch.allclose(yb, xb * 3)
    xb, yb = ds[torch.tensor([0, 9])]
    assert xb.shape == (2,) and torch.equal(xb, ds.x[[0, 9]])


def test_repr_names_the_function() -> None:
    assert repr(FunctionDataset.exp) == "FunctionDataset exp: 10000 samples, x in [-5, 5], bfloat16"
    assert repr(FunctionDataset(torch.cos, n=3, low=0, high=1)).startswith("FunctionDataset cos: 3 samples")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0}, "n must be a positive int, got 0"),
        ({"n": 2.5}, "n must be a positive int, got 2.5"),
        ({"low": 1, "high": 1}, "low must be below high, got low=1, high=1"),
    ],
)
def test_dataset_errors(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)") + "$"):
        FunctionDataset(torch.exp, **kwargs)  # type: ignore[arg-type]


def test_f_must_keep_the_shape() -> None:
    with pytest.raises(ValueError, match=r"same shape, got a torch.float64 tensor of shape \(\)"):
        FunctionDataset(lambda x: x.sum(), n=5)


def test_importing_builds_no_preset() -> None:
    code = (
        "import k1lib.data as d\n"
        "print(all(d.FunctionDataset.__dict__[n]._value is None for n in "
        "['exp', 'log', 'inverse', 'linear', 'sin']))\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "True"


# ---- DataLoader ----------------------------------------------------------------------------------


@given(
    n=st.integers(1, 300),
    batch_size=st.integers(1, 70),
    drop_last=st.booleans(),
    shuffle=st.booleans(),
)
def test_batches_cover_the_data(n: int, batch_size: int, drop_last: bool, shuffle: bool) -> None:
    x = torch.arange(n)
    if drop_last and n < batch_size:
        with pytest.raises(ValueError, match=f"leaves no batch from {n} samples"):
            DataLoader((x, -x), batch_size, shuffle=shuffle, dropLast=drop_last)
        return
    dl = DataLoader((x, -x), batch_size, shuffle=shuffle, dropLast=drop_last)
    batches = list(dl)
    assert len(dl) == len(batches) == (n // batch_size if drop_last else math.ceil(n / batch_size))
    assert all(len(xb) == batch_size for xb, _ in batches[:-1])
    for xb, yb in batches:
        assert torch.equal(yb, -xb)  # pairs stay together
    seen = torch.cat([xb for xb, _ in batches])
    if drop_last:
        assert len(seen) == len(dl) * batch_size and len(set(seen.tolist())) == len(seen)
    else:
        assert sorted(seen.tolist()) == list(range(n))  # each sample exactly once
    if not shuffle:
        assert seen.tolist() == list(range(len(seen)))


def test_shuffle_draws_a_new_order_each_epoch() -> None:
    dl = DataLoader((torch.arange(1000), torch.arange(1000)), batchSize=100)
    first, second = torch.cat([xb for xb, _ in dl]), torch.cat([xb for xb, _ in dl])
    assert not torch.equal(first, second)
    assert not torch.equal(first, torch.arange(1000))
    assert torch.equal(first.sort().values, second.sort().values)


def test_seed_makes_the_order_reproducible() -> None:
    def orders(seed: int) -> list[list[int]]:
        dl = DataLoader((torch.arange(50), torch.arange(50)), batchSize=50, seed=seed)
        return [next(iter(dl))[0].tolist() for _ in range(2)]

    assert orders(1) == orders(1)
    assert orders(1) != orders(2)
    assert orders(1)[0] != orders(1)[1]


def test_torch_global_seed_controls_the_default_order() -> None:
    dl = DataLoader((torch.arange(50), torch.arange(50)), batchSize=50)
    torch.manual_seed(7)
    a = next(iter(dl))[0]
    torch.manual_seed(7)
    assert torch.equal(a, next(iter(dl))[0])


def test_sample_is_the_first_stored_batch() -> None:
    x = torch.arange(10.0)
    dl = DataLoader((x, x + 1), batchSize=4)
    xb, yb = dl.sample
    assert xb.tolist() == [0, 1, 2, 3] and yb.tolist() == [1, 2, 3, 4]
    assert torch.equal(dl.sample[0], xb)


def test_repr_is_the_readmes() -> None:
    dl = DataLoader((torch.zeros(130), torch.zeros(130)), batchSize=64)
    assert repr(dl) == README_REPR.format(3)


def test_iterators_are_independent() -> None:
    dl = DataLoader((torch.arange(6), torch.arange(6)), batchSize=2, shuffle=False)
    it1, it2 = iter(dl), iter(dl)
    assert next(it1)[0].tolist() == [0, 1]
    assert next(it1)[0].tolist() == [2, 3]
    assert next(it2)[0].tolist() == [0, 1]


def test_multidimensional_samples() -> None:
    x, y = torch.randn(10, 3, 4), torch.randint(0, 5, (10,))
    xb, yb = next(iter(DataLoader((x, y), batchSize=4, shuffle=False)))
    assert xb.shape == (4, 3, 4) and torch.equal(xb, x[:4]) and torch.equal(yb, y[:4])


def test_from_datasets() -> None:
    x = torch.arange(20.0)
    from_tensor_ds = DataLoader(TensorDataset(x, x * 2), batchSize=8, shuffle=False)
    assert torch.equal(from_tensor_ds.sample[1], x[:8] * 2)
    subset = Subset(TensorDataset(x, x * 2), [5, 1, 7])
    assert DataLoader(subset, batchSize=8, shuffle=False).sample[0].tolist() == [5, 1, 7]
    function_ds = DataLoader(FunctionDataset.sin, batchSize=64, shuffle=False)
    assert torch.equal(function_ds.sample[0], FunctionDataset.sin.x[:64]) and len(function_ds) == 157
    listed = DataLoader([(1.0, 2.0), (3.0, 4.0), (5.0, 6.0)], batchSize=2, shuffle=False)
    assert [xb.tolist() for xb, _ in listed] == [[1.0, 3.0], [5.0]]


class CountingDataset:
    def __init__(self) -> None:
        self.reads = 0

    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        self.reads += 1
        return torch.tensor([float(i)]), i


def test_a_generic_dataset_is_read_once_not_per_epoch() -> None:
    ds = CountingDataset()
    dl = DataLoader(ds, batchSize=3)
    assert ds.reads == 10
    for _ in range(3):
        assert sorted(torch.cat([yb for _, yb in dl]).tolist()) == list(range(10))
    assert ds.reads == 10
    assert dl.x.shape == (10, 1)


def test_a_subset_of_a_generic_dataset_reads_only_its_items() -> None:
    ds = CountingDataset()
    dl = DataLoader(Subset(ds, [8, 2]), batchSize=3, shuffle=False)
    assert ds.reads == 2 and dl.sample[1].tolist() == [8, 2]


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "64", None])
def test_batch_size_must_be_a_positive_int(bad: object) -> None:
    with pytest.raises(ValueError, match=f"^batchSize must be a positive int, got {bad!r}$"):
        DataLoader((torch.zeros(4), torch.zeros(4)), bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=f"^batchSize must be a positive int, got {bad!r}$"):
        Data.fromDataset(FunctionDataset.exp, batchSize=bad)  # type: ignore[arg-type]


def test_bad_data() -> None:
    with pytest.raises(
        ValueError, match=r"same length, got a torch.float32 tensor of shape \(4,\) and .*\(5,\)"
    ):
        DataLoader((torch.zeros(4), torch.zeros(5)))
    with pytest.raises(TypeError, match="a dataset with len\\(\\) and \\[i\\], got int 5"):
        DataLoader(5)
    with pytest.raises(TypeError, match="got list_iterator"):
        DataLoader(iter([(1, 2)]))
    with pytest.raises(ValueError, match="data is empty"):
        DataLoader([])
    with pytest.raises(ValueError, match="must be a pair \\(x, y\\), got 7 at index 1"):
        DataLoader([(1, 2), 7])


# ---- Data ----------------------------------------------------------------------------------------


def test_readme_numbers() -> None:
    """The README's example: FunctionDataset.exp, batchSize 64, trainSplit 0.8.

    Training gets the fewest whole batches holding more than 8,000 samples: 8,064 = 126
    batches of 64 (the README's "126 batches total"); validation the other 1,936: 30 batches of
    64 and one of 16.
    126 + 31 = 157 batches an epoch, the total in the README's progress lines ("152/157").
    """
    data = Data.fromDataset(FunctionDataset.exp, batchSize=64)
    assert len(data.train) == 126 and len(data.valid) == 31
    assert len(data.train) + len(data.valid) == 157
    assert all(len(xb) == 64 for xb, _ in data.train)
    assert [len(xb) for xb, _ in data.valid][-1] == 16
    assert repr(data.train) == README_REPR.format(126)
    xb, yb = data.train.sample
    assert xb.shape == yb.shape == (64,) and xb.dtype == yb.dtype == torch.bfloat16


def test_data_repr_is_the_readmes() -> None:
    data = Data([], [])
    assert repr(data) == "`Data` object, just a shell containing 2 `DataLoader`s: `.train` and `.valid`"


def test_split_is_disjoint_and_complete() -> None:
    ds = FunctionDataset(torch.exp, n=1000, dtype=torch.float64)  # float64: no duplicate x
    data = Data.fromDataset(ds, batchSize=32, trainSplit=0.7)
    train, valid = pairs(data.train), pairs(data.valid)
    assert len(train) == 704 and len(valid) == 296  # more than 700, in whole batches of 32
    everything = sorted(zip(ds.x.tolist(), ds.y.tolist(), strict=True))
    assert sorted(train + valid) == everything


def test_split_is_random_with_shuffle_and_in_order_without() -> None:
    ds = FunctionDataset(torch.exp, n=100, dtype=torch.float64)
    ordered = Data.fromDataset(ds, batchSize=8, shuffle=False)  # train: 88 samples, 11 batches
    assert [x for x, _ in pairs(ordered.train)] == ds.x[:88].tolist()
    assert [x for x, _ in pairs(ordered.valid)] == ds.x[88:].tolist()
    shuffled = Data.fromDataset(ds, batchSize=8)
    assert sorted(x for x, _ in pairs(shuffled.valid)) != sorted(ds.x[88:].tolist())
    # valid keeps one order across epochs; train draws a new one
    assert pairs(shuffled.valid) == pairs(shuffled.valid)
    assert pairs(shuffled.train) != pairs(shuffled.train)


def test_train_split_rounds() -> None:
    data = Data.fromDataset(FunctionDataset(torch.exp, n=100), batchSize=10, trainSplit=0.57)
    assert len(data.train.x) == 60 and len(data.valid.x) == 40  # more than 57, in whole batches of 10


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.2, True, "0.8"])
def test_train_split_must_be_a_fraction(bad: object) -> None:
    message = f"trainSplit must be a fraction strictly between 0 and 1, got {bad!r}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        Data.fromDataset(FunctionDataset.exp, trainSplit=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("n", "batch_size", "train_split", "sizes"),
    [
        (64, 16, 0.8, (48, 16)),  # 4 whole batches would hold more than 51.2: all 64
        (64, 16, 0.75, (48, 16)),  # 48 is a multiple of 16: "more than 48" took 64
        (80, 16, 0.8, (64, 16)),
        (10_000, 64, 0.8, (8064, 1936)),  # the README's: unchanged
        (17, 16, 0.5, (16, 1)),
        (3, 32, 0.9, (2, 1)),  # not one whole batch: round(2.7) would take all 3
        (10, 16, 0.8, (8, 2)),
        (2, 32, 0.1, (1, 1)),
    ],
)
def test_neither_side_is_ever_empty(
    n: int, batch_size: int, train_split: float, sizes: tuple[int, int]
) -> None:
    data = Data.fromDataset(FunctionDataset(torch.exp, n=n), batchSize=batch_size, trainSplit=train_split)
    assert (len(data.train.x), len(data.valid.x)) == sizes
    assert len(data.valid) >= 1 and len(list(data.valid)) >= 1


@given(n=st.integers(2, 400), batch_size=st.integers(1, 70), train_split=st.floats(0.01, 0.99))
def test_any_split_leaves_both_sides_samples(n: int, batch_size: int, train_split: float) -> None:
    data = Data.fromDataset((torch.arange(n), torch.arange(n)), batchSize=batch_size, trainSplit=train_split)
    train, valid = len(data.train.x), len(data.valid.x)
    assert train >= 1 and valid >= 1 and train + valid == n
    if n > batch_size:  # whole training batches whenever one leaves validation a sample
        assert train % batch_size == 0


def test_one_sample_cannot_be_split() -> None:
    with pytest.raises(ValueError, match=r"^1 sample cannot be split: train and valid need at least 1 each$"):
        Data.fromDataset(FunctionDataset(torch.exp, n=1), trainSplit=0.9)


def test_seed_makes_the_split_and_the_training_order_reproducible() -> None:
    ds = FunctionDataset(torch.exp, n=200, dtype=torch.float64)

    def epochs(seed: int) -> tuple[list[float], list[list[float]]]:
        torch.manual_seed(seed + 100)  # torch's global generator plays no part
        data = Data.fromDataset(ds, batchSize=16, seed=seed)
        return data.valid.x.tolist(), [torch.cat([xb for xb, _ in data.train]).tolist() for _ in range(2)]

    valid, train = epochs(1)
    assert epochs(1) == (valid, train)
    assert train[0] != train[1]  # a new order each epoch
    assert epochs(2)[0] != valid
    with pytest.raises(ValueError, match=r"^seed must be an int or None, got 1\.5$"):
        Data.fromDataset(ds, seed=1.5)  # type: ignore[arg-type]


def test_the_split_goes_into_another_data_of_the_same_dataset() -> None:
    ds = FunctionDataset(torch.exp, n=100, dtype=torch.float64)
    a = Data.fromDataset(ds, batchSize=8, seed=1)
    b = Data.fromDataset(ds, batchSize=10, trainSplit=0.5, seed=2)
    state = a.state_dict()
    assert state["split"]["samples"] == 100 and state["split"]["train"] == 88
    assert state["split"]["order"].dtype == torch.int32
    b.load_state_dict(state)
    assert torch.equal(b.train.x, a.train.x) and torch.equal(b.valid.x, a.valid.x)
    assert torch.equal(b.train.y, a.train.y) and b.train.batchSize == 10  # b's batches, a's samples
    in_order = Data.fromDataset(ds, batchSize=8, shuffle=False)
    assert in_order.state_dict()["split"]["order"] is None
    b.load_state_dict(in_order.state_dict())
    assert torch.equal(b.valid.x, ds.x[88:])
    assert Data([], []).state_dict() == {}


@pytest.mark.parametrize(
    ("state", "message"),
    [
        (
            {"split": {"samples": 90, "train": 80, "order": None}},
            "the split is of 90 samples; this Data's dataset has 100",
        ),
        ({"split": {"samples": 100, "train": 100, "order": None}}, "need 0 < train < samples"),
        (
            {"split": {"samples": 100, "train": 5, "order": torch.zeros(100, dtype=torch.long)}},
            "not a permutation",
        ),
        ({"split": {"samples": 100, "train": 5, "order": torch.arange(100.0)}}, "not a permutation"),
        ({"split": [1, 2]}, "should be a dict of 'samples', 'train' and 'order'"),
    ],
)
def test_a_split_that_does_not_fit_changes_nothing(state: dict[str, Any], message: str) -> None:
    data = Data.fromDataset(FunctionDataset(torch.exp, n=100), batchSize=8)
    before = data.train.x.clone(), data.valid.x.clone()
    with pytest.raises(ValueError, match=message):
        data.load_state_dict(state)
    assert torch.equal(data.train.x, before[0]) and torch.equal(data.valid.x, before[1])


def test_replaced_loaders_have_no_split() -> None:
    data = Data.fromDataset(FunctionDataset(torch.exp, n=100), batchSize=8)
    state = data.state_dict()
    data.valid = [(torch.zeros(2), torch.zeros(2))]
    assert data.state_dict() == {}
    with pytest.raises(ValueError, match=r"not made by Data\.fromDataset, or its loaders were replaced"):
        data.load_state_dict(state)


def test_from_dataset_rejects_what_is_not_a_dataset() -> None:
    with pytest.raises(TypeError, match="a dataset with len\\(\\) and \\[i\\], got object"):
        Data.fromDataset(object())


def test_any_iterables_of_batches() -> None:
    ds = TensorDataset(torch.arange(10.0), torch.arange(10.0))
    data = Data(TorchDataLoader(ds, batch_size=4), [(torch.zeros(2), torch.zeros(2))])
    assert [len(xb) for xb, _ in data.train] == [4, 4, 2]
    assert len(list(data.valid)) == 1
    with pytest.raises(TypeError, match=r"^valid must be an iterable of batches, got int 3$"):
        Data([], 3)  # type: ignore[arg-type]
