"""Batches as users have them (``k1lib/_batch.py``): ``(xb, yb)``, ``(inputs_dict, yb)`` and one
mapping that is both (a Hugging Face collator's batch), with the model called on a mapping's
entries as keyword arguments and, without ``lossF``, the output's own ``.loss``.

The Hugging Face model is a real ``LlamaForCausalLM`` built from a tiny config with random
weights (``hf_models.py``): nothing is downloaded. The callbacks that read batches (HookModule,
Device, DType, ParamFinder, LossLandscape, checkpoints, ``record``) are checked on them too.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn.functional import cross_entropy

import k1lib

from .helpers import assert_same
from .hf_models import CSS, LAYER, LAYER_PATHS, lm_learner, tiny_lm, weights


@pytest.fixture
def hf() -> None:
    """The tests of real Hugging Face models need transformers (the dev extra has it)."""
    pytest.importorskip("transformers")


def shifted_ce(y: Any, b: Any) -> Tensor:
    """The causal LM loss read from the batch mapping: token t predicts label t + 1."""
    return cross_entropy(y.logits[:, :-1].flatten(0, 1), b["labels"][:, 1:].flatten(), ignore_index=-100)


class Record(k1lib.Callback):
    """Calls ``f(learner)`` at ``event`` and keeps what it returns in ``seen``."""

    def __init__(self, event: str, f: Callable[[Any], Any]) -> None:
        super().__init__()
        self.seen: list[Any] = []
        setattr(self, event, lambda: self.seen.append(f(self.learner)))


# ---- small models that take keyword arguments ------------------------------------------------------


@dataclass
class Out:
    """An output carrying its loss, as a Hugging Face ``ModelOutput`` does (None without labels)."""

    logits: Tensor
    loss: Tensor | None = None


class Pool(nn.Module):
    """Class scores of the masked mean of a sequence of feature vectors. Keyword-only inputs:
    called positionally it fails."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 4)

    def forward(self, *, x: Tensor, mask: Tensor) -> Tensor:
        h = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        out: Tensor = self.proj(h)
        return out


class Tagger(Pool):
    """``Pool`` that also takes the labels and returns ``Out`` with its own loss."""

    def forward(self, *, x: Tensor, mask: Tensor, labels: Tensor | None = None) -> Out:  # type: ignore[override]
        logits = super().forward(x=x, mask=mask)
        return Out(logits, None if labels is None else cross_entropy(logits, labels))


def feature_batches(n: int, seed: int, mapping: bool) -> list[Any]:
    """``n`` batches of 8 sequences of 5 feature vectors, a float mask (each row keeps its first
    2 to 5 steps) and int64 class labels that a linear map of the masked mean predicts: one
    mapping ``{"x", "mask", "labels"}`` a batch, or ``({"x", "mask"}, labels)``."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.tensor([[2.0, -1.0, 0.0, 1.0], [0.0, 2.0, -2.0, 1.0], [1.0, 1.0, 2.0, -2.0]])
    out: list[Any] = []
    for _ in range(n):
        x = torch.randn(8, 5, 3, generator=g)
        mask = (torch.arange(5) < torch.randint(2, 6, (8, 1), generator=g)).float()
        labels = (((x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)) @ truth).argmax(1)
        out.append({"x": x, "mask": mask, "labels": labels} if mapping else ({"x": x, "mask": mask}, labels))
    return out


def kwargs_learner(mapping: bool, train: int = 4, valid: int = 2) -> Any:
    """``Tagger`` on one-mapping batches without lossF (mapping), or ``Pool`` on
    ``(inputs_dict, labels)`` with cross entropy as lossF."""
    torch.manual_seed(0)
    l = k1lib.Learner()
    l.model = Tagger() if mapping else Pool()
    l.data = k1lib.data.Data(feature_batches(train, 0, mapping), feature_batches(valid, 1, mapping))
    l.opt = torch.optim.Adam(l.model.parameters(), lr=0.1)
    l.lossF = None if mapping else cross_entropy
    l.cbs.remove("ProgressBar")
    l.cbs.remove("Autosave")
    return l


def direct_loss(l: Any, model: nn.Module, batch: Any) -> Tensor:
    """What the loss of ``batch`` is, computed by hand: ``lossF(model(**xb), yb)``, or the
    output's own loss for one mapping."""
    if isinstance(batch, dict):
        out = model(**batch)
        return out.loss if l.lossF is None else l.lossF(out, batch)
    xb, yb = batch
    return l.lossF(model(**xb), yb)


