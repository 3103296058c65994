"""``Reducer`` (grouped mean/std/min/max) and ``Rows`` (device row buffers) against direct
computation: random shapes, dtypes, ``None`` entries, precomputed moments, ``into=`` rows,
NaN and inf, chunk growth and flushes."""

from __future__ import annotations

import math
import warnings
from collections.abc import Collection
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from k1lib.callbacks._rows import Rows
from k1lib.callbacks._stats import RESIDUALS, SMALL, STATS, Reducer

FAST = settings(max_examples=50, deadline=None)
# element counts on both sides of SMALL (stacked with others / reduced alone)
NUMELS = [1, 2, 3, 7, 64, SMALL, SMALL + 1, SMALL + 257]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64]


def direct(t: torch.Tensor | None, names: tuple[str, ...] = STATS) -> torch.Tensor:
    """The statistics of ``t`` computed plainly in float64 (torch.std is the unbiased std)."""
    if t is None:
        return torch.full((len(names),), math.nan, dtype=torch.float64)
    x = t.detach().double().reshape(-1)
    values = {
        "means": x.mean(),
        "stds": x.std() if x.numel() > 1 else torch.tensor(math.nan, dtype=torch.float64),
        "mins": x.min(),
        "maxs": x.max(),
    }
    return torch.stack([values[n] for n in names])


def assert_stats(
    got: torch.Tensor,
    tensors: list[torch.Tensor | None],
    names: tuple[str, ...] = STATS,
    summed: Collection[int] = (),
) -> None:
    """``got`` (one row per tensor) equals ``direct``: relative to each tensor's own scale, since
    float32 sums of a tensor whose mean is near 0 have an absolute, not a relative, error.
    ``summed``: entries reduced by sums of x and x^2 although small (precomputed moments)."""
    assert got.dtype == torch.float32 and got.shape == (len(tensors), len(names))
    for i, t in enumerate(tensors):
        want = direct(t, names)
        finite = t.detach().double().abs().nan_to_num(0.0, 0.0, 0.0) if t is not None else None
        scale = float(finite.max()) if finite is not None and finite.numel() else 0.0
        # small tensors: two passes in float32 (up to ~5e-5 seen at SMALL elements); large ones:
        # float32 sums of x and x^2 (looser)
        rtol = 1e-3 if t is not None and (t.numel() > SMALL or i in summed) else 3e-4
        torch.testing.assert_close(
            got[i].double(),
            want,
            rtol=rtol,
            atol=rtol * scale / 10 + 1e-12,
            equal_nan=True,
            msg=lambda m, i=i, t=t: f"entry {i} ({None if t is None else (tuple(t.shape), t.dtype)}): {m}",
        )


