"""``k1lib.lightning.Watch`` on real Lightning fits (CPU): its records equal plain forward and
tensor hooks and parameter copies taken on the same run, one row per optimizer step (with
gradient accumulation and under bf16 autocast too); validation and predict passes are not
recorded; summaries reach the logger; checkpoints carry the records across a resume; no hook
outlives the fit, whatever ends it; ``import k1lib`` does not import lightning."""

from __future__ import annotations

import csv
import math
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

pytest.importorskip("lightning")

import lightning.pytorch as pl
from lightning.pytorch.loggers import CSVLogger

import k1lib.lightning
import modsel
from k1lib.callbacks._hook_summary import summarise

from .helpers import PlainHooks, assert_stats_close

pytestmark = [
    # lightning 2.6 asks torch's pytree a question torch 2.13 deprecates
    pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated:FutureWarning"),
    # few dataloader workers, few batches per logging interval: tiny CPU fits on purpose
    pytest.mark.filterwarnings("ignore::lightning.fabric.utilities.warnings.PossibleUserWarning"),
]

BATCH = 64  # up's output, BATCH x WIDE, is above the capture's SMALL: reduced in its hook
WIDE = 1100
README = Path(__file__).parents[2] / "README.md"


class Net(pl.LightningModule):
    """A large output changed in place (``up``, then an in-place ReLU), small ones, and a
    ``probe`` called only by validation (with gradients on) and predict passes."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.up = nn.Linear(4, WIDE)
        self.act = nn.ReLU(inplace=True)
        self.down = nn.Linear(WIDE, 8)
        self.head = nn.Sequential(nn.Tanh(), nn.Linear(8, 1))
        self.probe = nn.Linear(4, 2)
        self.fail_at = fail_at

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.down(self.act(self.up(x))))  # type: ignore[no-any-return]

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = ((self(x) - y) ** 2).mean()
        if self.global_step == self.fail_at:
            raise RuntimeError("boom")  # after the forward pass: a batch cut short
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        with torch.enable_grad():  # a pass with gradients on: only the pause leaves it out
            self.log("val_loss", ((self(x) - y) ** 2).mean() + self.probe(x).sum() * 0)

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self(batch[0]) + self.probe(batch[0]).sum()  # type: ignore[no-any-return]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def loader(batches: int = 8) -> torch.utils.data.DataLoader[Any]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batches * BATCH, 4, generator=g)
    data = torch.utils.data.TensorDataset(x, x.sin().sum(1, keepdim=True))
    return torch.utils.data.DataLoader(data, batch_size=BATCH)  # the same order each fit


def trainer(**kw: Any) -> pl.Trainer:
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "limit_val_batches": 1,
        "val_check_interval": 3,  # validation between training batches, mid-accumulation too
    }
    return pl.Trainer(**{**options, **kw})


def hooks_left(m: nn.Module) -> dict[str, int]:
    """Module hooks of any kind still registered, by path (only modules having some)."""
    counts = {
        path: sum(len(h) for h in (sub._forward_hooks, sub._forward_pre_hooks, sub._backward_hooks))
        for path, sub in m.named_modules()
    }
    return {path: n for path, n in counts.items() if n}


class Reference(pl.Callback):
    """The plain way, on the same run: ``PlainHooks`` on every module, a batch closed every
    ``every`` training batches (counted here) with a copy of the parameters then, the hooks
    taken off while validation runs."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.hooks: PlainHooks | None = None
        self.params: list[dict[str, Tensor]] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.hooks = PlainHooks(dict(pl_module.named_modules())).__enter__()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        batch_idx = args[-1]
        assert self.hooks is not None
        if (batch_idx + 1) % self.every == 0:
            self.hooks.close_batch()
            self.params.append({n: p.detach().clone() for n, p in pl_module.named_parameters()})

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.hooks is not None:
            self.hooks.__exit__()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.hooks is not None:
            self.hooks.__enter__()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self.hooks is not None
        self.hooks.__exit__()


def assert_rows_equal(a: k1lib.lightning.Watch, b: k1lib.lightning.Watch) -> None:
    """Both watches recorded the same statistics (same names, rows and values)."""
    assert a.HookModule.names == b.HookModule.names and a.HookParam.names == b.HookParam.names
    for i in range(len(a.HookModule)):
        for direction in ("forward", "backward"):
            x, y = getattr(a.HookModule[i], direction), getattr(b.HookModule[i], direction)
            for stat in ("means", "stds"):
                torch.testing.assert_close(getattr(x, stat), getattr(y, stat), equal_nan=True)
    torch.testing.assert_close(a.HookParam.data, b.HookParam.data, equal_nan=True)


