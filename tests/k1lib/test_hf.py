"""``k1lib.hf.WatchCallback`` on real ``transformers.Trainer`` fits (a tiny Llama with random
weights, CPU): what it records equals plain hooks and parameter copies taken in the same run,
with and without gradient accumulation; evaluation passes are not recorded; its summaries reach
the logs and ``state.log_history``; no hook outlives ``train()``, however it ends."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import modsel

from .helpers import PlainHooks, assert_stats_close
from .hf_models import lm_batches, tiny_lm
from .test_readme_recipes import README, _recipe

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import k1lib.hf  # noqa: E402 - after the skip: it imports transformers
from k1lib.callbacks._hook_summary import summarise  # noqa: E402

STATS = ("means", "stds", "mins", "maxs")
LAYERS = ["model.layers.0", "model.layers.1"]
CSS = "LlamaDecoderLayer, #norm, #lm_head: HookModule; #norm, #lm_head: HookParam"
PATHS = [*LAYERS, "model.norm", "lm_head"]  # what CSS selects for HookModule, in tree order
PARAMS = ["model.norm.weight", "lm_head.weight"]


class Rows(torch.utils.data.Dataset[dict[str, Tensor]]):
    """Single rows of ``lm_batches`` (the Trainer's default collator stacks them back)."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.rows = [
            {k: v[i] for k, v in b.items()} for b in lm_batches(n, seed) for i in range(len(b["labels"]))
        ]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return self.rows[i]


class Spy(transformers.TrainerCallback):
    """Calls ``on_step(state)`` at each step end and ``on_log(logs)`` at each log."""

    def __init__(
        self,
        on_step: Callable[[Any], None] | None = None,
        on_log: Callable[[dict[str, float]], None] | None = None,
    ) -> None:
        self.step, self.log = on_step, on_log

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.step is not None:
            self.step(state)

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if self.log is not None:
            self.log(dict(logs))


def trainer(
    out: Path, callbacks: list[Any], model: nn.Module | None = None, eval_every: int = 0, **options: Any
) -> Any:
    """A quiet CPU Trainer on ``tiny_lm`` and 4 batches' rows (4 rows a micro-batch, shuffled with
    the seed; the Trainer's AdamW and linear schedule), nothing saved or reported."""
    settings: dict[str, Any] = {
        "output_dir": str(out),
        "report_to": [],
        "use_cpu": True,
        "max_steps": 4,
        "per_device_train_batch_size": 4,
        "logging_steps": 2,
        "save_strategy": "no",
        "seed": 0,
        "disable_tqdm": True,
        "learning_rate": 1e-2,
        **options,
    }
    if eval_every:
        settings.update(eval_strategy="steps", eval_steps=eval_every, per_device_eval_batch_size=4)
    return transformers.Trainer(
        model=model if model is not None else tiny_lm(),
        args=transformers.TrainingArguments(**settings),
        train_dataset=Rows(4),
        eval_dataset=Rows(1, seed=1) if eval_every else None,
        callbacks=callbacks,
    )


def hooks_left(m: nn.Module) -> dict[str, int]:
    """Module hooks of any kind still registered, by path (only modules having some)."""
    counts = {
        path: sum(len(h) for h in (sub._forward_hooks, sub._forward_pre_hooks, sub._backward_hooks))
        for path, sub in m.named_modules()
    }
    return {path: n for path, n in counts.items() if n}


