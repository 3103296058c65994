"""DDP: two CPU processes (gloo) launched by torchrun, against a single-process reference.

``ddp_worker.py`` runs every scenario in one launch (a launch costs seconds) and saves what
each rank saw; the tests here read it. Bounded in time: a hang fails the test, it does not
stall CI.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import k1lib

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)

WORKER = Path(__file__).with_name("ddp_worker.py")
sys.path.insert(0, str(WORKER.parent))

import ddp_worker  # noqa: E402
import hf_models  # noqa: E402

from .helpers import torchrun  # noqa: E402


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("ddp")
    torchrun(WORKER, [str(out)], 2)
    found = []
    for rank in range(2):
        results = torch.load(out / f"rank{rank}" / "results.pt", weights_only=False)
        results["stdout"] = (out / f"rank{rank}" / "stdout.txt").read_text()
        results["files"] = sorted(p.name for p in (out / f"rank{rank}").iterdir())
        found.append(results)
    return found


def reference(
    initial: dict[str, torch.Tensor], steps: list[torch.Tensor]
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """One process training on ``steps`` (the x of each global batch) from ``initial``."""
    model = ddp_worker.Net()
    model.load_state_dict(initial)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for xb in steps:
        loss = ddp_worker.loss_f(model(xb), torch.sin(2 * xb))
        losses.append(loss.item())
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model.state_dict(), losses


def test_two_ranks_train_like_one_process_on_the_same_global_batches(ranks: list[dict[str, Any]]) -> None:
    r0, r1 = ranks[0]["train"], ranks[1]["train"]
    assert r0["model_type"] == "Net"  # unwrapped after the run
    # rank 1 started from other weights: DDP sent rank 0's, and both end equal
    assert not torch.equal(r0["initial"]["a.weight"], r1["initial"]["a.weight"])
    for key, value in r0["final"].items():
        assert torch.equal(value, r1["final"][key]), key
    # each global batch is rank 0's batch then rank 1's; one process on those batches
    steps = [torch.cat([a, b]) for a, b in zip(r0["xbs"], r1["xbs"], strict=True)]
    weights, losses = reference(r0["initial"], steps)
    for key, value in weights.items():
        torch.testing.assert_close(r0["final"][key], value, rtol=1e-5, atol=1e-6)
    # reported losses are the means over ranks: a process's loss on the global batch
    assert r0["train"] == r1["train"]
    torch.testing.assert_close(torch.tensor(r0["train"]), torch.tensor(losses), rtol=1e-5, atol=1e-6)
    assert r0["valid"] == r1["valid"]


def test_each_epoch_is_dealt_out_in_one_order_a_new_one_each_epoch(ranks: list[dict[str, Any]]) -> None:
    r0, r1 = ranks[0]["train"], ranks[1]["train"]
    # fromDataset splits 480 samples into 20 training batches of 20 and 4 validation ones:
    # 10 and 2 a rank
    assert r0["batches"] == 12
    per_epoch = 10
    assert len(r0["xbs"]) == 2 * per_epoch
    epochs = []
    for e in range(2):
        mine = [torch.cat(r["xbs"][e * per_epoch : (e + 1) * per_epoch]) for r in (r0, r1)]
        both = torch.cat(mine)
        assert len(both.unique()) == len(both) == 400  # disjoint shards covering the train set
        assert torch.equal(both.sort().values, r0["train_x"].sort().values)
        epochs.append(both)
    assert not torch.equal(epochs[0], epochs[1])  # shuffled anew


def test_only_rank_0_prints_and_writes_files(ranks: list[dict[str, Any]]) -> None:
    assert "Progress: 100%" in ranks[0]["stdout"]
    assert "Saved to autosave-2.pth" in ranks[0]["stdout"]
    assert ranks[1]["stdout"] == ""
    assert {"autosave-0.pth", "autosave-1.pth", "autosave-2.pth"} <= set(ranks[0]["files"])
    # the worker's own two files; Autosave never wrote there
    assert ranks[1]["files"] == ["results.pt", "stdout.txt"]


@pytest.mark.parametrize("event", ["endLoss", "endBatch"])
def test_a_cancel_on_rank_1_ends_the_run_on_both_ranks(ranks: list[dict[str, Any]], event: str) -> None:
    r0, r1 = ranks[0][f"cancel_{event}"], ranks[1][f"cancel_{event}"]
    # cancelled in the first epoch on both, with the same losses on both. At endLoss of batch
    # 3, rank 1 cancels before its Loss callback records, rank 0 has recorded: batch 3's
    # loss is rank 0's alone. At endBatch of batch 5, the cancel is agreed before the next
    # backward (this model has no buffers: its forward needs no agreement): rank 0 has run
    # batch 6's forward and loss by then, so 7 losses, the 7th rank 0's.
    expected = 4 if event == "endLoss" else 7
    assert r0["train"] == r1["train"]
    assert len(r0["train"]) == len(r1["train"]) == expected
    for key, value in r0["final"].items():
        assert torch.equal(value, r1["final"][key]), key
    assert f"Run cancelled: rank 1 stops at {event} (on rank 1)." in ranks[0]["stdout"]


def test_an_error_on_rank_1_stops_both_ranks_naming_it(ranks: list[dict[str, Any]]) -> None:
    assert ranks[1]["failed"] == {"type": "ValueError", "message": "bad batch on rank 1"}
    assert ranks[0]["failed"]["type"] == "RuntimeError"
    assert ranks[0]["failed"]["message"] == (
        "rank 1 failed in the batch (before backward) (epoch 0, batch 2) "
        "with ValueError: bad batch on rank 1; every rank stops"
    )


def test_unused_parameters_give_ddps_error_with_our_hint(ranks: list[dict[str, Any]]) -> None:
    for rank in ranks:
        found = rank["unused"]
        assert found["type"] == "RuntimeError"
        assert "find_unused_parameters" in found["message"]
        assert any("l.ddpKwargs = {'find_unused_parameters': True}" in n for n in found["notes"])


def test_plain_lists_are_dealt_whole_groups_only(ranks: list[dict[str, Any]]) -> None:
    # 7 training batches and 1 validation batch: 3 each (the 7th dropped), no validation
    r0, r1 = ranks[0]["plain_lists"], ranks[1]["plain_lists"]
    assert r0["batches"] == r1["batches"] == 3
    x, _ = ddp_worker.dataset()
    batches = x[:70].split(10)
    assert [b.tolist() for b in r0["xbs"]] == [batches[i].tolist() for i in (0, 2, 4)]
    assert [b.tolist() for b in r1["xbs"]] == [batches[i].tolist() for i in (1, 3, 5)]


def test_a_shuffled_torch_loader_gives_one_order_to_both_ranks(ranks: list[dict[str, Any]]) -> None:
    r0, r1 = ranks[0]["torch_loader"], ranks[1]["torch_loader"]
    per_epoch = 480 // 40 // 2
    epochs = []
    for e in range(2):
        both = torch.cat([torch.cat(r["xbs"][e * per_epoch : (e + 1) * per_epoch]) for r in (r0, r1)])
        assert len(both.unique()) == 480
        epochs.append(both)
    assert not torch.equal(epochs[0], epochs[1])


def test_param_finder_agrees_on_when_to_stop(ranks: list[dict[str, Any]]) -> None:
    r0, r1 = ranks[0]["param_finder"], ranks[1]["param_finder"]
    assert r0["losses"] == r1["losses"] > 0
    assert r0["suggestion"] == r1["suggestion"]


def test_one_process_is_not_distributed() -> None:
    l = k1lib.Learner()
    assert (l.rank, l.worldSize) == (0, 1)


def test_ranks_out_of_step_both_raise_saying_where_each_was(ranks: list[dict[str, Any]]) -> None:
    for rank in ranks:
        found = rank["out_of_step"]
        assert found["type"] == "OutOfStepError"
        assert "the ranks are out of step" in found["message"]
        assert "rank 0: at 'startEpoch' (epoch 1, batch 0)" in found["message"]
        # rank 1 got to endRun, where its Loss callback averages the last losses
        assert "rank 1: at 'average'" in found["message"]


def test_a_loader_failing_on_rank_1_stops_both_ranks(ranks: list[dict[str, Any]]) -> None:
    assert ranks[1]["fetch_failure"] == {"type": "OSError", "message": "cannot read shard 4"}
    assert ranks[0]["fetch_failure"]["type"] == "RuntimeError"
    assert ranks[0]["fetch_failure"]["message"] == (
        "rank 1 failed fetching batch 2 of epoch 0 with OSError: cannot read shard 4; every rank stops"
    )


def test_a_rank_whose_loader_runs_out_first_ends_the_epoch_for_all(ranks: list[dict[str, Any]]) -> None:
    # 480 samples, 240 a rank: rank 0 has 24 batches of 10, rank 1 has 23
    r0, r1 = ranks[0]["uneven"], ranks[1]["uneven"]
    # the end is agreed before backward: rank 0's 24th forward and loss were run, not trained
    assert r0["trained"] == r1["trained"] == 24
    for key, value in r0["final"].items():
        assert torch.equal(value, r1["final"][key]), key


def test_grad_accumulation_steps_like_one_process(
    ranks: list[dict[str, Any]],
) -> None:
    r0, r1 = ranks[0]["accumulated"], ranks[1]["accumulated"]
    for key, value in r0["final"].items():
        assert torch.equal(value, r1["final"][key]), key
    # one process: the gradient of each group is the mean over its global batches
    model = ddp_worker.Net()
    model.load_state_dict(r0["initial"])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    steps = [torch.cat([a, b]) for a, b in zip(r0["xbs"], r1["xbs"], strict=True)]
    assert len(steps) == 5
    for group in (steps[0:2], steps[2:4], steps[4:5]):
        for xb in group:
            (ddp_worker.loss_f(model(xb), torch.sin(2 * xb)) / len(group)).backward()
        opt.step()
        opt.zero_grad()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(r0["final"][key], value, rtol=1e-5, atol=1e-6)


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, b[k]) for k, v in a.items())


def test_a_cancel_before_the_forward_pass_is_agreed_there(ranks: list[dict[str, Any]]) -> None:
    # BatchNorm: DDP's forward broadcasts buffers, and rebuilds its buckets at batch 1: a rank
    # skipping that forward alone would hang the others
    r0, r1 = ranks[0]["startBatch"], ranks[1]["startBatch"]
    assert r0["raised"] is None and r1["raised"] is None
    assert len(r0["train"]) == len(r1["train"]) == 9  # 10 a rank, batch 1 cancelled on both
    assert same_weights(r0["final"], r1["final"])
    r0, r1 = ranks[0]["startBatch_later"], ranks[1]["startBatch_later"]
    assert len(r0["train"]) == len(r1["train"]) == 9  # batch 6 cancelled on both
    assert same_weights(r0["final"], r1["final"])
    r0, r1 = ranks[0]["startPass"], ranks[1]["startPass"]
    assert r1["raised"] == "ValueError: bad input"
    assert r0["raised"] == (
        "RuntimeError: rank 1 failed starting the batch (epoch 0, batch 1) with ValueError: bad input; "
        "every rank stops"
    )


def test_a_cancel_in_startStep_comes_after_the_step_on_every_rank(ranks: list[dict[str, Any]]) -> None:
    r0, r1 = ranks[0]["after_backward"], ranks[1]["after_backward"]
    # batches 0-3 trained (the 4th stepped), then the 5th's forward on rank 0 before the agreement
    assert len(r0["train"]) == len(r1["train"]) == 5
    assert same_weights(r0["final"], r1["final"])
    assert "Run cancelled: stop after this step (on rank 1)." in ranks[0]["stdout"]


def test_a_cancel_at_endEpoch_on_one_rank_still_lets_every_rank_average(ranks: list[dict[str, Any]]) -> None:
    r0, r1 = ranks[0]["epoch_end"], ranks[1]["epoch_end"]
    assert r0 == r1
    assert len(r0["valid"]) == 1 and r0["epoch"] == 0
    assert "Run cancelled: enough epochs (on rank 1)." in ranks[0]["stdout"]


def test_cancel_on_low_loss_in_epoch_mode_decides_on_the_mean_over_ranks(ranks: list[dict[str, Any]]) -> None:
    r0, r1 = ranks[0]["low_loss"], ranks[1]["low_loss"]
    assert r0 == r1
    assert r0["epochs"] < 20 and r0["valid"][-1] < 0.3 <= min(r0["valid"][:-1])


def test_losses_are_averaged_batch_by_batch(ranks: list[dict[str, Any]]) -> None:
    r0, r1 = ranks[0]["loss_by_batch"], ranks[1]["loss_by_batch"]
    assert r0["train"] == r1["train"]
    assert len(r0["train"]) == 10  # batch 0 is rank 0's loss alone; none shifted


def test_rank_0_can_save_alone_mid_run_and_every_rank_load_it(ranks: list[dict[str, Any]]) -> None:
    assert ranks[0]["save_on_rank_0"] == {"saved": 4, "epoch": 0}  # 2 training, 2 validation batches
    assert ranks[1]["save_on_rank_0"] == {"saved": 0, "epoch": 0}


def test_record_runs_each_rank_alone_and_changes_nothing(ranks: list[dict[str, Any]]) -> None:
    for rank in ranks:
        assert rank["recorded"] == {"batches": 6, "unchanged": True}  # 3 of each loader, not dealt


def test_a_subset_random_sampler_gets_one_order_on_both_ranks(ranks: list[dict[str, Any]]) -> None:
    both = torch.cat([torch.cat(rank["subset_sampler"]["xbs"]) for rank in ranks])
    assert len(both) == len(both.unique()) == 400


def test_a_cancel_with_grad_accumulation_is_agreed(ranks: list[dict[str, Any]]) -> None:
    r0, r1 = ranks[0]["accumulating_cancel"], ranks[1]["accumulating_cancel"]
    # batch 2 cancelled on both; rank 0 ran its forward first (quiet after the rebuild in batch
    # 1's forward), so batch 2's loss is rank 0's alone
    assert len(r0["train"]) == len(r1["train"]) == 10
    assert same_weights(r0["final"], r1["final"])


def test_a_cancel_before_a_static_graph_rebuild_is_agreed(ranks: list[dict[str, Any]]) -> None:
    r0, r1 = ranks[0]["static_graph"], ranks[1]["static_graph"]
    assert len(r0["train"]) == len(r1["train"]) == 9
    assert same_weights(r0["final"], r1["final"])


def test_every_startStep_handler_runs_before_the_step_under_ddp(ranks: list[dict[str, Any]]) -> None:
    assert same_weights(ranks[0]["clipped_step_cancel"]["final"], ranks[1]["clipped_step_cancel"]["final"])


def test_a_batch_cancel_raised_in_endBatch_ends_the_run_on_every_rank(ranks: list[dict[str, Any]]) -> None:
    assert ranks[1]["end_batch_cancel"] == {"type": "CancelBatchException", "message": "too late"}
    assert ranks[0]["end_batch_cancel"]["type"] == "RuntimeError"
    assert (
        "rank 1 failed in batch 3 of epoch 0, in endBatch with CancelBatchException: too late"
        in (ranks[0]["end_batch_cancel"]["message"])
    )


def test_a_cancel_raised_in_cancelBatch_on_one_rank_is_agreed(ranks: list[dict[str, Any]]) -> None:
    r0, r1 = ranks[0]["cancel_in_cancel_batch"], ranks[1]["cancel_in_cancel_batch"]
    # batches 0-4, and batch 5's forward on rank 0, which learns of the cancel before backward
    assert r0["train"] == r1["train"] and len(r0["train"]) == 6
    assert same_weights(r0["final"], r1["final"])
    assert "Run cancelled: from cancelBatch (on rank 1)." in ranks[0]["stdout"]


def test_param_finder_with_uneven_loaders_gives_one_suggestion(ranks: list[dict[str, Any]]) -> None:
    r0, r1 = ranks[0]["param_finder_uneven"], ranks[1]["param_finder_uneven"]
    assert r0 == r1 and len(r0["params"]) > 23  # the test crossed an epoch end


@pytest.mark.parametrize("name", ["step", "flush", "no_grad"])
def test_a_failure_in_the_loops_own_work_on_one_rank_stops_both_naming_it(
    ranks: list[dict[str, Any]], name: str
) -> None:
    r0, r1 = ranks[0]["loop_failures"][name], ranks[1]["loop_failures"][name]
    if name == "no_grad":  # found before backward, where rank 0 would wait in the all-reduce
        assert r1["type"] == "RuntimeError" and "l.loss is a tensor without a gradient" in r1["message"]
    else:  # the step's own error, not a step count that differs because of it
        assert r1 == {"type": "RuntimeError", "message": "out of memory on rank 1"}
    assert r0["type"] == "RuntimeError"
    assert r0["message"].startswith("rank 1 failed") and r1["message"] in r0["message"]
    if name == "flush":
        assert "stepping the last accumulation group of epoch 0" in r0["message"]


# ---- one loop: the same events in one process and on each rank ---------------------------------

OUTSIDE_BATCHES = {
    "startRun",
    "startEpoch",
    "startValidBatches",
    "endEpoch",
    "endRun",
    "cancelEpoch",
    "cancelRun",
}


def _flow(trace: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The events outside batches (with their epoch and phase, not the batch: a rank that did
    not raise meets the others at the next agreement point, which may be in the next batch)
    and the optimizer steps: what every rank must agree on."""
    return [
        (t[0], t[1], t[3]) if len(t) > 1 else t for t in trace if t[0] == "step" or t[0] in OUTSIDE_BATCHES
    ]


