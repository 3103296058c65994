"""HookParam's statistics of parameters sharded by FSDP2 (``ShardedParamCapture``): each rank
records the statistics of the whole parameters, equal to the unsharded ones of ``full_tensor()``;
reading a record never makes a collective; HookModule on a sharded model records each rank's
own activations.

``fsdp_param_worker.py`` runs every scenario in one torchrun launch of 2 processes and one of 3
(uneven shards, an empty one), CPU and gloo; the tests read what each rank saved. Bounded in
time: a hang fails the test, it does not stall CI. In this process: the combination itself
(``combine_shards``) against the whole tensors on simulated shards, and HookParam in a Learner
on a model sharded over a process group of one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import k1lib
from k1lib.callbacks._param_capture import ParamCapture
from k1lib.callbacks._param_record import ParamRecord
from k1lib.callbacks._sharded_params import combine_shards, param_capture
from k1lib.callbacks._stats import RESIDUALS, SMALL, STATS, Reducer

from . import helpers

WORKER = Path(__file__).with_name("fsdp_param_worker.py")
WORLDS = (2, 3)
TIMEOUT = 120
CLOSE = {"rtol": 1e-5, "atol": 1e-6, "equal_nan": True}

distributed = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)


# ---- the combination, in one process ------------------------------------------------------------------


def shard_rows(t: torch.Tensor, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What each of ``world`` ranks reduces of ``t`` cut as fully_shard cuts (``chunk`` on dim 0,
    the last ranks possibly empty): ``(world, 1, 1, 5)`` rows and ``(world, 1)`` counts."""
    chunks = list(t.chunk(world))
    chunks += [t[:0]] * (world - len(chunks))
    reducer = Reducer((*STATS, RESIDUALS))
    rows = torch.stack([reducer([c]) for c in chunks])[:, None]
    return rows, torch.tensor([[c.numel()] for c in chunks])


def make(rows: int, cols: int, offset: float, scale: float, seed: int) -> torch.Tensor:
    return offset + scale * torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


