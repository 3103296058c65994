"""Every k1lib test module runs in its own empty directory: Autosave writes checkpoints to the
current directory, as the 2021 k1lib did, and a test must not leave files in the checkout.
Torch runs one thread: the models here are tiny, and on a busy 2-core machine a second thread
makes them many times slower, not faster."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="module")
def _in_tmp_dir(tmp_path_factory: pytest.TempPathFactory) -> object:
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("cwd"))
        yield Path.cwd()


@pytest.fixture
def own_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory of the test's own (for tests that count the files in it)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