# ---- the same statistics as plain hooks, one row per optimizer step ---------------------------------------


@pytest.mark.parametrize(
    ("precision", "accumulate"), [("32-true", 1), ("32-true", 2), ("bf16-mixed", 2), ("bf16-true", 1)]
)
def test_records_equal_plain_hooks_and_parameter_copies(precision: str, accumulate: int) -> None:
    net, cb, ref = Net(), k1lib.lightning.Watch(log_every=None), Reference(accumulate)
    fit = trainer(
        max_epochs=1,
        accumulate_grad_batches=accumulate,
        precision=precision,
        inference_mode=False,
        callbacks=[cb, ref],
    )
    fit.fit(net, loader(), loader(2))

    hm, hp = cb.HookModule, cb.HookParam
    steps = 8 // accumulate
    assert fit.global_step == steps == len(ref.params)
    assert hm.names == ["", "up", "act", "down", "head", "head.0", "head.1", "probe"]
    assert hm.types[:2] == ["Net", "Linear"]
    assert hp.names == [n for n, _ in net.named_parameters()]
    assert ref.hooks is not None
    for i, path in enumerate(hm.names):
        for direction in ("forward", "backward"):
            stats = getattr(hm[i], direction)
            got = torch.stack([stats.means, stats.stds], 1)
            assert got.shape == (steps, 2)
            assert_stats_close(got, getattr(ref.hooks, direction)[path], what=f"{path!r} {direction}")
    # validation (with gradients on) and predict called probe: never recorded
    assert hm[hm.names.index("probe")].forward.means.isnan().all()
    assert hm[0].forward.means.isfinite().all()  # the root: training_step calls self(x)
    for i, name in enumerate(hp.names):
        stats = ("means", "stds", "mins", "maxs")
        assert_stats_close(hp.data[:, i], [p[name] for p in ref.params], stats, name)
    if precision.startswith("bf16"):  # Linear outputs and their gradients were bfloat16
        assert {t.dtype for t in ref.hooks.forward["up"] + ref.hooks.backward["down"]} == {torch.bfloat16}
    assert hooks_left(net) == {}
    assert repr(cb).startswith(
        f"k1lib.lightning.Watch (not recording), css '*', log_every None:\n"
        f"- cb.HookModule: 8 modules, {steps} batches of means, stds each\n"
    )

    fit.predict(net, loader(2))  # after the fit: nothing hooked, nothing recorded
    assert len(hp.data) == len(hm[0].forward.means) == steps and hooks_left(net) == {}


def test_recorders_added_before_the_fit_and_a_narrow_css() -> None:
    cb = k1lib.lightning.Watch("#up, #head > *: HookModule; #down: HookParam", log_every=None)
    cb.HookModule.withMinRecorder()
    trainer(max_steps=2, callbacks=[cb]).fit(Net(), loader())
    assert cb.HookModule.names == ["up", "head.0", "head.1"] and cb.HookParam.names == [
        "down.weight",
        "down.bias",
    ]
    assert cb.HookModule[0].forward.names() == ["means", "stds", "mins"]
    assert len(cb.HookModule[2].backward.mins) == 2


# ---- logging -------------------------------------------------------------------------------------------


def _metrics_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSVLogger's metrics.csv."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _rows_with(logger: CSVLogger, key: str) -> list[dict[str, str]]:
    """The rows of the logger's metrics.csv giving ``key``."""
    return [r for r in _metrics_rows(Path(logger.log_dir) / "metrics.csv") if r.get(key)]


def _expected(cb: k1lib.lightning.Watch, rows: slice) -> dict[str, float]:
    """The summaries of ``rows`` of the records, as the watch names them."""
    out: dict[str, float] = {}
    hm, hp = cb.HookModule, cb.HookParam
    for i, path in enumerate(hm.names):
        for direction in ("forward", "backward"):
            stats = getattr(hm[i], direction)
            for stat in ("means", "stds"):
                value = summarise(stat, getattr(stats, stat)[rows][:, None])[0]
                out[f"HookModule/{direction}/{stat}/{path or '(root)'}"] = float(value)
    for k, stat in enumerate(("means", "stds", "mins", "maxs")):
        for i, name in enumerate(hp.names):
            out[f"HookParam/{stat}/{name}"] = float(summarise(stat, hp.data[rows, i : i + 1, k])[0])
    return out