FORMS = [pytest.param(True, id="one-mapping"), pytest.param(False, id="inputs-dict-and-labels")]


# ---- a Hugging Face causal LM on collator batches ---------------------------------------------------


def layer_means(model: nn.Module, batch: dict[str, Tensor]) -> list[float]:
    """The mean of each decoder layer's output on ``batch``, taken with plain forward hooks."""
    found: list[float] = []

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        out = output if isinstance(output, Tensor) else output[0]
        found.append(out.detach().double().mean().item())

    handles = [model.get_submodule(p).register_forward_hook(hook) for p in LAYER_PATHS]
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return found


def test_a_causal_lm_trains_on_collator_batches_with_its_own_loss(hf: None) -> None:
    l = lm_learner()
    l.css = CSS
    before = weights(l.model)
    first = l.data.train[0]
    with torch.no_grad():
        expected_loss = tiny_lm()(**first).loss.item()  # the same initial weights
    expected_means = layer_means(tiny_lm(), first)
    l.run(3)

    assert type(l.model).__name__ == "LlamaForCausalLM"
    # one loss a batch, the first being the model's own loss on the first batch
    assert len(l.Loss.train) == 3 * 4 and len(l.Loss.valid) == 3 * 2
    assert l.Loss.train[0] == pytest.approx(expected_loss, rel=1e-5)
    assert l.Loss.epoch.train[-1] < l.Loss.epoch.train[0] - 0.5
    assert l.Loss.epoch.valid[-1] < l.Loss.epoch.valid[0] - 0.5
    # every parameter took steps
    for k, v in weights(l.model).items():
        assert not torch.equal(v, before[k]), k
    # HookModule: the decoder layers by their plain paths, one row a training batch
    hooks = l.HookModule
    assert hooks.names == LAYER_PATHS
    assert hooks.types == [LAYER, LAYER]
    for i in range(len(LAYER_PATHS)):
        for stats in (hooks[i].forward, hooks[i].backward):
            for name in ("means", "stds"):
                values = getattr(stats, name)
                assert values.shape == (3 * 4,), name
                assert torch.isfinite(values).all(), name
        assert hooks[i].backward.stds.min() > 0  # gradients reached the layers' outputs
        assert hooks[i].forward.means[0].item() == pytest.approx(expected_means[i], rel=1e-4, abs=1e-7)


def test_a_loss_function_reading_the_mapping_is_used_instead_of_the_outputs_own(hf: None) -> None:
    l = lm_learner()
    seen: list[tuple[Any, Any]] = []

    def lossF(y: Any, b: Any) -> Tensor:
        seen.append((y, b))
        return 2 * shifted_ce(y, b)  # twice: tells it apart from y.loss

    l.lossF = lossF
    l.css = CSS
    first = l.data.train[0]
    with torch.no_grad():
        own = tiny_lm()(**first).loss.item()
    l.run(1)

    # called once a batch with the batch mapping itself as yb, training then validation
    batches = [*l.data.train, *l.data.valid]
    assert len(seen) == len(batches)
    for (y, b), batch in zip(seen, batches, strict=True):
        assert b is batch
        assert y.logits.shape == (4, 12, 64)
    assert l.Loss.train[0] == pytest.approx(2 * own, rel=1e-5)
    assert len(l.Loss.train) == 4
    assert l.HookModule.names == LAYER_PATHS
    assert [len(l.HookModule[i].backward.means) for i in range(2)] == [4, 4]