def make(numel: int, dtype: torch.dtype, seed: int, scale: float, offset: float) -> torch.Tensor:
    """``numel`` values of std ``scale`` around ``offset * scale``."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(numel, generator=g, dtype=torch.float64) + offset) * scale
    if dtype == torch.int64:
        x = x.round()
    t = x.to(dtype)
    # a few different shapes of one size: the reducer stacks by size, whatever the shape
    return t.reshape(-1, 1) if seed % 3 == 0 else t.reshape(1, -1, 1) if seed % 3 == 1 else t


entry = st.one_of(
    st.none(),
    st.builds(
        make,
        numel=st.sampled_from(NUMELS),
        dtype=st.sampled_from(DTYPES),
        seed=st.integers(0, 2**16),
        scale=st.sampled_from([1e-3, 1.0, 30.0]),
        # the large path loses precision as the mean moves away from 0 (in stds): kept near here,
        # see test_large_tensor_std_far_from_zero_within_documented_precision
        offset=st.sampled_from([0.0, 0.5, -3.0]),
    ),
)
name_lists = st.permutations(STATS).flatmap(lambda p: st.integers(1, 4).map(lambda k: tuple(p[:k])))


@FAST
@given(tensors=st.lists(entry, min_size=1, max_size=8), names=name_lists)
def test_reducer_equals_direct_computation(
    tensors: list[torch.Tensor | None], names: tuple[str, ...]
) -> None:
    reducer = Reducer(names)
    assert_stats(reducer(tensors), tensors, names)
    # the plan is cached by shapes: new values of the same shapes must not reuse old results
    again = [None if t is None else t.flip(0) * 2 for t in tensors]
    assert_stats(reducer(again), again, names)


@FAST
@given(tensors=st.lists(entry, min_size=1, max_size=6), data=st.data())
def test_precomputed_moments_and_into_a_buffer_row(
    tensors: list[torch.Tensor | None], data: st.DataObject
) -> None:
    reducer = Reducer(STATS)
    present = [i for i, t in enumerate(tensors) if t is not None]
    early = data.draw(st.sets(st.sampled_from(present)) if present else st.just(set()))
    done = {i: reducer.one(tensors[i]) for i in early}
    # entries reduced early are ignored: pass garbage (or None) in their place
    passed = [
        torch.full((3,), 1e9) if i in done and i % 2 else None if i in done else t
        for i, t in enumerate(tensors)
    ]
    buffer = torch.full((3, len(tensors), len(STATS)), -7.0)
    out = reducer(passed, done, into=buffer[1])
    assert out.data_ptr() == buffer[1].data_ptr()
    assert_stats(buffer[1], tensors, summed=done)
    assert (buffer[0] == -7).all() and (buffer[2] == -7).all()


def test_one_element_has_nan_std_and_no_warning() -> None:
    reducer = Reducer(STATS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = reducer([torch.tensor([2.5]), torch.tensor(-1.0), torch.ones(1, 1, dtype=torch.bfloat16)])
    assert out[:, 0].tolist() == [2.5, -1.0, 1.0]
    assert out[:, 1].isnan().all()
    assert out[:, 2].tolist() == out[:, 3].tolist() == [2.5, -1.0, 1.0]


def test_none_entries_give_nan_rows_in_place() -> None:
    reducer = Reducer(("means", "maxs"))
    out = reducer([None, torch.arange(4.0), None, torch.ones(SMALL + 1), None])
    assert out[[0, 2, 4]].isnan().all()
    assert out[1].tolist() == [1.5, 3.0] and out[3].tolist() == [1.0, 1.0]
    assert reducer([None, None]).isnan().all()


def test_mixed_dtypes_of_one_size_are_reduced_each_in_its_own_dtype() -> None:
    g = torch.Generator().manual_seed(1)
    base = torch.randn(5, 6, generator=g)
    tensors: list[torch.Tensor | None] = [
        base,
        base.to(torch.bfloat16),
        base.double() * 1e3,
        (base * 10).round().long(),
        base.half(),
        torch.randn(SMALL + 5, generator=g).to(torch.bfloat16),
    ]
    assert_stats(Reducer(STATS)(tensors), tensors)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_large_tensors_take_their_own_path() -> None:
    # on CUDA a large tensor is reduced by std_mean (one fused pass), and moments() are final
    # statistics: mixed with stacked small ones, None, NaN, precomputed entries and into=
    g = torch.Generator().manual_seed(5)
    cpu: list[torch.Tensor | None] = [
        torch.randn(SMALL + 3, generator=g) * 3 + 1,
        None,
        torch.randn(4, 5, generator=g),
        torch.randn(SMALL + 3, generator=g).to(torch.bfloat16),
        torch.randn(20, generator=g),
        torch.randn(SMALL * 2, generator=g) + 100,
    ]
    cpu[4][3] = math.nan
    tensors = [None if t is None else t.cuda() for t in cpu]
    reducer = Reducer(STATS)
    assert_stats(reducer(tensors).cpu(), cpu)
    done = {0: reducer.one(tensors[0]), 5: reducer.one(tensors[5])}
    buffer = torch.full((2, len(tensors), len(STATS)), -7.0, device="cuda")
    reducer([None if i in done else t for i, t in enumerate(tensors)], done, into=buffer[1])
    assert_stats(buffer[1].cpu(), cpu)
    assert (buffer[0] == -7).all()


@pytest.mark.parametrize("size", [5, SMALL + 9])
def test_nan_and_inf_propagate(size: int) -> None:
    def with_value(value: float) -> torch.Tensor:
        t = torch.randn(size)
        t[size // 2] = value
        return t

    nan, inf, ninf = with_value(math.nan), with_value(math.inf), with_value(-math.inf)
    out = Reducer(STATS)([nan, inf, ninf])
    assert out[0].isnan().all()  # mean, std, min, max
    assert out[1, 0] == math.inf and out[1, 1].isnan() and out[1, 3] == math.inf and out[1, 2].isfinite()
    assert out[2, 0] == -math.inf and out[2, 1].isnan() and out[2, 2] == -math.inf and out[2, 3].isfinite()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_tensor_std_ten_stds_from_zero(dtype: torch.dtype) -> None:
    t = ((torch.randn(SMALL + 100, generator=torch.Generator().manual_seed(3)) + 10) * 2).to(dtype)
    want = t.double().std()
    assert abs(Reducer(["stds"])([t])[0, 0].double() - want) / want < 2e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_tensor_std_far_from_zero_within_documented_precision(dtype: torch.dtype) -> None:
    offset = 100.0
    for seed in range(5):
        t = (
            torch.randn(SMALL + 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
            + offset
        ).to(dtype)
        want = t.double().std()
        got = Reducer(["stds"])([t])[0, 0].double()
        assert abs(got - want) / want < 3 * 1e-7 * offset**2


def test_unknown_or_no_statistics_raise() -> None:
    with pytest.raises(ValueError, match=r"\['median'\].*means, stds, mins, maxs"):
        Reducer(["means", "median"])
    with pytest.raises(ValueError, match="choose from"):
        Reducer([])


def test_large_float64_tensor() -> None:
    # float64 sums stay float64 (vector_norm refuses to narrow them to float32)
    t = torch.randn(SMALL + 1, dtype=torch.float64)
    assert_stats(Reducer(STATS)([t]), [t])


def test_no_tensors_give_an_empty_result() -> None:
    assert Reducer(STATS)([]).shape == (0, len(STATS))


def test_empty_tensor_gives_nan() -> None:
    out = Reducer(STATS)([torch.empty(0, 3), torch.ones(2)])
    assert out[0].isnan().all() and out[1].tolist() == [1.0, 0.0, 1.0, 1.0]


# ---- Rows -------------------------------------------------------------------------------------------

ops = st.lists(
    st.one_of(
        st.tuples(st.just("next"), st.integers(1, 150)),  # write that many rows
        st.tuples(st.just("flush"), st.just(0)),
        st.tuples(st.just("reserve"), st.integers(0, 100)),  # flush, then reserve that many
        st.tuples(st.just("extend"), st.integers(1, 70)),  # that many rows made elsewhere
    ),
    max_size=12,
)


@FAST
@given(ops=ops)
def test_rows_keep_every_row_across_chunk_growth_and_flushes(ops: list[tuple[str, int]]) -> None:
    rows = Rows((2, 3))
    written: list[torch.Tensor] = []
    flushed = 0
    for op, n in ops:
        if op == "reserve":
            rows.flush()
            flushed = len(written)
            rows.reserve(n, torch.device("cpu"))
        elif op == "flush":
            rows.flush()
            flushed = len(written)
        elif op == "extend":
            block = torch.arange(len(written), len(written) + n, dtype=torch.float32)[:, None, None]
            rows.extend(block.expand(n, 2, 3).clone())
            written.extend(block.expand(n, 2, 3).unbind())
        else:
            for _ in range(n):
                value = torch.full((2, 3), float(len(written)))
                value[0, 0] = math.nan if len(written) % 7 == 0 else value[0, 0]
                value[1, 2] = math.inf if len(written) % 5 == 0 else value[1, 2]
                rows.next(torch.device("cpu")).copy_(value)
                written.append(value)
        assert len(rows) == flushed  # only flushed rows count
        expected = torch.stack(written[:flushed]) if flushed else torch.empty((0, 2, 3))
        torch.testing.assert_close(rows.host(), expected, equal_nan=True)
    rows.flush()
    expected = torch.stack(written) if written else torch.empty((0, 2, 3))
    torch.testing.assert_close(rows.host(), expected, equal_nan=True)
    assert rows.host().dtype == torch.float32


def test_rows_taken_leave_the_device_and_never_reach_the_host() -> None:
    rows = Rows((2,))
    assert rows.take() is None
    rows.reserve(4, torch.device("cpu"))
    rows.next(torch.device("cpu")).fill_(1)
    rows.extend(torch.full((2, 2), 2.0))
    rows.next(torch.device("cpu")).fill_(3)
    assert rows.take().tolist() == [[1, 1], [2, 2], [2, 2], [3, 3]]  # type: ignore[union-attr]
    assert rows.take() is None
    rows.flush()
    assert len(rows) == 0 and rows.host().shape == (0, 2)


def test_rows_of_existing_data_continue() -> None:
    rows = Rows.of(torch.arange(6.0).reshape(3, 2))
    assert len(rows) == 3 and rows.shape == (2,)
    rows.next(torch.device("cpu")).fill_(10)
    rows.next(torch.device("cpu")).fill_(11)
    rows.flush()
    assert rows.host().tolist() == [[0, 1], [2, 3], [4, 5], [10, 10], [11, 11]]
    assert Rows.of(torch.empty((0, 4))).host().shape == (0, 4)


def test_rows_reserved_but_not_filled_are_not_kept() -> None:
    rows = Rows((1,))
    rows.reserve(10, torch.device("cpu"))
    for i in range(3):
        rows.next(torch.device("cpu")).fill_(i)
    rows.flush()
    assert rows.host().reshape(-1).tolist() == [0, 1, 2]


def test_reserve_between_flushes_keeps_only_filled_rows() -> None:
    rows = Rows((1,))
    rows.next(torch.device("cpu")).fill_(1)
    rows.reserve(5, torch.device("cpu"))
    rows.next(torch.device("cpu")).fill_(2)
    rows.flush()
    assert rows.host().reshape(-1).tolist() == [1, 2]


def test_rows_reduced_early_set_the_device_when_nothing_else_does() -> None:
    # every output large (reduced in its hook) and another with no value: the NaN row must be
    # made where the early rows live ("meta" stands in for a GPU)
    reducer = Reducer(["means", "stds"])
    done = {0: reducer.one(torch.randn(SMALL + 1, device="meta"))}
    assert reducer([None, None], done).device.type == "meta"


def test_the_plan_cache_stays_bounded_when_shapes_keep_changing() -> None:
    reducer = Reducer(["means"])
    for n in range(1, 200):  # e.g. sequences of every length
        out = reducer([torch.ones(n, 2)])
        assert abs(out[0, 0].item() - 1.0) < 1e-6
    assert len(reducer._plans) <= 64


@pytest.mark.parametrize(
    "make_tensor",
    [
        lambda g: torch.full((300, 300), 0.1),  # a constant-initialised weight
        lambda g: torch.randn(300, 300, generator=g) * 1e-3 + 0.1,  # that weight after a few steps
        lambda g: torch.randn(256, 300, generator=g) + 500.0,  # an output with a large bias
        lambda g: torch.randint(0, 100, (SMALL + 5,), generator=g) + 10**9,  # wide integers
    ],
    ids=["constant", "near-constant", "large-bias", "int64"],
)
def test_large_tensors_far_from_zero_relative_to_their_spread_keep_an_exact_std(make_tensor: Any) -> None:
    # a sum and a sum of squares in float32 (one pass) would give a std off by about
    # 1e-7 * (mean / std)**2: nothing left of it here
    t = make_tensor(torch.Generator().manual_seed(0))
    want = t.double().std()
    got = Reducer(STATS)([t])[0]
    assert abs(got[1].double() - want) <= 1e-3 * want + 1e-7 * t.double().abs().max()
    assert float(got[0]) == pytest.approx(float(t.double().mean()), rel=1e-6)


@pytest.mark.parametrize("numel", [7, 3000, 20000, SMALL + 1], ids=["welford", "stacked", "norm", "large"])
def test_residuals_give_the_mean_to_far_more_digits_and_change_nothing_else(numel: int) -> None:
    # values near 500 with a spread of 0.01: a float32 mean is off by up to ~3e-5; with the
    # mean of x - mean added (in float64), by about 1e-7 of the spread
    g = torch.Generator().manual_seed(numel)
    tensors = [500 + 0.01 * torch.randn(numel, generator=g) for _ in range(2)]
    both = Reducer((*STATS, RESIDUALS))(tensors)
    torch.testing.assert_close(both[:, :4], Reducer(STATS)(tensors), rtol=0, atol=0)
    for t, row in zip(tensors, both, strict=True):
        truth = t.double().mean()
        assert abs(row[0].double() + row[4].double() - truth) < 1e-8
