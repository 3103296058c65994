"""``Learner.predict`` (issue 14, point 4): the outputs over a loader, computed as training
sees its batches (ModifyBatch, DType, ModifyOutput), in eval mode without autograd, recording
nothing, and the learner as before afterwards."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

import k1lib
from k1lib._predict import Predictions
from k1lib.data import Data, DataLoader

from .helpers import assert_same, learner

pytestmark = pytest.mark.usefixtures("own_dir")


def dropout_learner() -> Any:
    l = learner(train=3, valid=3)
    l.cbs.remove("Autosave")
    l.model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 1))
    l.opt = torch.optim.SGD(l.model.parameters(), lr=0.1)
    return l


def by_hand(model: nn.Module, xs: list[torch.Tensor]) -> torch.Tensor:
    model = copy.deepcopy(model).eval()
    with torch.no_grad():
        return torch.cat([model(x) for x in xs])


def test_outputs_equal_the_model_in_eval_mode_without_grad() -> None:
    l = dropout_learner()
    l.run(1)
    l.model.train()
    outputs, targets = l.predict()
    assert torch.equal(outputs, by_hand(l.model, [x for x, _ in l.data.valid]))
    assert torch.equal(targets, torch.cat([y for _, y in l.data.valid]))
    assert not outputs.requires_grad
    assert l.model.training  # the mode is the user's again
    l.model.eval()
    l.predict()
    assert not l.model.training


def test_batches_go_through_modify_batch_dtype_and_modify_output() -> None:
    l = dropout_learner()
    l.model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    l.opt = torch.optim.SGD(l.model.parameters(), lr=0.1)
    l.cbs.withModifyBatch(lambda x, y: (torch.cat([x, x[:, :1] * 2], 1), y + 1))
    l.cbs.withDType(torch.float64)
    l.cbs.withModifyOutput(lambda y: y * 3)
    l.run(1)
    predictions = l.predict(l.data.train)
    assert isinstance(predictions, Predictions)
    xs = [torch.cat([x, x[:, :1] * 2], 1).double() for x, _ in l.data.train]
    assert l.model[0].weight.dtype == torch.float64
    assert torch.equal(predictions.outputs, by_hand(l.model, xs) * 3)
    assert predictions.outputs.dtype == torch.float64
    assert torch.equal(predictions.targets, torch.cat([(y + 1).double() for _, y in l.data.train]))


def test_predict_records_nothing_and_leaves_the_learner_as_before(capsys: pytest.CaptureFixture[str]) -> None:
    l = dropout_learner()
    l.cbs.withProgressBar()
    l.run(2)
    capsys.readouterr()
    states = {cb.name: copy.deepcopy(cb.state_dict()) for cb in l.cbs}
    fields = {k: v for k, v in l.fields().items()}
    rng = torch.get_rng_state()
    timings = dict(l.cbs.timings.seconds)

    l.predict()
    l.predict(l.data.train)

    assert capsys.readouterr().out == ""
    for name, state in states.items():
        assert_same(state, copy.deepcopy(l.cbs[name].state_dict()), name, nan=True)
    assert len(l.Loss.train) == 6 and len(l.Loss.valid) == 6
    for k, v in fields.items():
        assert getattr(l, k) is v, k
    assert torch.equal(torch.get_rng_state(), rng)
    assert not any(cb.suspended for cb in l.cbs)
    assert {k for k in l.cbs.timings.seconds if k[0] in ("Loss", "HookModule")} == {
        k for k in timings if k[0] in ("Loss", "HookModule")
    }


def test_hook_module_and_hook_param_see_no_predict_batch() -> None:
    l = dropout_learner()
    l.run(1)
    hooked = l.HookModule.state_dict()
    params = l.HookParam.state_dict()
    l.predict()
    assert_same(hooked, l.HookModule.state_dict(), "HookModule", nan=True)
    assert_same(params, l.HookParam.state_dict(), "HookParam", nan=True)


def test_a_shuffled_loaders_generator_is_left_as_it_was() -> None:
    x = torch.randn(40, 2)

    def shuffled() -> Any:
        l = dropout_learner()
        l.data = Data(
            DataLoader((x, x.sum(1, keepdim=True)), 8, seed=3), DataLoader((x, x), 8, shuffle=False)
        )
        return l

    l, untouched = shuffled(), shuffled()
    assert l.predict(l.data.train).outputs.shape == (40, 1)
    # the next epoch's order is the one it would have been without predict
    for (a, _), (b, _) in zip(l.data.train, untouched.data.train, strict=True):
        assert torch.equal(a, b)


class Boom(k1lib.Callback):
    shapes_batch = True

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def endPass(self) -> None:
        self.seen += 1
        if self.seen == 2:
            raise ValueError("boom")


def test_an_error_in_the_middle_leaves_the_learner_as_before() -> None:
    l = dropout_learner()
    l.run(1)
    l.cbs.append(Boom())
    fields = l.fields()
    l.model.train()
    rng = torch.get_rng_state()
    with pytest.raises(ValueError, match="boom") as raised:
        l.predict()
    assert "callback 'Boom' during event 'endPass'" in "".join(getattr(raised.value, "__notes__", []))
    assert l.model.training and not torch.is_inference_mode_enabled() and torch.is_grad_enabled()
    assert not any(cb.suspended for cb in l.cbs)
    for k, v in fields.items():
        assert getattr(l, k) is v, k
    assert torch.equal(torch.get_rng_state(), rng)
    l.cbs.remove("Boom")
    l.run(1)  # trains as before
    assert len(l.Loss.train) == 6


def test_outputs_that_do_not_fit_together_are_lists() -> None:
    l = dropout_learner()
    l.model = nn.Identity()
    loader = [(torch.ones(2, 3), torch.zeros(2)), (torch.ones(2, 4), torch.zeros(2))]
    outputs, targets = l.predict(loader)
    assert isinstance(outputs, list) and [o.shape for o in outputs] == [(2, 3), (2, 4)]
    assert torch.equal(targets, torch.zeros(4))
    assert l.predict([]) == ([], [])


def test_a_learner_without_optimizer_or_loss_predicts() -> None:
    l = k1lib.Learner()
    l.model = nn.Linear(2, 1)
    with pytest.raises(RuntimeError, match="no validation loader"):
        l.predict()
    x = torch.randn(5, 2)
    outputs, _ = l.predict([(x, None)])
    assert torch.equal(outputs, by_hand(l.model, [x]))


def test_mapping_batches_give_logits_and_labels() -> None:
    pytest.importorskip("transformers")
    from .hf_models import lm_learner

    l = lm_learner()
    l.css = "LlamaDecoderLayer: HookModule"
    l.run(1)
    hooked = l.HookModule.state_dict()
    l.model.train()
    outputs, targets = l.predict()
    model = copy.deepcopy(l.model).eval()
    with torch.no_grad():
        expected = torch.cat([model(**batch).logits for batch in l.data.valid])
    assert torch.equal(outputs, expected)
    assert outputs.shape == (8, 12, 64)
    assert torch.equal(targets, torch.cat([batch["labels"] for batch in l.data.valid]))
    assert l.model.training
    assert_same(hooked, l.HookModule.state_dict(), "HookModule", nan=True)


def test_autocast_applies_and_is_left_after_predict() -> None:
    l = dropout_learner()
    l.cbs.withAutocast(torch.bfloat16).withDevice("cpu")
    outputs, _ = l.predict()
    assert outputs.dtype == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")
    model = copy.deepcopy(l.model).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = torch.cat([model(x) for x, _ in l.data.valid])
    assert torch.equal(outputs, expected)


def test_loaders_of_inputs_alone_give_no_targets() -> None:
    l = learner()
    xs = [x for x, _ in l.data.valid]
    outputs, targets = l.predict(xs)
    assert torch.equal(outputs, by_hand(l.model, xs)) and targets is None
    sizes = [len(x) for x in xs]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.cat(xs)), batch_size=sizes[0])
    outputs, targets = l.predict(loader)
    assert torch.equal(outputs, by_hand(l.model, xs)) and targets is None