def test_inputs_dict_and_labels_call_the_model_with_keyword_arguments() -> None:
    l = kwargs_learner(mapping=False)
    l.cbs.append(Record("startPass", lambda l: (l.xb, l.yb)), "Seen")
    model0 = copy.deepcopy(l.model)
    before = weights(l.model)
    l.run(5)

    batches = [*l.data.train, *l.data.valid]
    assert len(l.Seen.seen) == 5 * len(batches)
    for (xb, yb), (inputs, labels) in zip(l.Seen.seen, batches * 5, strict=True):
        assert xb is inputs and yb is labels  # not merged, not copied
    with torch.no_grad():
        expected = direct_loss(l, model0, l.data.train[0]).item()
    assert l.Loss.train[0] == pytest.approx(expected, rel=1e-6)
    assert l.Loss.epoch.train[-1] < 0.6 * l.Loss.epoch.train[0]
    assert l.Loss.epoch.valid[-1] < 0.7 * l.Loss.epoch.valid[0]
    for k, v in weights(l.model).items():
        assert not torch.equal(v, before[k]), k


def test_one_mapping_without_loss_function_uses_the_outputs_loss_on_a_custom_model() -> None:
    l = kwargs_learner(mapping=True)
    model0 = copy.deepcopy(l.model)
    l.cbs.append(Record("startPass", lambda l: l.xb is l.yb), "Same")
    l.run(5)
    assert l.Same.seen == [True] * (5 * 6)
    with torch.no_grad():
        expected = direct_loss(l, model0, l.data.train[0]).item()
    assert l.Loss.train[0] == pytest.approx(expected, rel=1e-6)
    assert l.Loss.epoch.train[-1] < 0.6 * l.Loss.epoch.train[0]
    assert l.Loss.epoch.valid[-1] < 0.7 * l.Loss.epoch.valid[0]


@pytest.mark.parametrize("mapping", FORMS)
def test_a_torch_dataloader_collating_samples_gives_the_same_batches(mapping: bool) -> None:
    """``default_collate`` makes one dict of a dataset of dicts (``datasets`` with the torch
    format) and a list ``[inputs_dict, labels]`` of a dataset of pairs: the same training as
    from the batches themselves."""
    batches = feature_batches(4, 0, mapping)
    samples: list[Any] = []
    for b in batches:
        for i in range(8):
            if mapping:
                samples.append({k: v[i] for k, v in b.items()})
            else:
                samples.append(({k: v[i] for k, v in b[0].items()}, b[1][i]))
    runs = []
    for train in (batches, torch.utils.data.DataLoader(samples, batch_size=8)):
        l = kwargs_learner(mapping)
        l.data = k1lib.data.Data(train, [])
        l.cbs.append(Record("startPass", lambda l: (type(l.xb), type(l.yb), l.xb is l.yb)), "Seen")
        l.run(2)
        runs.append((l.Seen.seen, list(l.Loss.train), weights(l.model)))
    (direct_seen, direct_losses, direct_weights), (seen, losses, final) = runs
    assert seen == direct_seen == [(dict, dict, True) if mapping else (dict, Tensor, False)] * 8
    assert losses == pytest.approx(direct_losses, rel=1e-6)
    for k, v in final.items():
        torch.testing.assert_close(v, direct_weights[k])


# ---- mistakes: clear errors at the first batch, nothing trained --------------------------------------