def _assert_logged(row: dict[str, str], expected: dict[str, float]) -> None:
    for name, value in expected.items():
        got = float(row[name])
        assert (math.isnan(got) and math.isnan(value)) or got == pytest.approx(value, rel=1e-6), name


def test_summaries_reach_the_logger_every_log_every_n_steps(tmp_path: Path) -> None:
    cb, logger = k1lib.lightning.Watch(), CSVLogger(tmp_path)
    fit = trainer(max_steps=6, logger=logger, log_every_n_steps=2, callbacks=[cb])
    fit.fit(Net(), loader(), loader(2))
    logged = _rows_with(logger, "HookModule/forward/means/up")
    assert [int(r["step"]) for r in logged] == [1, 3, 5]  # Lightning's own step of those batches
    for r, start in zip(logged, (0, 2, 4), strict=True):
        _assert_logged(r, _expected(cb, slice(start, start + 2)))
    assert math.isnan(float(logged[0]["HookModule/forward/means/probe"]))  # validation-only module
    last = _expected(cb, slice(4, 6))
    name = "HookParam/stds/up.weight"
    assert fit.logged_metrics[name].item() == pytest.approx(last[name])
    assert "HookModule/backward/stds/down" in fit.callback_metrics


class TwoOptimizers(Net):
    """Manual optimization stepping two optimizers each batch: ``global_step`` goes up by 2 a
    batch, the loggers' step by 1."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = ((self(x) - y) ** 2).mean()
        opts = self.optimizers()
        for opt in opts:  # type: ignore[union-attr]
            opt.zero_grad()
        self.manual_backward(loss)
        for opt in opts:  # type: ignore[union-attr]
            opt.step()
        return loss

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:  # type: ignore[override]
        first = [*self.up.parameters(), *self.down.parameters()]
        return [torch.optim.SGD(first, lr=0.05), torch.optim.SGD(self.head.parameters(), lr=0.05)]


def test_summaries_follow_the_loggers_steps_with_two_optimizers(tmp_path: Path) -> None:
    cb, logger = k1lib.lightning.Watch(), CSVLogger(tmp_path)
    fit = trainer(max_epochs=1, logger=logger, log_every_n_steps=2, callbacks=[cb], limit_val_batches=0)
    fit.fit(TwoOptimizers(), loader(6))
    assert cb.HookModule.batches() == 6  # one row a batch
    logged = _rows_with(logger, "HookModule/forward/means/up")
    assert len(logged) == 3  # every second batch, each summing up the two rows since the last
    for r, start in zip(logged, (0, 2, 4), strict=True):
        _assert_logged(r, _expected(cb, slice(start, start + 2)))


def test_summaries_once_an_epoch(tmp_path: Path) -> None:
    cb, logger = k1lib.lightning.Watch("#down: all", log_every="epoch"), CSVLogger(tmp_path)
    trainer(max_epochs=2, logger=logger, callbacks=[cb]).fit(Net(), loader(4), loader(2))
    logged = _rows_with(logger, "HookModule/forward/means/down")
    assert len(logged) == 2 and len(cb.HookParam.data) == 8
    for r, start in zip(logged, (0, 4), strict=True):
        _assert_logged(r, _expected(cb, slice(start, start + 4)))
        assert not any(k.startswith("HookModule") and k.endswith("/up") for k in r)


def test_no_host_read_in_its_hooks_except_when_it_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading a tensor on the host (a device sync on an accelerator) inside the watch's hooks
    happens only at the steps it logs."""
    cb = k1lib.lightning.Watch()
    inside: list[bool] = [False]
    reads: set[int] = set()
    fit = trainer(max_steps=8, log_every_n_steps=4, logger=CSVLogger("."), callbacks=[cb])
    for name in ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__"):
        original = getattr(Tensor, name)

        def guarded(self: Tensor, *args: Any, _f: Any = original, **kw: Any) -> Any:
            if inside[0]:
                reads.add(fit.global_step)
            return _f(self, *args, **kw)

        monkeypatch.setattr(Tensor, name, guarded)

    def inside_of(f: Callable[..., None]) -> Callable[..., None]:
        def wrapped(*args: Any) -> None:
            inside[0] = True
            try:
                f(*args)
            finally:
                inside[0] = False

        return wrapped

    for hook in ("on_train_start", "on_train_epoch_start", "on_before_optimizer_step", "on_train_batch_end"):
        setattr(cb, hook, inside_of(getattr(cb, hook)))
    fit.fit(Net(), loader(), loader(2))
    assert len(cb.HookParam.data) == 8
    assert reads <= {4, 8}