def quietly(f: Callable[[], Any]) -> Any:
    """``f()`` with stdout captured (the Trainer prints its logs with ``disable_tqdm``)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return f()


# ---- what is recorded --------------------------------------------------------------------------------------


@pytest.mark.parametrize("accumulation", [1, 2])
def test_statistics_equal_plain_hooks_and_parameter_copies(tmp_path: Path, accumulation: int) -> None:
    """Per optimizer step: each module's last call (with accumulation: the last micro-batch's
    output and its gradient) and the parameters after the step."""
    model = tiny_lm()
    cb = k1lib.hf.WatchCallback(CSS)
    taken: list[dict[str, Tensor]] = []
    head_calls: list[Tensor] = []  # every lm_head output with gradients on, for the micro-batch check

    def copy_params(state: Any) -> None:
        ref.close_batch()
        taken.append({n: p.detach().clone() for n, p in model.named_parameters() if n in PARAMS})

    def head_hook(module: nn.Module, args: Any, output: Tensor) -> None:
        if torch.is_grad_enabled():
            head_calls.append(output.detach().clone())

    t = trainer(
        tmp_path, [cb, Spy(copy_params)], model, gradient_accumulation_steps=accumulation, eval_every=2
    )
    handle = model.lm_head.register_forward_hook(head_hook)
    try:
        with PlainHooks({p: model.get_submodule(p) for p in PATHS}) as ref:
            quietly(t.train)
    finally:
        handle.remove()

    hm, hp = cb.HookModule, cb.HookParam
    assert hm.names == PATHS and hm.types == [
        "LlamaDecoderLayer",
        "LlamaDecoderLayer",
        "LlamaRMSNorm",
        "Linear",
    ]
    assert hp.names == PARAMS
    assert len(hm[0].forward.means) == len(hp.data) == 4 == t.state.global_step
    assert len(head_calls) == 4 * accumulation  # the evaluation's calls were under no_grad
    for i, path in enumerate(PATHS):
        for direction in ("forward", "backward"):
            got = torch.stack([getattr(hm[i], direction).means, getattr(hm[i], direction).stds], 1)
            assert_stats_close(got, getattr(ref, direction)[path], what=f"{path} {direction}")
    # the row is the last micro-batch's, not the first's
    last = [head_calls[accumulation * (s + 1) - 1] for s in range(4)]
    assert_stats_close(
        torch.stack([hm[3].forward.means, hm[3].forward.stds], 1), list(last), what="last call"
    )
    if accumulation > 1:
        first = torch.stack([head_calls[accumulation * s].double().mean() for s in range(4)])
        assert not torch.allclose(first, hm[3].forward.means.double(), rtol=1e-3, atol=0)
    for i, name in enumerate(PARAMS):
        assert_stats_close(hp.data[:, i], [p[name] for p in taken], STATS, name)
    assert hooks_left(model) == {}


def test_evaluation_passes_are_not_recorded(tmp_path: Path) -> None:
    """A recorder counting the calls it sees: only the training micro-batches' (the Trainer
    evaluates under torch.no_grad(), here after every step, on 4 batches each time)."""
    seen: list[int] = []

    def count(t: Tensor) -> Tensor:
        seen.append(t.shape[0])
        return t.float().mean()

    cb = k1lib.hf.WatchCallback("#lm_head: HookModule")
    t = trainer(tmp_path, [cb], eval_every=1, gradient_accumulation_steps=2, max_steps=3)
    t.eval_dataset = Rows(4, seed=1)
    cb.HookModule.withForwardHook(count, "counted")  # the model is known once the Trainer is made
    quietly(t.train)
    assert len([e for e in t.state.log_history if "eval_loss" in e]) == 3
    assert len(seen) == 3 * 2  # 3 steps of 2 micro-batches; no evaluation call
    assert len(cb.HookModule[0].forward.counted) == 3


def test_the_whole_model_with_star(tmp_path: Path) -> None:
    """``*``: every module (the rotary embedding gives no gradient: NaN) and parameter."""
    model = tiny_lm()
    cb = k1lib.hf.WatchCallback()
    quietly(trainer(tmp_path, [cb], model, max_steps=2).train)
    hm, hp = cb.HookModule, cb.HookParam
    assert hm.names == [n for n, _ in model.named_modules()] and hm.names[0] == ""
    assert hp.names == [n for n, _ in model.named_parameters()]
    rotary = hm.names.index("model.rotary_emb")
    assert hm[rotary].backward.means.isnan().all() and hm[rotary].forward.means.isfinite().all()
    assert len(hp.data) == 2 and hooks_left(model) == {}


def test_no_host_read_at_a_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rows stay on the device at each step end: reading a tensor on the host inside the
    callback's on_step_end raises here (the logs read them, once a log)."""
    inside = {"on": False}
    for name in ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__"):
        original = getattr(torch.Tensor, name)

        def guarded(self: Tensor, *args: Any, _f: Any = original, _n: str = name, **kw: Any) -> Any:
            if inside["on"]:
                raise AssertionError(f"Tensor.{_n} in on_step_end: a host sync")
            return _f(self, *args, **kw)

        monkeypatch.setattr(torch.Tensor, name, guarded)
    cb = k1lib.hf.WatchCallback(CSS)
    on, off = Spy(lambda s: inside.update(on=True)), Spy(lambda s: inside.update(on=False))
    quietly(trainer(tmp_path, [on, cb, off]).train)
    assert len(cb.HookParam.data) == 4


# ---- logging -----------------------------------------------------------------------------------------------


