"""FSDP2 (``l.strategy = "fsdp"``): 2 and 4 CPU processes (gloo) launched by torchrun, against
one process on the same global batches. ``fsdp_worker.py`` runs every scenario in one launch a
world size and saves what each rank saw; a hang fails the test (timeout), it does not stall CI.
"""

from __future__ import annotations

import re
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

WORKER = Path(__file__).with_name("fsdp_worker.py")
sys.path.insert(0, str(WORKER.parent))

import fsdp_worker  # noqa: E402
import hf_models  # noqa: E402

from .helpers import torchrun  # noqa: E402


def launch(out: Path, world: int, **extra: str) -> list[dict[str, Any]]:
    torchrun(WORKER, [str(out)], world, timeout=400, **extra)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]


@pytest.fixture(scope="module", params=[2, 4], ids=["2 ranks", "4 ranks"])
def ranks(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return launch(tmp_path_factory.mktemp(f"fsdp{request.param}"), request.param)


def scenario(ranks: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    found = [r[name] for r in ranks]
    for r, result in enumerate(found):
        assert "error" not in result, f"rank {r} failed in {name!r}:\n{result['error']}"
    return found


def reference(found: list[dict[str, Any]], skipped: tuple[int, ...] = ()) -> dict[str, Any]:
    """One process (no strategy) on the global batches of the run: each step's batches of
    every rank, concatenated, from rank 0's initial weights (the steps ``skipped`` left out)."""
    model = hf_models.tiny_lm()
    model.load_state_dict(found[0]["initial"])
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=fsdp_worker.LR)
    losses = []
    for i, step in enumerate(zip(*(r["seen"] for r in found), strict=True)):
        if i in skipped:
            continue
        batch = {k: torch.cat([b[k] for b in step]) for k in step[0]}
        loss = model(**batch).loss
        losses.append(loss.item())
        loss.backward()
        opt.step()
        opt.zero_grad()
    return {"final": hf_models.weights(model), "train": losses}


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("name", ["sharded", "checkpointed"])
def test_a_llama_sharded_per_layer_trains_like_one_process(ranks: list[dict[str, Any]], name: str) -> None:
    found = scenario(ranks, name)
    world = len(found)
    assert all(len(r["seen"]) == 2 * fsdp_worker.TRAIN // world for r in found)  # every rank its share
    ref = reference(found)
    for r in found:
        assert_close(r["final"], ref["final"])
    torch.testing.assert_close(
        torch.tensor(found[0]["train"]), torch.tensor(ref["train"]), rtol=1e-4, atol=1e-5
    )
    initial = found[0]["initial"]
    assert any(not torch.equal(initial[k], ref["final"][k]) for k in initial)  # it trained


def test_the_model_is_sharded_in_place_with_the_users_names(ranks: list[dict[str, Any]]) -> None:
    for r in scenario(ranks, "sharded"):
        assert r["model_type"] == "FSDPLlamaForCausalLM"  # fully_shard's class, a subclass of the user's
        assert r["sharded"] == ["DTensor"]
        assert r["same_opt"]  # l.opt was moved onto the shards, not replaced
        assert r["hook_names"] == hf_models.LAYER_PATHS
        assert r["hook_types"] == ["LlamaDecoderLayer"] * 2
        assert "FSDP" not in r["tree"] and "LlamaDecoderLayer" in r["tree"]
        assert set(r["final"]) == set(hf_models.tiny_lm().state_dict())  # checkpoint keys unchanged


def test_hook_module_records_each_ranks_own_activations(ranks: list[dict[str, Any]]) -> None:
    """Each rank's HookModule rows are its own batches', with or without checkpointing."""
    plain, checkpointed = scenario(ranks, "sharded"), scenario(ranks, "checkpointed")
    for a, b in zip(plain, checkpointed, strict=True):
        for fa, fb in zip(a["hook_forward_means"], b["hook_forward_means"], strict=True):
            assert len(fa) == 2 * fsdp_worker.TRAIN // len(plain) and torch.isfinite(fa).all()
            torch.testing.assert_close(fa, fb)
        for ga, gb in zip(a["hook_backward_means"], b["hook_backward_means"], strict=True):
            assert torch.isfinite(ga).all()
            torch.testing.assert_close(ga, gb)
    assert not torch.equal(plain[0]["hook_forward_means"][0], plain[1]["hook_forward_means"][0])


def test_the_strategy_is_checked() -> None:
    l = k1lib.Learner()
    with pytest.raises(
        ValueError, match=r"l.strategy must be one of 'ddp', 'fsdp', got 'fsdp2'.*did you mean 'fsdp'"
    ):
        l.strategy = "fsdp2"
    assert l.strategy == "ddp"


def test_fsdp_in_one_process_trains_the_plain_model() -> None:
    l = hf_models.lm_learner()
    l.strategy = "fsdp"
    l.css = "LlamaDecoderLayer: shard"
    before = [p for p in l.model.parameters()]
    l.run(1)
    assert type(l.model).__name__ == "LlamaForCausalLM"
    assert all(a is b for a, b in zip(before, l.model.parameters(), strict=True))


def test_a_cancel_on_one_rank_skips_the_step_on_every_rank(ranks: list[dict[str, Any]]) -> None:
    found = scenario(ranks, "cancelled")
    ref = reference(found, skipped=(1,))  # rank 1 cancelled batch 1 of epoch 0 before backward
    for r in found:
        assert_close(r["final"], ref["final"])
    assert not torch.equal(found[0]["final"]["lm_head.weight"], reference(found)["final"]["lm_head.weight"])


def test_an_error_on_one_rank_stops_every_rank_naming_it(ranks: list[dict[str, Any]]) -> None:
    for rank, r in enumerate(scenario(ranks, "failed")):
        if rank == 1:  # its own error
            assert r["raised"] == "ValueError: boom on rank 1"
        else:
            assert r["raised"] == (
                "RuntimeError: rank 1 failed in the batch (before backward) (epoch 0, batch 1) with "
                "ValueError: boom on rank 1; every rank stops"
            )


def test_a_model_built_on_meta_is_materialised_sharded_and_trains(ranks: list[dict[str, Any]]) -> None:
    found = scenario(ranks, "meta")
    world = len(found)
    assert sum(r["local"] for r in found) == found[0]["total"]  # each value on one rank only
    for r in found:
        assert not r["meta"]
        assert r["local"] < r["total"] / world * 1.5
        assert all(torch.isfinite(torch.tensor(r["train"])))
        assert_close(r["final"], found[0]["final"])  # one model
    losses = found[0]["train"]
    assert min(losses[-2:]) < losses[0]


def test_a_model_on_meta_without_an_initialisation_is_refused_unchanged(ranks: list[dict[str, Any]]) -> None:
    for r in scenario(ranks, "meta_refused"):
        assert r["raised"] is not None and not r["sharded"]
        assert "model.norm (LlamaRMSNorm)" in r["raised"] and "l.fsdpInit" in r["raised"]


def test_fsdp_options_are_checked_and_mixed_precision_computes_in_bf16(ranks: list[dict[str, Any]]) -> None:
    for r in scenario(ranks, "options"):
        assert "'mp_plicy' is not an option of fully_shard (did you mean 'mp_policy'?)" in r["refused"]
        assert r["unchanged"]
        assert r["dtypes"] == ["torch.bfloat16"]  # the forward ran in bf16
        assert r["param_dtype"] == "torch.float32"  # the sharded parameters stay fp32
        assert all(torch.isfinite(torch.tensor(r["train"])))


def test_param_finder_runs_on_the_sharded_model_and_loss_landscape_says_what_to_do(
    ranks: list[dict[str, Any]],
) -> None:
    found = scenario(ranks, "finders")
    for r in found:
        assert r["unchanged"]  # the model is put back after the range test
        assert r["suggestion"] == found[0]["suggestion"] and r["losses"] == found[0]["losses"]
        assert len(r["losses"]) > 3
        assert "LossLandscape needs the whole model in one process" in r["refused"]
        assert "k1lib.consolidate(folder, 'model.pt')" in r["refused"]


def test_grad_clipping_and_accumulation_step_like_one_process(ranks: list[dict[str, Any]]) -> None:
    """The clipping norm is the full gradient's (summed over the shards), and an accumulation
    group's last incomplete step at the end of an epoch is taken as in one process."""
    found = scenario(ranks, "clipped")
    per_epoch = len(found[0]["seen"]) // 2
    steps = [
        (torch.cat([r["seen"][i][0] for r in found]), torch.cat([r["seen"][i][1] for r in found]))
        for i in range(len(found[0]["seen"]))
    ]
    model = fsdp_worker.Net()
    model.load_state_dict(found[0]["initial"])
    l = k1lib.Learner()
    l.model = model
    l.opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    l.lossF = lambda y, yb: ((y - yb) ** 2).mean()
    l.cbs = k1lib.Callbacks().withLoss().withGradClipping(0.05).withGradAccumulation(2)
    for epoch in range(2):
        l.data = k1lib.data.Data(steps[epoch * per_epoch : (epoch + 1) * per_epoch], [])
        l.run(1)
    for r in found:
        assert r["norm"] == pytest.approx(float(l.GradClipping.norm), rel=1e-4)
        assert_close(r["final"], {k: v.detach() for k, v in model.state_dict().items()})


def test_a_sharded_model_runs_again_and_keeps_a_freeze_made_between_runs(ranks: list[dict[str, Any]]) -> None:
    """FSDP2 leaves the root unit gathered after validation or predict: the learner puts the
    shards back, so l.opt holds the model's parameters in every later run."""
    for r in scenario(ranks, "edges"):
        assert r["second run"] is None and r["after predict"] is None and r["finder after run"] is None
        assert r["frozen head kept"]
        assert r["css change warned"]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("a ModuleList unit", "fully_shard refuses to shard 'blocks' with l.fsdpKwargs = {}: ValueError: "),
        (
            "a bad option value",
            "fully_shard refuses to shard 'blocks.0' with l.fsdpKwargs = {'reshard_after_forward'",
        ),
        ("tied across units", "the parameter 'post.weight' is also 'pre.weight' (tied), in two shard units"),
        ("offload without an accelerator", "this machine has no accelerator: leave it out"),
    ],
)
def test_what_fully_shard_refuses_is_refused_before_the_model_changes(
    ranks: list[dict[str, Any]], case: str, message: str
) -> None:
    if case == "offload without an accelerator" and torch.accelerator.is_available():
        pytest.skip("this machine has an accelerator: CPU offload is allowed")
    for r in scenario(ranks, "edges"):
        raised, untouched = r[case]
        assert raised is not None and message in raised and "ValueError" in raised
        assert untouched  # not sharded, and l.opt holds the model's own parameters
        assert r[case + ", fixed"] is None  # the same learner trains once the input is fixed


