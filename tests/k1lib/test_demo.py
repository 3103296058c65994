"""The main job of the README: ``python -m k1lib FOLDER`` and the same under torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

PNGS = {"HookModule.png", "HookParam.png", "LossLandscape.png", "ParamFinder.png", "loss.png"}


def run(command: list[str], cwd: Path) -> str:
    env = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    }
    env["OMP_NUM_THREADS"] = "1"
    try:
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{' '.join(command)} did not finish in 300 s:\n{e.stdout}\n{e.stderr}")
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_the_demo_trains_and_writes_its_pngs(tmp_path: Path) -> None:
    out = run([sys.executable, "-m", "k1lib", "demo", "--epochs", "2"], tmp_path)
    assert "SkipBlock" in out and "Suggested param:" in out and "Training 2 epochs:" in out
    assert "Saved to demo/autosave-2.pth" in out
    assert PNGS | {"autosave-2.pth"} <= {p.name for p in (tmp_path / "demo").iterdir()}


@pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)
def test_the_demo_under_torchrun_prints_and_writes_once(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    out = run([*command, "-m", "k1lib", "demo", "--epochs", "2"], tmp_path)
    assert out.count("Suggested param:") == 1 and out.count("Saved to demo/autosave-2.pth") == 1
    assert "Training 2 epochs on 2 processes:" in out
    assert PNGS | {"autosave-2.pth"} <= {p.name for p in (tmp_path / "demo").iterdir()}


def test_the_demo_sharded_by_fsdp_trains_and_draws_the_landscape_from_one_file(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    out = run([*command, "-m", "k1lib", "--strategy", "fsdp", "demo", "--epochs", "2"], tmp_path)
    assert "Training 2 epochs on 2 processes:" in out and out.count("Loss landscape:") == 1
    written = {p.name for p in (tmp_path / "demo").iterdir()}
    assert PNGS | {"autosave-2.pth", "final", "weights.pt"} <= written
    assert (tmp_path / "demo" / "autosave-2.pth").is_dir()  # each rank wrote its shards
    assert (tmp_path / "demo" / "final" / "k1lib-manifest.json").is_file()  # a sharded checkpoint