def test_summaries_reach_the_logs_and_their_history(tmp_path: Path) -> None:
    """Logs at steps 2 and 4 and the final one (step 5): each carries the steps since the
    previous one; the evaluation logs (after a training log) carry none."""
    seen: list[dict[str, float]] = []
    cb = k1lib.hf.WatchCallback(CSS)
    t = trainer(tmp_path, [cb, Spy(on_log=seen.append)], max_steps=5, eval_every=2)
    quietly(t.train)
    history = t.state.log_history
    carrying = [e for e in history if any(k.startswith("HookModule/") for k in e)]
    assert [e["step"] for e in carrying] == [2, 4, 5]
    assert "loss" in carrying[0] and "loss" in carrying[1] and "train_runtime" in carrying[2]
    assert all("HookModule/forward/means/lm_head" not in e for e in history if "eval_loss" in e)
    hm, hp = cb.HookModule, cb.HookParam
    for entry, steps in zip(carrying, [slice(0, 2), slice(2, 4), slice(4, 5)], strict=True):
        tags = {k for k in entry if k.startswith(("HookModule/", "HookParam/"))}
        assert len(tags) == len(PATHS) * 2 * 2 + len(PARAMS) * 4  # means and stds both ways; 4 a param
        for i, path in enumerate(PATHS):
            for direction in ("forward", "backward"):
                for stat in ("means", "stds"):
                    values = getattr(getattr(hm[i], direction), stat)[steps]
                    expected = float(values.double().mean())
                    assert entry[f"HookModule/{direction}/{stat}/{path}"] == pytest.approx(expected, rel=1e-5)
        for i, name in enumerate(PARAMS):
            for k, stat in enumerate(STATS):
                expected = float(summarise(stat, hp.data[steps, i, k][:, None])[0])
                assert entry[f"HookParam/{stat}/{name}"] == pytest.approx(expected, rel=1e-6)
        assert hp[1].mins[steps].min() == entry["HookParam/mins/lm_head.weight"]  # the least, not the mean
    # a callback after it sees the same logs
    logged = [s for s in seen if "HookParam/means/lm_head.weight" in s]
    assert [s["HookParam/means/lm_head.weight"] for s in logged] == [
        e["HookParam/means/lm_head.weight"] for e in carrying
    ]


def test_add_to_puts_it_ahead_of_the_reporters(tmp_path: Path) -> None:
    """``callbacks=`` and ``add_callback`` come after report_to's reporters (a Spy first stands
    for one): they miss the summaries; ``cb.add_to(trainer)`` puts the callback first."""
    for first in (False, True):
        seen: list[dict[str, float]] = []
        cb = k1lib.hf.WatchCallback("#lm_head: HookParam")
        t = trainer(tmp_path, [Spy(on_log=seen.append)] + ([] if first else [cb]))
        if first:
            cb.add_to(t)
            cb.add_to(t)  # once, still first
            assert t.callback_handler.callbacks.count(cb) == 1
        assert (t.callback_handler.callbacks[0] is cb) == first
        quietly(t.train)
        reported = [s for s in seen if "HookParam/means/lm_head.weight" in s]
        assert len(reported) == (2 if first else 0)  # steps 2 and 4 (the final log: no new step)
        assert len([e for e in t.state.log_history if "HookParam/means/lm_head.weight" in e]) == 2


def test_log_false_adds_nothing(tmp_path: Path) -> None:
    cb = k1lib.hf.WatchCallback(CSS, log=False)
    t = trainer(tmp_path, [cb])
    quietly(t.train)
    assert not any(k.startswith("Hook") for e in t.state.log_history for k in e)
    assert len(cb.HookModule[0].forward.means) == 4


# ---- hooks never outlive training --------------------------------------------------------------------------


class BoomError(RuntimeError):
    pass


@contextlib.contextmanager
def raising_at_call(module: nn.Module, n: int) -> Iterator[None]:
    """``module``'s ``n``-th call with gradients on raises ``BoomError`` (the hook is ours, removed
    after)."""
    calls = [0]

    def pre(m: nn.Module, args: Any) -> None:
        if torch.is_grad_enabled():
            calls[0] += 1
            if calls[0] == n:
                raise BoomError(f"call {n}")

    handle = module.register_forward_pre_hook(pre)
    try:
        yield
    finally:
        handle.remove()