@settings(max_examples=40, deadline=None)
@given(
    rows=st.sampled_from([1, 2, 3, 5, 7, 40]),
    cols=st.sampled_from([1, 3, 64]),
    offset=st.sampled_from([0.0, -3.0, 500.0]),
    scale=st.sampled_from([0.0, 1e-2, 1.0]),
    world=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_combined_shards_equal_the_whole_tensors_statistics(
    rows: int, cols: int, offset: float, scale: float, world: int, seed: int
) -> None:
    # uneven shards, empty ones (more ranks than rows), constant values (scale 0) and values
    # near 500 with a spread of 0.01: as exact as the unsharded statistics
    t = make(rows, cols, offset, scale, seed)
    stats, counts = shard_rows(t, world)
    keys, combined = combine_shards(stats, counts, torch.zeros((world, 1), dtype=torch.int64))
    assert keys.tolist() == [0]
    torch.testing.assert_close(combined[0], Reducer(STATS)([t]), **CLOSE)


@pytest.mark.parametrize("offset", [0.0, 500.0])
def test_large_shards_take_the_large_path_and_combine_as_exactly(offset: float) -> None:
    t = make(2 * SMALL // 64 + 10, 64, offset, 0.01, 0)  # over SMALL, and so are its halves
    stats, counts = shard_rows(t, 2)
    _, combined = combine_shards(stats, counts, torch.zeros((2, 1), dtype=torch.int64))
    want = t.double()
    assert float(combined[0, 0, 1]) == pytest.approx(float(want.std()), rel=1e-5)
    assert float(combined[0, 0, 0]) == pytest.approx(float(want.mean()), rel=1e-7, abs=1e-9)


def test_without_the_residual_a_mean_near_500_spoils_a_small_std() -> None:
    # why shards send their mean's residual: float32 means of values near 500 are off by ~3e-5
    t = make(6, 4, 500.0, 0.01, 3)
    stats, counts = shard_rows(t, 3)
    truth = float(t.double().std())
    _, exact = combine_shards(stats, counts, torch.zeros((3, 1), dtype=torch.int64))
    stats[..., 4] = 0
    _, rounded = combine_shards(stats, counts, torch.zeros((3, 1), dtype=torch.int64))
    assert float(exact[0, 0, 1]) == pytest.approx(truth, rel=1e-4)
    assert float(rounded[0, 0, 1]) != pytest.approx(truth, rel=1e-4)


def test_rows_are_matched_by_key_and_a_key_some_rank_lacks_is_nan() -> None:
    a, b = make(3, 2, 0.0, 1.0, 1), make(3, 2, 0.0, 1.0, 2)
    stats_a, counts = shard_rows(a, 2)
    stats_b, _ = shard_rows(b, 2)
    nan = torch.full_like(stats_a[:1, :1], math.nan)
    # rank 0 recorded keys 4 and 7 (a, b), rank 1 only 7 (b's shard), then padding (-1)
    stats = torch.cat([torch.cat([stats_a[:1], stats_b[:1]], 1), torch.cat([stats_b[1:], nan[:1]], 1)])
    keys = torch.tensor([[4, 7], [7, -1]])
    union, combined = combine_shards(stats, counts, keys)
    assert union.tolist() == [4, 7]
    assert combined[0].isnan().all()
    torch.testing.assert_close(combined[1], Reducer(STATS)([b]), **CLOSE)


def test_plain_parameters_keep_the_plain_capture() -> None:
    params = list(nn.Linear(2, 3).named_parameters())
    assert type(param_capture(params, ParamRecord())) is ParamCapture


# ---- one process, a process group of one ------------------------------------------------------------------


@pytest.fixture
def one_rank(tmp_path: Path) -> Iterator[None]:
    """A gloo process group of this process alone (fully_shard's default mesh is then one CPU
    rank: every parameter a DTensor holding all of it)."""
    pytest.importorskip("torch.distributed.fsdp", reason="needs FSDP2")
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("needs torch.distributed with gloo")
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


class WholeParams(k1lib.Callback):
    """The unsharded statistics of the whole parameters at the end of each training batch."""

    order = 100  # after HookParam

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[torch.Tensor] = []

    def endBatch(self) -> None:
        if self.learner.training:
            params = list(self.learner.model.parameters())
            with torch.no_grad():
                self.rows.append(Reducer(STATS)([p.full_tensor() for p in params]))


@pytest.mark.usefixtures("one_rank")
def test_hook_param_in_a_learner_records_a_sharded_models_whole_parameters() -> None:
    from torch.distributed.fsdp import fully_shard

    l = helpers.learner()
    l.cbs.remove("Autosave")
    fully_shard(l.model[0])
    # resharded after every forward: by default FSDP2 leaves the root's parameters gathered
    # after a validation pass, and the next run's check of l.opt would find plain tensors
    fully_shard(l.model, reshard_after_forward=True)
    l.opt = torch.optim.SGD(l.model.parameters(), lr=0.1)
    whole = WholeParams()
    l.cbs.append(whole)
    l.run(2)
    l.run(1)
    assert l.HookParam.names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert l.HookParam.data.shape == (9, 4, 4)
    torch.testing.assert_close(l.HookParam.data, torch.stack(whole.rows), **CLOSE)


@pytest.mark.usefixtures("one_rank")
def test_the_lightning_watch_refuses_sharded_parameters() -> None:
    pytest.importorskip("lightning")
    from torch.distributed.fsdp import fully_shard

    import k1lib.lightning

    module = nn.Sequential(nn.Linear(2, 3))
    fully_shard(module)
    watch = k1lib.lightning.Watch("*")
    with pytest.raises(NotImplementedError, match="HookParam of parameters sharded across ranks"):
        watch.on_train_start(None, module)  # type: ignore[arg-type]


@pytest.mark.usefixtures("one_rank")
def test_the_hugging_face_watch_callback_refuses_sharded_parameters() -> None:
    pytest.importorskip("transformers")
    from torch.distributed.fsdp import fully_shard

    import k1lib.hf

    module = nn.Sequential(nn.Linear(2, 3))
    fully_shard(module)
    cb = k1lib.hf.WatchCallback("*")
    with pytest.raises(NotImplementedError, match="HookParam of parameters sharded across ranks"):
        cb.on_train_begin(None, None, None, model=module)  # type: ignore[arg-type]
    assert not cb._recording  # no hook was put on


# ---- several processes ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> dict[int, list[dict[str, Any]]]:
    """Each world's ranks' results (one launch after the other: at once, they fight over the
    cores and take longer)."""
    pytest.importorskip("torch.distributed.fsdp", reason="needs FSDP2")
    found = {}
    for world in WORLDS:
        out = tmp_path_factory.mktemp(f"fsdp{world}")
        helpers.torchrun(WORKER, [str(out)], world, timeout=TIMEOUT)
        found[world] = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]
    return found


def each_rank(worlds: dict[int, list[dict[str, Any]]]) -> list[tuple[int, int, dict[str, Any]]]:
    return [(world, rank, r) for world, ranks in worlds.items() for rank, r in enumerate(ranks)]


@distributed
def test_every_rank_records_the_whole_parameters_statistics(worlds: dict[int, list[dict[str, Any]]]) -> None:
    for world, rank, r in each_rank(worlds):
        c = r["capture"]
        assert c["sharded"] and set(c["types"]) == {"DTensor"}
        assert c["data"].shape == (6, 8, 4)
        assert c["after_epoch"] == [3, 6]
        try:
            torch.testing.assert_close(c["data"], c["reference"], **CLOSE)
        except AssertionError as e:
            raise AssertionError(f"{world} ranks, rank {rank}: {e}") from None
        torch.testing.assert_close(c["data"], worlds[world][0]["capture"]["data"], rtol=0, atol=0)


@distributed
def test_the_shards_were_uneven_and_one_empty_and_the_constant_stays_exact(
    worlds: dict[int, list[dict[str, Any]]],
) -> None:
    three = [r["capture"] for r in worlds[3]]
    names = three[0]["names"]
    shapes = {n: [c["local_shapes"][names.index(n)] for c in three] for n in names}
    assert shapes["a.weight"] == [(2, 4), (2, 4), (1, 4)]  # 5 rows on 3 ranks
    assert shapes["b.bias"] == [(1,), (1,), (0,)]  # an empty shard
    assert math.prod(shapes["wide.weight"][0]) < SMALL < 40000 * 2  # large whole, small in shards
    for ranks in worlds.values():
        data = ranks[0]["capture"]["data"]
        c, offset = names.index("c"), names.index("offset")
        assert (data[:, c, 0] == torch.tensor(0.1)).all() and (data[:, c, 1].abs() < 1e-7).all()
        assert (data[:, offset, 0] - 500).abs().max() < 1 and (data[:, offset, 1] < 0.1).all()


@distributed
def test_root_parameters_gathered_by_a_validation_pass_are_resharded_before_selection(
    worlds: dict[int, list[dict[str, Any]]],
) -> None:
    c = worlds[2][0]["capture"]
    assert c["gathered_before_reshard"][:2] == ["Parameter", "Parameter"]  # the root's own
    assert set(c["types"]) == {"DTensor"}


@distributed
def test_reading_on_one_rank_mid_epoch_makes_no_collective(worlds: dict[int, list[dict[str, Any]]]) -> None:
    for ranks in worlds.values():
        c = ranks[0]["capture"]
        mid = c["mid"]
        assert c["calls"] == []
        assert mid["batches"] == 3  # the first epoch's rows: the second's come at its end
        torch.testing.assert_close(mid["data"], c["data"][:3], rtol=0, atol=0)
        assert mid["repr"].startswith("HookParam record: 8 params, 3 means and stds each:")
        torch.testing.assert_close(mid["state"], c["data"][:3], rtol=0, atol=0)
        torch.testing.assert_close(mid["slice"], c["data"][:3, 1:3], rtol=0, atol=0)
        assert ranks[1]["capture"]["mid"] == {}  # rank 1 did not read, and both went on


@distributed
def test_a_batch_one_rank_did_not_record_is_nan_on_every_rank(
    worlds: dict[int, list[dict[str, Any]]],
) -> None:
    for world, rank, r in each_rank(worlds):
        data, reference = r["missing_row"]["data"], r["missing_row"]["reference"]
        assert data.shape == (3, 8, 4), (world, rank)
        assert data[1].isnan().all()
        torch.testing.assert_close(data[[0, 2]], reference[[0, 2]], **CLOSE)


@distributed
def test_hook_module_on_a_sharded_model_records_each_ranks_own_activations(
    worlds: dict[int, list[dict[str, Any]]],
) -> None:
    for world, rank, r in each_rank(worlds):
        sharded, whole = r["modules"]["sharded"], r["modules"]["whole"]
        assert sharded["names"] == ["a", "b", "wide"]
        for direction in ("forward", "backward"):
            for stat, values in whole["stats"][direction].items():
                assert values.shape == (2, 3)
                assert not values.isnan().any(), (world, rank, direction, stat)
                torch.testing.assert_close(sharded["stats"][direction][stat], values, **CLOSE)
    # each rank its own batch: the ranks' activations differ
    first = [r["modules"]["sharded"]["stats"]["forward"]["means"] for r in worlds[2]]
    assert not torch.equal(first[0], first[1])


@distributed
def test_watch_records_sharded_parameters_whole_at_each_blocks_end(
    worlds: dict[int, list[dict[str, Any]]],
) -> None:
    for _, rank, r in each_rank(worlds):
        w = r["watch"]
        assert w["after_block"] == [2, 4, 4]  # the block that raised dropped its row
        assert w["modules"] == 5
        torch.testing.assert_close(w["data"], w["reference"], **CLOSE)
        assert w["calls"] == []  # leaving by an exception made no collective
        if rank == 0:  # w.flush() and reads inside the block, on rank 0 alone: none either
            assert w["inside"]["batches"] == 2


@distributed
def test_replicated_dtensors_need_no_collective_and_two_sharded_dimensions_are_refused(
    worlds: dict[int, list[dict[str, Any]]],
) -> None:
    for _, _, r in each_rank(worlds):
        p = r["placements"]
        assert p["calls"] == []
        torch.testing.assert_close(p["data"], p["reference"], **CLOSE)
        assert p["refused"].startswith(
            "HookParam: parameter 'both' is a DTensor placed (Shard(dim=0), Shard(dim=1))"
        )
        assert "leave its module out of the css's HookParam selection" in p["refused"]


@distributed
def test_hook_param_in_a_sharded_learner_records_whole_parameters(
    worlds: dict[int, list[dict[str, Any]]],
) -> None:
    for world, _, r in each_rank(worlds):
        learner = r["learner"]
        assert learner is not None
        torch.testing.assert_close(learner["data"], learner["reference"], **CLOSE)
        torch.testing.assert_close(learner["data"], worlds[world][0]["learner"]["data"], rtol=0, atol=0)