class Events(k1lib.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []
        for event in ("startRun", "startBatch", "startPass", "endPass", "startStep", "endRun"):
            setattr(self, event, lambda event=event: self.events.append(event))


def assert_raises_untrained(l: Any, error: type[Exception], match: str) -> list[str]:
    """``l.run(1)`` raises ``error`` matching ``match``; the weights and optimizer are as before;
    returns the events that fired."""
    l.cbs.append(Events())
    before = weights(l.model)
    with pytest.raises(error, match=match):
        l.run(1)
    assert_same(before, weights(l.model), "weights")
    assert not l.opt.state  # no step was taken
    assert list(l.Loss.train) == []
    assert "startStep" not in l.Events.events
    assert l.Events.events[-1] == "endRun"
    return list(l.Events.events)


def test_an_output_without_loss_and_no_loss_function_names_l_lossF() -> None:
    l = kwargs_learner(mapping=False)
    l.lossF = None  # Pool returns a bare tensor: nothing to train on
    events = assert_raises_untrained(
        l, RuntimeError, r"l\.lossF is not set and the model's output \(Tensor\) has no \.loss; set l\.lossF"
    )
    assert events == ["startRun", "startBatch", "startPass", "endPass", "endRun"]


def test_a_custom_output_with_loss_none_says_to_give_labels() -> None:
    l = kwargs_learner(mapping=True)
    for split in (l.data.train, l.data.valid):
        for batch in split:
            del batch["labels"]
    assert_raises_untrained(l, RuntimeError, r"model's output \(Out\) has a loss of None \(give it labels\)")


def test_a_hugging_face_output_without_labels_says_to_give_labels(hf: None) -> None:
    l = lm_learner()
    for batch in [*l.data.train, *l.data.valid]:
        del batch["labels"]
    assert_raises_untrained(
        l,
        RuntimeError,
        r"l\.lossF is not set and the model's output \(CausalLMOutputWithPast\) has a loss of None",
    )


@pytest.mark.parametrize(
    ("batch", "described"),
    [
        pytest.param((torch.ones(4, 3), torch.ones(4, 1), torch.ones(4)), "a tuple of 3 items", id="triple"),
        pytest.param([torch.ones(4, 3)], "a list of 1 item", id="list-of-one"),
        pytest.param(torch.ones(4, 3), r"a tensor of shape \(4, 3\)", id="tensor"),
        # a bare tensor of 2 samples is no pair either: it must not become xb = row 0, yb = row 1
        pytest.param(torch.ones(2, 3), r"a tensor of shape \(2, 3\)", id="tensor-of-2-rows"),
    ],
)
def test_a_batch_that_is_neither_a_pair_nor_a_mapping_is_a_type_error(batch: Any, described: str) -> None:
    torch.manual_seed(0)
    l = k1lib.Learner()
    l.model = nn.Linear(3, 1)
    l.data = k1lib.data.Data([batch, batch], [batch])
    l.opt = torch.optim.SGD(l.model.parameters(), lr=0.1)
    l.lossF = lambda y, yb: ((y - yb) ** 2).mean()
    l.cbs.remove("ProgressBar")
    l.cbs.remove("Autosave")
    events = assert_raises_untrained(
        l,
        TypeError,
        r"a batch must be a pair \(xb, yb\) or a mapping of the model's keyword arguments; "
        rf"the loader gave {described}$",
    )
    assert events == ["startRun", "endRun"]  # raised on fetching the first batch


# ---- callbacks that shape batches ---------------------------------------------------------------------


class Encoding(dict):  # type: ignore[type-arg]
    """A dict subclass standing in for a tokenizer's ``BatchEncoding``-like mapping."""


def seen_dtypes(l: Any) -> dict[str, Any]:
    xb, yb = l.xb, l.yb
    return {
        "same": xb is yb,
        "type": type(xb),
        "dtypes": {k: v.dtype for k, v in xb.items()},
        "yb": yb.dtype if isinstance(yb, Tensor) else None,
        "device": {v.device.type for v in xb.values()},
    }


def batch_encoding() -> type:
    return pytest.importorskip("transformers").BatchEncoding  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "kind", [dict, Encoding, batch_encoding], ids=["dict", "dict-subclass", "BatchEncoding"]
)
def test_device_and_dtype_cast_the_floats_of_one_mapping_keeping_it_both_xb_and_yb(kind: Any) -> None:
    if kind is batch_encoding:  # a tokenizer's mapping: a UserDict, not a dict
        kind = batch_encoding()
    l = kwargs_learner(mapping=True)
    l.data = k1lib.data.Data([kind(b) for b in l.data.train], [kind(b) for b in l.data.valid])
    l.cbs.withDevice("cpu").withDType(torch.float64)
    l.cbs.append(Record("startPass", seen_dtypes), "Seen")
    l.cbs.append(Record("endLoss", lambda l: l.loss.dtype), "LossDType")
    l.run(1)

    expected = {"x": torch.float64, "mask": torch.float64, "labels": torch.int64}
    assert len(l.Seen.seen) == 6
    for seen in l.Seen.seen:
        assert seen == {"same": True, "type": kind, "dtypes": expected, "yb": None, "device": {"cpu"}}
    assert l.LossDType.seen == [torch.float64] * 6
    assert all(p.dtype == torch.float64 for p in l.model.parameters())
    # the loader's batches are not cast in place
    assert l.data.train[0]["x"].dtype == torch.float32