@pytest.mark.parametrize("case", ddp_worker.trace_cases(), ids="-".join)
def test_one_process_and_each_rank_run_the_same_events(
    ranks: list[dict[str, Any]], case: tuple[str, str, str]
) -> None:
    alone = ddp_worker.traced_run(*case, target=0)  # this process: rank 0 of 1
    r0, r1 = ranks[0]["traces"][case], ranks[1]["traces"][case]
    event, what, _ = case
    if what == "skip" and event in ("startStep", "startZeroGrad"):
        # skipping the step on one rank only would split the models: both ranks stop at the
        # next exchange, saying why
        for r in (r0, r1):
            assert r["outcome"].startswith("OutOfStepError: the ranks took different optimizer steps")
        assert alone["outcome"] == ""
        return
    # the rank that raised sees exactly what one process sees, and ends the same way
    assert r1["trace"] == alone["trace"]
    assert r1["outcome"] == alone["outcome"]
    # the other rank takes the same steps, epochs and run ends (it may have run a few batch
    # events more before the agreement point, and a cancel after the step or in validation is
    # the raising rank's alone); an error is named with the rank that raised it
    assert _flow(r0["trace"]) == _flow(alone["trace"])
    if what == "error" or (what, event) == ("batch", "endBatch"):  # no batch left to cancel: an error
        assert r0["outcome"].startswith("RuntimeError: rank 1 failed")
        assert r1["outcome"].split(":")[0] in r0["outcome"]
    elif alone["outcome"]:  # a cancel that leaves the run (a batch cancel outside a batch)
        assert r0["outcome"] == alone["outcome"] + " (on rank 1)"
    else:
        assert r0["outcome"] == ""