# ---- checkpoints ---------------------------------------------------------------------------------------


def test_a_resumed_fit_continues_the_records(tmp_path: Path) -> None:
    whole = k1lib.lightning.Watch(log_every=None)
    trainer(max_steps=6, callbacks=[whole]).fit(Net(), loader(3), loader(2))

    first = k1lib.lightning.Watch(log_every=None)
    fit = trainer(max_steps=3, callbacks=[first])
    fit.fit(Net(), loader(3), loader(2))
    path = tmp_path / "three.ckpt"
    fit.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)["callbacks"]  # plain tensors and lists
    assert list(saved) == ["Watch{'css': '*'}"]
    assert saved["Watch{'css': '*'}"]["HookParam"]["data"].shape == (3, 8, 4)

    other = k1lib.lightning.Watch("#up: all", log_every=None)  # another css: its own state
    resumed = k1lib.lightning.Watch(log_every=None)
    fit = trainer(max_steps=6, callbacks=[resumed, other])
    fit.fit(Net(), loader(3), loader(2), ckpt_path=path)
    assert len(resumed.HookParam.data) == 6 and len(other.HookParam.data) == 3
    assert_rows_equal(resumed, whole)  # rows 0-2 from the checkpoint, 3-5 recorded after it


# ---- hooks never outlive the fit ---------------------------------------------------------------------


def test_no_hook_is_left_when_the_fit_raises() -> None:
    net, cb = Net(fail_at=2), k1lib.lightning.Watch()
    with pytest.raises(RuntimeError, match="boom"):
        trainer(max_steps=6, callbacks=[cb]).fit(net, loader(), loader(2))
    assert hooks_left(net) == {}
    assert len(cb.HookParam.data) == 2 and len(cb.HookModule[1].backward.stds) == 2  # flushed
    assert repr(cb).startswith("k1lib.lightning.Watch (not recording)")
    trainer(max_steps=2, callbacks=[cb]).fit(Net(), loader(), loader(2))  # a new fit goes on
    assert len(cb.HookParam.data) == 4 and hooks_left(net) == {}


# ---- construction and import ---------------------------------------------------------------------------


def test_css_and_options_are_checked_when_constructed() -> None:
    with pytest.raises(ValueError, match=r"gives the prop 'HookModul'.*did you mean 'HookModule'\?"):
        k1lib.lightning.Watch("Linear: HookModul")
    with pytest.raises(modsel.SelectorSyntaxError):
        k1lib.lightning.Watch("Linear >")
    with pytest.raises(ValueError, match="log_every is 'step', 'epoch' or None, got 'batch'"):
        k1lib.lightning.Watch(log_every="batch")  # type: ignore[arg-type]
    assert isinstance(k1lib.lightning.Watch(), pl.Callback)


def test_importing_k1lib_does_not_import_lightning() -> None:
    code = "import sys, k1lib; assert not any(m.split('.')[0] == 'lightning' for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- the README ---------------------------------------------------------------------------------------


def _recipe(heading: str) -> str:
    """The first python block after ``heading``."""
    text = README.read_text(encoding="utf-8")
    block = re.search(r"```python\n(.*?)```", text[text.index(heading) :], re.S)
    assert block is not None
    return block.group(1)


@pytest.fixture
def _agg() -> Iterator[None]:
    import matplotlib

    backend = matplotlib.get_backend()
    matplotlib.use("Agg")
    yield
    matplotlib.use(backend)


@pytest.mark.usefixtures("_agg")
def test_the_lightning_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.figure import Figure

    monkeypatch.chdir(tmp_path)  # lightning_logs/
    namespace: dict[str, Any] = {}
    exec(compile(_recipe("### Lightning"), str(README), "exec"), namespace)
    cb, module = namespace["cb"], namespace["module"]
    assert cb.HookModule.names == ["net.0", "net.2", "net.4"] and cb.HookParam.names == [
        "net.4.weight",
        "net.4.bias",
    ]
    assert len(cb.HookParam.data) == 12 == len(cb.HookModule[0].backward.stds)  # 4 steps x 3 epochs
    assert cb.HookModule[2].backward.means.isfinite().all()
    assert isinstance(cb.HookModule.plot("means", "stds").plot(), Figure)
    assert hooks_left(module) == {}
    rows = _metrics_rows(next(tmp_path.glob("logs/lightning_logs/*/metrics.csv")))
    assert sum(bool(r.get("HookModule/backward/stds/net.2")) for r in rows) == 3  # once an epoch