def test_meta_initialisation_refusals_and_failures(ranks: list[dict[str, Any]]) -> None:
    found = scenario(ranks, "edges")
    for rank, r in enumerate(found):
        raised, untouched = r["partly on meta"]
        assert "the model is partly on the meta device" in raised and ": head." in raised and untouched
        assert r["meta shards differ"]  # ranks seeded alike draw different shards
        if rank == 1:
            assert "FileNotFoundError: weights.bin on rank 1" in r["init failing on one rank"]
        else:
            assert "rank 1 failed sharding l.model" in r["init failing on one rank"]
        assert "sharding or initialising it failed on some rank" in r["init failed, run again"]


def test_a_run_saved_on_2_ranks_resumes_on_4_and_on_1_as_if_uninterrupted(tmp_path: Path) -> None:
    """A sharded checkpoint written by 2 ranks after one epoch, loaded on 4 ranks (DCP
    reshards; the model is sharded by l.load) and in one process into the plain model: the next
    epoch on the same global batches ends where the 2-rank run that went on ends."""
    shared = str(tmp_path)
    (tmp_path / "two").mkdir()
    saved = launch(tmp_path / "two", 2, FSDP_ONLY="resume_save", FSDP_RESUME=shared)
    uninterrupted = scenario(saved, "resume_save")[0]["final"]
    (tmp_path / "four").mkdir()
    resumed = scenario(
        launch(tmp_path / "four", 4, FSDP_ONLY="resume_load", FSDP_RESUME=shared), "resume_load"
    )
    for r in resumed:
        assert r["sharded before the run"]
        assert_close(r["final"], uninterrupted)
    alone = fsdp_worker.resume_learner(1)
    alone.load(tmp_path / "ck")
    alone.run(1)
    assert_close({k: v.detach() for k, v in alone.model.state_dict().items()}, uninterrupted)
    model = fsdp_worker.Net()
    k1lib.consolidate(tmp_path / "ck", tmp_path / "weights.pt")  # the first epoch's weights, one file
    model.load_state_dict(torch.load(tmp_path / "weights.pt", weights_only=True))
    assert not torch.equal(model.head.weight, alone.model.head.weight)


def test_best_checkpoint_restores_the_best_epoch_of_a_sharded_model(ranks: list[dict[str, Any]]) -> None:
    for r in scenario(ranks, "best"):
        assert r["best epoch"] == 1  # epochs 2 and 3 are made worse
        assert r["restored"] and not r["last"]


def test_ranks_out_of_step_at_hook_params_combine_raise_instead_of_hanging(
    ranks: list[dict[str, Any]],
) -> None:
    """HookParam's rows of sharded parameters are put together at each epoch's end, a
    collective: a rank that ran fewer epochs meets the others' next exchange there first."""
    for r in scenario(ranks, "out_of_step"):
        assert r["raised"] is not None and r["raised"].startswith("OutOfStepError: the ranks are out of step")
        assert re.search(r"rank 0: at 'combine' \(epoch 0, batch \d+\)", r["raised"])
        assert "rank 1: at 'startEpoch' (epoch 1, batch 0)" in r["raised"]