def test_a_hugging_face_lm_on_mapping_batches_trains_like_one_process(ranks: list[dict[str, Any]]) -> None:
    if "hf" not in ranks[0]:
        pytest.skip("needs transformers")
    r0, r1 = ranks[0]["hf"], ranks[1]["hf"]
    steps = hf_models.DDP_TRAIN // 2
    assert r0["model_type"] == r1["model_type"] == "LlamaForCausalLM"  # unwrapped after the run
    # rank 1 started from other weights: DDP sent rank 0's
    assert not torch.equal(r0["initial"]["lm_head.weight"], r1["initial"]["lm_head.weight"])
    # rank r ran the r-th of every 2 mapping batches, as the loader gave them
    batches = hf_models.lm_data(hf_models.DDP_TRAIN, hf_models.DDP_VALID).train
    for rank, r in enumerate((r0, r1)):
        assert r["batches"] == steps + hf_models.DDP_VALID // 2
        assert len(r["seen"]) == steps
        for seen, batch in zip(r["seen"], batches[rank::2], strict=True):
            assert seen.keys() == batch.keys()
            assert all(torch.equal(seen[k], batch[k]) for k in batch)
    # the same weights on both ranks: those of one process on the global batches
    ref = hf_models.hf_ddp_reference(r0, r1)
    for key, value in r0["final"].items():
        assert torch.equal(value, r1["final"][key]), key
        assert not torch.equal(value, r0["initial"][key]), key  # it trained
        torch.testing.assert_close(value, ref["final"][key], rtol=1e-4, atol=1e-6)
    # each step's loss (the output's own, no lossF) is the mean over ranks: the global batch's
    assert r0["train"] == r1["train"]
    torch.testing.assert_close(torch.tensor(r0["train"]), torch.tensor(ref["train"]), rtol=1e-5, atol=1e-6)
    assert r0["valid"] == r1["valid"]
    assert r0["valid"] == pytest.approx([ref["valid"]], rel=1e-5)
    # HookModule: the decoder layers by the plain model's paths, one row per batch of the rank's
    # own, equal to plain hooks on the rank's half of the global batch
    for rank, r in enumerate((r0, r1)):
        assert r["hook_names"] == hf_models.LAYER_PATHS
        assert r["hook_types"] == [hf_models.LAYER] * len(hf_models.LAYER_PATHS)
        for layer, means in enumerate(r["hook_forward_means"]):
            assert r["hook_backward_means"][layer].shape == means.shape == (steps,)
            expected = torch.tensor(ref["forward_means"][rank][layer], dtype=means.dtype)
            torch.testing.assert_close(means, expected, rtol=1e-4, atol=1e-7)