def test_device_and_dtype_on_inputs_dict_and_labels_keep_them_apart() -> None:
    l = kwargs_learner(mapping=False)
    l.cbs.withDevice("cpu").withDType(torch.float64)
    l.cbs.append(Record("startPass", seen_dtypes), "Seen")
    l.run(1)
    for seen in l.Seen.seen:
        assert seen == {
            "same": False,
            "type": dict,
            "dtypes": {"x": torch.float64, "mask": torch.float64},
            "yb": torch.int64,  # integer labels are not cast
            "device": {"cpu"},
        }


def test_dtype_on_a_hugging_face_lm_leaves_token_ids_integers(hf: None) -> None:
    l = lm_learner(train=2, valid=1)
    l.cbs.withDType(torch.float64)
    l.cbs.append(Record("startPass", seen_dtypes), "Seen")
    l.cbs.append(Record("endPass", lambda l: l.y.logits.dtype), "Logits")
    l.run(1)
    ints = {"input_ids": torch.int64, "attention_mask": torch.int64, "labels": torch.int64}
    assert [s["dtypes"] for s in l.Seen.seen] == [ints] * 3
    assert all(s["same"] for s in l.Seen.seen)
    assert l.Logits.seen == [torch.float64] * 3
    assert len(l.Loss.train) == 2


# ---- record, ParamFinder, LossLandscape, checkpoints ---------------------------------------------------


def test_record_returns_the_mappings_and_the_outputs(hf: None) -> None:
    l = lm_learner()
    before = weights(l.model)
    xbs, ybs, ys = l.record(1, 2)
    batches = [*l.data.train[:2], *l.data.valid[:2]]
    assert len(xbs) == len(ybs) == len(ys) == 4
    model = tiny_lm()
    for xb, yb, y, batch in zip(xbs, ybs, ys, batches, strict=True):
        assert xb is batch and yb is batch
        with torch.no_grad():
            direct = model(**batch)
        torch.testing.assert_close(y.logits, direct.logits)
        torch.testing.assert_close(y.loss, direct.loss)
    assert_same(before, weights(l.model), "weights")
    assert list(l.Loss.train) == [] and not l.opt.state


@pytest.mark.parametrize("mapping", FORMS)
def test_param_finder_on_keyword_batches_restores_the_learner_bitwise(mapping: bool) -> None:
    l = kwargs_learner(mapping)
    l.run(1)  # Adam has moments to restore
    state = {
        "weights": weights(l.model),
        "opt": copy.deepcopy(l.opt.state_dict()),
        "loss": (list(l.Loss.train), list(l.Loss.valid)),
        "rng": torch.get_rng_state(),
        "training": l.model.training,
    }
    with torch.no_grad():
        first = direct_loss(l, l.model, l.data.train[0]).item()
    suggestion = l.ParamFinder.run(samples=20, start=1e-3, end=1e4)

    assert l.ParamFinder.losses[0] == pytest.approx(first, rel=1e-6)  # the first batch, as it was
    assert 5 <= len(l.ParamFinder.losses) <= 20
    assert l.ParamFinder.params == sorted(l.ParamFinder.params)
    assert 1e-3 / 40 <= suggestion <= 1e4 / 40
    after = {
        "weights": weights(l.model),
        "opt": l.opt.state_dict(),
        "loss": (list(l.Loss.train), list(l.Loss.valid)),
        "rng": torch.get_rng_state(),
        "training": l.model.training,
    }
    assert_same(state, after)