def test_no_hooks_after_train_or_a_raising_train(tmp_path: Path) -> None:
    model = tiny_lm()
    cb = k1lib.hf.WatchCallback(CSS)
    t = trainer(tmp_path, [cb], model)
    assert hooks_left(model) == {}  # nothing before training either
    quietly(t.train)
    assert hooks_left(model) == {} and "not recording" in repr(cb)
    # with cb: removed however train() ends
    with raising_at_call(model.model.layers[1], 3), pytest.raises(BoomError), cb:
        quietly(t.train)
    assert hooks_left(model) == {}
    assert len(cb.HookParam.data) == 4 + 2  # the steps before the error (the records go on)
    # without it: on_train_end never comes (the Trainer has no event for an error) ...
    with raising_at_call(model.model.layers[1], 2), pytest.raises(BoomError):
        quietly(t.train)
    assert set(hooks_left(model)) == {"", *PATHS} and "(recording)" in repr(cb)
    cb.close()  # ... cb.close() removes them
    cb.close()  # and again: nothing to do
    assert hooks_left(model) == {}
    # a train() after one cut short starts afresh (its leftovers closed) and ends clean
    with raising_at_call(model.model.layers[1], 2), pytest.raises(BoomError):
        quietly(t.train)
    quietly(t.train)
    assert hooks_left(model) == {}
    assert len(cb.HookParam.data) == 4 + 2 + 1 + 1 + 4


def test_another_model_starts_new_records(tmp_path: Path) -> None:
    """``model_init`` makes the model at ``train()``: the records are of that model."""
    cb = k1lib.hf.WatchCallback("#lm_head: HookParam")
    assert (
        repr(cb)
        == "k1lib.hf.WatchCallback, css '#lm_head: HookParam': no records yet (made at train(), or when read)"
    )
    with pytest.raises(RuntimeError, match=r"no model yet: .*cb.add_to\(trainer\)"):
        cb.HookModule  # noqa: B018
    t = transformers.Trainer(
        model_init=lambda: tiny_lm(),
        args=transformers.TrainingArguments(
            output_dir=str(tmp_path), report_to=[], use_cpu=True, max_steps=2, per_device_train_batch_size=4,
            save_strategy="no", disable_tqdm=True,
        ),
        train_dataset=Rows(2),
        callbacks=[cb],
    )  # fmt: skip
    made = cb.HookParam  # the model model_init made for the Trainer's construction
    quietly(t.train)  # model_init again: another model
    first = cb.HookParam
    quietly(t.train)
    assert len({id(made), id(first), id(cb.HookParam)}) == 3
    assert len(made.data) == 0 and len(cb.HookParam.data) == len(first.data) == 2
    assert hooks_left(t.model) == {}


# ---- errors and imports ------------------------------------------------------------------------------------


def test_bad_css_is_refused_when_made() -> None:
    with pytest.raises(modsel.SelectorSyntaxError, match="unknown pseudo-class"):
        k1lib.hf.WatchCallback("Linear:HookModule")
    with pytest.raises(ValueError, match=r"gives the prop 'HookModul'.*did you mean 'HookModule'\?"):
        k1lib.hf.WatchCallback("Linear: HookModul")
    with pytest.raises(TypeError, match="css must be a str, got int"):
        k1lib.hf.WatchCallback(3)  # type: ignore[arg-type]


def test_an_empty_selection_warns_at_train(tmp_path: Path) -> None:
    cb = k1lib.hf.WatchCallback("Conv2d: HookModule")
    t = trainer(tmp_path, [cb], max_steps=1)
    with pytest.warns(UserWarning, match="HookModule records nothing"):
        quietly(t.train)
    assert cb.HookModule.names == []


def test_importing_k1lib_does_not_import_transformers() -> None:
    code = (
        "import sys, k1lib\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('transformers', 'accelerate')))"
    )
    root = str(Path(__file__).resolve().parents[2])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "[]"


def test_a_missing_transformers_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m.split(".")[0] == "transformers"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if never installed
    monkeypatch.delitem(sys.modules, "k1lib.hf")
    with pytest.raises(ImportError, match=r"pip install 'k1lib\[hf\]'"):
        import k1lib.hf  # noqa: F401


# ---- the README --------------------------------------------------------------------------------------------


def test_the_hugging_face_trainer_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {}
    quietly(lambda: exec(compile(_recipe("### Hugging Face Trainer"), str(README), "exec"), namespace))
    cb, trainer_, model = namespace["cb"], namespace["trainer"], namespace["model"]
    assert cb.HookModule.names == LAYERS and cb.HookParam.names == ["lm_head.weight"]
    assert len(cb.HookModule[1].backward.stds) == 20 == len(cb.HookParam.data)
    assert isinstance(cb.HookModule.plot("means", "stds").plot(), Figure)
    logged = [e for e in trainer_.state.log_history if "HookModule/forward/stds/model.layers.1" in e]
    assert [e["step"] for e in logged] == [5, 10, 15, 20]
    assert hooks_left(model) == {}