# ---- riding on the gradients' all-reduce: rank 0 ran backward when rank 1 stopped -----------------


def grouped_reference(
    initial: dict[str, torch.Tensor], groups: list[list[torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """One process from ``initial``: a step for each group of global batches, on the mean of
    their gradients (``learner``'s SGD with momentum)."""
    model = ddp_worker.Net()
    model.load_state_dict(initial)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for group in groups:
        for xb in group:
            (ddp_worker.loss_f(model(xb), torch.sin(2 * xb)) / len(group)).backward()
        opt.step()
        opt.zero_grad()
    return model.state_dict()


def same_grads(a: list[torch.Tensor | None], b: list[torch.Tensor | None]) -> bool:
    return all(
        (x is None and y is None) or (x is not None and y is not None and torch.equal(x, y))
        for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("case", ["cancel", "skip", "own_ddp"])
def test_a_batch_stopped_on_one_rank_after_the_others_ran_backward_trains_nothing(
    ranks: list[dict[str, Any]], case: str
) -> None:
    r0, r1 = ranks[0]["riding"][case], ranks[1]["riding"][case]
    assert r0["raised"] is None and r1["raised"] is None
    # from the batch after DDP's bucket rebuild on, the agreement rode on the gradients
    # (not with a DDP the user made: it keeps the exchange before backward)
    riding = case != "own_ddp"
    assert r0["riding"] == r1["riding"] == [False] + [riding] * 7
    # batch 4 left every rank's weights and gradients (None after zero_grad) as they were
    for r in (r0, r1):
        (before, grads_before), (after, grads_after) = r["seen"]["start"], r["seen"]["end0"]
        assert same_weights(before, after)
        assert all(g is None for g in grads_before) and all(g is None for g in grads_after)
    # and both trained as one process on the other global batches
    steps = [torch.cat([a, b]) for a, b in zip(r0["xbs"], r1["xbs"], strict=True)]
    expected = grouped_reference(r0["initial"], [[xb] for i, xb in enumerate(steps) if i != 4])
    for key, value in expected.items():
        assert torch.equal(r0["final"][key], r1["final"][key]), key
        torch.testing.assert_close(r0["final"][key], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["loss", "forward"])
def test_an_error_on_one_rank_after_the_others_ran_backward_stops_all_untouched(
    ranks: list[dict[str, Any]], case: str
) -> None:
    r0, r1 = ranks[0]["riding"][case], ranks[1]["riding"][case]
    assert r1["raised"] == f"ValueError: bad {case} on rank 1"
    assert r0["raised"] == (
        "RuntimeError: rank 1 failed in the batch (before backward) (epoch 0, batch 4) with "
        f"ValueError: bad {case} on rank 1; every rank stops"
    )
    for r in (r0, r1):
        assert r["riding"][1:4] == [True] * 3
        before, grads = r["seen"]["start"]
        assert same_weights(r["final"], before)
        assert all(g is None for g in grads) and all(g is None for g in r["grads"])


def test_a_cancel_inside_an_accumulation_group_keeps_the_groups_gradients(
    ranks: list[dict[str, Any]],
) -> None:
    r0, r1 = ranks[0]["riding"]["accumulated"], ranks[1]["riding"]["accumulated"]
    for r in (r0, r1):
        assert r["raised"] is None and r["riding"][5]
        # batch 5 cancelled after batch 4 accumulated: its gradients are batch 4's still
        (_, grads_4), (_, grads_5) = r["seen"]["end-1"], r["seen"]["end0"]
        assert all(g is not None for g in grads_4) and same_grads(grads_4, grads_5)
    # groups of 2: (0, 1), (2, 3), (4, 6) with batch 5 cancelled, and 7 stepped alone
    steps = [torch.cat([a, b]) for a, b in zip(r0["xbs"], r1["xbs"], strict=True)]
    groups = [steps[0:2], steps[2:4], [steps[4], steps[6]], [steps[7]]]
    expected = grouped_reference(r0["initial"], groups)
    for key, value in expected.items():
        assert torch.equal(r0["final"][key], r1["final"][key]), key
        torch.testing.assert_close(r0["final"][key], value, rtol=1e-5, atol=1e-6)


def test_ranks_out_of_step_while_one_rides_on_the_gradients_both_raise(ranks: list[dict[str, Any]]) -> None:
    for rank in ranks:
        found = rank["riding_out_of_step"]
        assert found["type"] == "OutOfStepError"
        assert "rank 0: at 'average' (epoch 0, batch 3)" in found["message"]
        assert "rank 1: at 'startBackward' (epoch 0, batch 4)" in found["message"]
        assert all(g is None for g in found["grads"])  # rank 1's backward was put back


def test_each_runs_ddp_is_freed_and_a_run_after_a_last_batch_cancel_trains(
    ranks: list[dict[str, Any]],
) -> None:
    # the rider's comm hook held its DDP in a cycle: every DDP stayed alive with its autograd
    # hooks, and after a cancel between forward and backward the next run hung in them
    for rank in ranks:
        assert rank["released"]["alive"] == [False, False]
        assert len(rank["released"]["train"]) > 0
    for key, value in ranks[0]["released"]["final"].items():
        torch.testing.assert_close(ranks[1]["released"]["final"][key], value)


def test_a_parameter_unused_while_riding_stops_every_rank_before_the_step(
    ranks: list[dict[str, Any]],
) -> None:
    # DDP's backward then makes no all-reduce: taken for no_sync, rank-local gradients were stepped
    for rank in ranks:
        found = rank["riding_unused"]
        assert found["raised"] is not None and "no all-reduce" in found["raised"]
        assert any("find_unused_parameters" in note for note in found["notes"])
        assert found["riding"][1:4] == [True] * 3
    for key, value in ranks[0]["riding_unused"]["final"].items():
        torch.testing.assert_close(ranks[1]["riding_unused"]["final"][key], value, rtol=0, atol=0)


def test_a_batch_cancelled_after_a_backward_that_was_undone_records_no_gradients(
    ranks: list[dict[str, Any]],
) -> None:
    # riding, rank 0 ran batch 4's backward before rank 1's cancel was known; it was undone, so
    # its HookModule row holds no backward statistics, as rank 1's (whose loss was cancelled)
    for rank in ranks:
        for means in rank["riding_hooks"]["backward"]:
            assert len(means) == 8
            assert means[4].isnan() and means[[3, 5]].isfinite().all()
        for means in rank["riding_hooks"]["forward"]:
            assert means[[3, 4, 5]].isfinite().all()
