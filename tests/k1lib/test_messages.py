"""Messages (issue 14, point 8): warnings point at the user's line, not at k1lib's files, even
when a callback the loop calls raises them; exceptions print their public names and pickle."""

from __future__ import annotations

import pickle
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import k1lib
import modsel
from k1lib._warn import warn
from k1lib.callbacks import CancelException

from .helpers import learner


def caught(action: Callable[[], object]) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        action()
    return caught


def assert_points_here(found: list[warnings.WarningMessage], text: str) -> None:
    mine = [w for w in found if text in str(w.message)]
    assert mine, [str(w.message) for w in found]
    for w in mine:
        assert w.filename == __file__, (w.filename, w.lineno, str(w.message))


# ---- warnings ------------------------------------------------------------------------------------


def test_hook_module_selecting_nothing_points_at_l_run() -> None:
    l = learner()
    l.model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    l.opt = torch.optim.SGD(l.model.parameters(), lr=0.1)
    l.css = "Conv2d: HookModule"
    assert_points_here(caught(lambda: l.run(1)), "HookModule: l.css selects no module")


def test_hook_param_selecting_nothing_points_at_l_run() -> None:
    l = learner()
    l.css = "Conv2d: HookParam"
    assert_points_here(caught(lambda: l.run(1)), "HookParam: l.css selects no module")


def test_param_finder_points_at_the_users_line() -> None:
    l = learner(train=4)
    found = caught(lambda: l.ParamFinder.run(samples=10, start=1e-6, end=1e-5))
    assert_points_here(found, "did not diverge")
    found = caught(lambda: l.ParamFinder.plot(samples=10, start=1e-6, end=1e-5))
    assert_points_here(found, "did not diverge")


def test_load_warning_points_at_l_load(tmp_path: Any) -> None:
    l = learner()
    l.cbs.append(k1lib.callbacks.Callback(), "Extra")
    l.cbs.Extra.state_dict = lambda: {"x": 1}  # type: ignore[method-assign]
    l.save(tmp_path / "a.pth")
    fresh = learner()
    assert_points_here(caught(lambda: fresh.load(tmp_path / "a.pth")), "this learner lacks")


def test_modsel_actions_still_point_here() -> None:
    model = nn.Sequential(nn.Linear(2, 3))
    assert_points_here(caught(lambda: modsel.freeze(model, "Conv2d")), "selects no module")


def test_warn_from_a_forward_hook_skips_torch() -> None:
    # a k1lib helper warning inside a hook that nn.Module.__call__ runs: torch's frames are skipped
    model = nn.Linear(2, 1)
    model.register_forward_hook(lambda *_: warn("from a hook"))
    assert_points_here(caught(lambda: model(torch.zeros(1, 2))), "from a hook")


def test_warn_called_here_is_attributed_here() -> None:
    found = caught(lambda: warn("direct", RuntimeWarning))
    assert_points_here(found, "direct")
    assert found[0].category is RuntimeWarning


# ---- exceptions ----------------------------------------------------------------------------------

PUBLIC = [
    (modsel.ModselError, "modsel"),
    (modsel.SelectorSyntaxError, "modsel"),
    (modsel.TargetError, "modsel"),
    (k1lib.CheckpointError, "k1lib"),
    (k1lib.CancelBatchException, "k1lib"),
    (k1lib.CancelEpochException, "k1lib"),
    (k1lib.CancelRunException, "k1lib"),
    (CancelException, "k1lib.callbacks"),
]


@pytest.mark.parametrize(("cls", "module"), PUBLIC, ids=[c.__name__ for c, _ in PUBLIC])
def test_public_exceptions_name_their_public_module(cls: type[BaseException], module: str) -> None:
    assert cls.__module__ == module
    assert getattr(__import__(module, fromlist=["_"]), cls.__qualname__) is cls  # pickle's lookup


def test_traceback_prints_the_public_name() -> None:
    with pytest.raises(modsel.SelectorSyntaxError) as info:
        modsel.compile("Linear >")
    text = "".join(traceback.format_exception(info.value))
    assert "\nmodsel.SelectorSyntaxError: " in text
    assert "_errors" not in text.splitlines()[-4]


@pytest.mark.parametrize(
    "error",
    [
        modsel.TargetError("cannot load x"),
        k1lib.CheckpointError("bad file"),
        k1lib.CancelRunException("Low loss"),
        CancelException("stop"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_exceptions_pickle(error: BaseException) -> None:
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error) and back.args == error.args and str(back) == str(error)


def test_selector_syntax_error_pickles_with_its_position() -> None:
    with pytest.raises(modsel.SelectorSyntaxError) as info:
        modsel.compile("Linear,\n  > ReLU")
    error = info.value
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is modsel.SelectorSyntaxError
    assert (back.reason, back.pattern, back.line, back.column) == (
        error.reason,
        error.pattern,
        error.line,
        error.column,
    )
    assert str(back) == str(error) and back.args == error.args


def test_css_optimizer_warnings_point_at_the_callers_line() -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        k1lib.cssOptimizer(model, torch.optim.SGD, {"Conv2d": {"lr": 0.1}}, lr=0.01)
    assert [w.filename for w in caught] == [__file__]
    assert "selects no module of Sequential" in str(caught[0].message)
