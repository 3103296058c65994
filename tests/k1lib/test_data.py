"""``k1lib.data``: the FunctionDataset presets, DataLoader batching and shuffling, Data and its
``fromDataset`` split, and the errors for bad arguments."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

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


def test_train_split_must_leave_both_sides_a_sample() -> None:
    with pytest.raises(ValueError, match=r"trainSplit=0\.9 of 3 samples leaves 3 for train and 0 for valid"):
        Data.fromDataset(FunctionDataset(torch.exp, n=3), trainSplit=0.9)


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