@pytest.mark.parametrize("mapping", FORMS)
def test_loss_landscape_on_keyword_batches_both_engines_agree_with_a_direct_loss(
    mapping: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    l = kwargs_learner(mapping)
    l.run(1)
    before = weights(l.model)
    with torch.no_grad():  # LossLandscape evaluates in eval mode
        direct = direct_loss(l, l.model.eval(), l.data.valid[0]).item()
    l.model.train()
    surfaces = {}
    for engine in ("vmap", "loop"):
        found = l.LossLandscape.compute(resolution=5, ranges=(0.5,), pairs=1, engine=engine)
        assert l.LossLandscape.centre == pytest.approx(direct, rel=1e-6), engine
        assert [s.engine for s in found] == [engine]
        assert found[0].losses.shape == (5, 5)
        assert found[0].losses[2, 2] == pytest.approx(direct, rel=1e-5), engine  # the grid's centre
        surfaces[engine] = found[0].losses
        assert_same(before, weights(l.model), f"weights after {engine}")
        assert l.model.training
    assert surfaces["vmap"] == pytest.approx(surfaces["loop"], rel=1e-5)
    assert surfaces["loop"].std() > 0  # the surface is not flat: the directions moved the weights

    # 12 samples: the first validation batch (8) and 4 of the second, joined
    first, second = l.data.valid[0], l.data.valid[1]
    if mapping:
        joined: Any = {k: torch.cat([first[k], second[k]])[:12] for k in first}
    else:
        joined = (
            {k: torch.cat([first[0][k], second[0][k]])[:12] for k in first[0]},
            torch.cat([first[1], second[1]])[:12],
        )
    with torch.no_grad():
        direct = direct_loss(l, l.model.eval(), joined).item()
    l.model.train()
    l.LossLandscape.compute(resolution=3, batchSize=12, ranges=(0.5,), pairs=1, engine="loop")
    assert l.LossLandscape.centre == pytest.approx(direct, rel=1e-6)


def test_loss_landscape_on_a_hugging_face_lm_centres_on_its_own_loss(
    hf: None, capsys: pytest.CaptureFixture[str]
) -> None:
    l = lm_learner()
    before = weights(l.model)
    model = tiny_lm().eval()
    with torch.no_grad():
        direct = model(**l.data.valid[0]).loss.item()
    # "loop": torch.func.vmap has no batching rule for the CPU SDPA attention and says so with a
    # UserWarning, which filterwarnings=error turns into vmap failing (a RuntimeWarning fallback)
    found = l.LossLandscape.compute(resolution=3, ranges=(1.0,), pairs=1, engine="loop")
    assert l.LossLandscape.centre == pytest.approx(direct, rel=1e-5)
    assert found[0].losses[1, 1] == pytest.approx(direct, rel=1e-5)
    assert_same(before, weights(l.model))


def test_a_checkpoint_after_training_on_mappings_round_trips(hf: None, tmp_path: Path) -> None:
    l = lm_learner()
    l.css = CSS
    l.run(1)
    l.save(tmp_path / "lm.pth")

    other = lm_learner(tiny_lm(seed=1))
    other.load(tmp_path / "lm.pth")
    assert other.css == CSS
    assert_same(weights(l.model), weights(other.model), "weights")
    assert_same(l.opt.state_dict(), other.opt.state_dict(), "optimizer")
    assert list(other.Loss.train) == list(l.Loss.train) and len(l.Loss.train) == 4
    assert other.HookModule.names == LAYER_PATHS
    assert_same(l.HookModule.state_dict(), other.HookModule.state_dict(), "HookModule")
    # both continue the same way
    l.run(1)
    other.run(1)
    assert_same(weights(l.model), weights(other.model), "weights after another epoch")
    assert list(other.Loss.train) == list(l.Loss.train) and len(l.Loss.train) == 8
