"""The annotated tree of real architectures (issue 13): parameter counts that count a tied tensor
once (the root's count is the one a model card gives, torch's ``sum(p.numel() for p in
model.parameters())``), the tied holders marked with the first place that holds the tensor, the
same counts and marks in HTML and from the command line, and cut nodes that say how many
selected modules they hide."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from torch import nn

import modsel
from modsel._cli import main

from ..real_models import bert, gpt2, llama, lora, resnet, t5
from .util import shown_text

GOLDEN = Path(__file__).parent / "golden"

# path of each tied holder -> the first places it names; every other line has no mark
TIES: dict[str, tuple[Callable[[], Any], dict[str, str]]] = {
    "gpt2": (gpt2, {"lm_head": "transformer.wte"}),
    "bert": (bert, {"cls.predictions.decoder": "bert.embeddings.word_embeddings, cls.predictions"}),
    "t5": (t5, {"encoder.embed_tokens": "shared", "decoder.embed_tokens": "shared", "lm_head": "shared"}),
    "llama": (llama, {"lm_head": "model.embed_tokens"}),
    "llama untied": (lambda: llama(tied=False), {}),
    "lora": (lora, {"base_model.model.lm_head": "base_model.model.model.embed_tokens"}),
    "resnet": (resnet, {}),
}
_MARK = re.compile(r" \(tied with ([^)]*)\)")


def _numbers(line: str) -> tuple[int, int]:
    """(count, frozen) written on a tree line (frozen 0 when not written)."""
    frozen = re.search(r"\(([\d,]+) frozen\)", line)
    rest = line[: frozen.start()] if frozen else line
    counts = re.findall(r"(?<=\s)[\d,]+(?=\s|$)", rest)
    return int(counts[-1].replace(",", "")), int(frozen.group(1).replace(",", "")) if frozen else 0


def _torch_counts(module: nn.Module) -> tuple[int, int]:
    params = list(module.parameters())  # each tensor once
    return sum(p.numel() for p in params), sum(p.numel() for p in params if not p.requires_grad)


@pytest.fixture(scope="module", params=list(TIES))
def built(request: pytest.FixtureRequest) -> tuple[str, nn.Module, dict[str, str]]:
    build, ties = TIES[request.param]
    return request.param, build(), ties


def test_the_root_count_is_torchs(built: tuple[str, nn.Module, dict[str, str]]) -> None:
    _, model, _ = built
    for fold in (5, None):
        text = modsel.select(model, "").tree(params=True, fold=fold)
        assert _numbers(text.splitlines()[1]) == _torch_counts(model)


def test_every_subtree_count_is_torchs(built: tuple[str, nn.Module, dict[str, str]]) -> None:
    _, model, _ = built
    root = modsel.select(model, "")
    lines = root.tree(params=True, fold=None).splitlines()[1:]
    nodes = list(root.named_modules())
    assert len(lines) == len(nodes)
    for line, (path, node) in zip(lines, nodes, strict=True):
        assert _numbers(line) == _torch_counts(node.module), (path, line)


def test_tied_holders_are_marked_with_the_first_place(built: tuple[str, nn.Module, dict[str, str]]) -> None:
    _, model, ties = built
    root = modsel.select(model, "")
    lines = root.tree(params=True, fold=None).splitlines()[1:]
    marked = {}
    for line, (path, _) in zip(lines, root.named_modules(), strict=True):
        m = _MARK.search(line)
        if m:
            marked[path] = m.group(1)
    assert marked == ties
    assert "tied with" not in root.tree()  # the marks explain counts: only with params


def test_gpt2_tree() -> None:
    text = modsel.select(gpt2(), "#lm_head: head").tree(params=True, max_depth=2)
    assert [" ".join(line.split()) for line in text.splitlines()] == [
        "ModuleSelector:",
        "root: GPT2LMHeadModel 28,544",
        "transformer: GPT2Model 28,544",
        "wte: Embedding 2,048",
        "wpe: Embedding 1,024",
        "drop: Dropout 0",
        "h: ModuleList (+26 modules) 25,408",
        "ln_f: LayerNorm 64",
        "lm_head: Linear 2,048 head (tied with transformer.wte)",
    ]


def test_lora_counts_frozen_tensors_once() -> None:
    model = lora()
    frozen = {id(p): p.numel() for p in model.parameters() if not p.requires_grad}
    first = modsel.select(model, "").tree(params=True).splitlines()[1]
    assert _numbers(first) == (sum(p.numel() for p in model.parameters()), sum(frozen.values()))
    assert model.base_model.model.lm_head.weight is model.base_model.model.model.embed_tokens.weight


def test_an_untied_model_renders_as_before() -> None:
    # written by the renderer before tied tensors were counted once: a model without ties
    # must not change
    text = modsel.select(resnet(), "Conv2d: conv").tree(params=True)
    assert (text + "\n").encode() == (GOLDEN / "resnet_params.txt").read_bytes()


@pytest.mark.parametrize("name", ["gpt2", "bert", "t5", "lora"])
def test_html_has_the_same_counts_and_marks(name: str) -> None:
    root = modsel.select(TIES[name][0](), "Linear: x")
    for options in ({"params": True}, {"params": True, "max_depth": 2}):
        out = modsel.render_html(root, **options)  # type: ignore[arg-type]
        assert shown_text(out) == root.tree(**options)
    assert "tied with" in modsel.render_html(root, params=True)


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_cli_params_of_gpt2() -> None:
    code, out, err = run("tests.real_models:gpt2", "#lm_head", "--params")
    assert (code, err) == (0, "")
    lines = [" ".join(line.split()) for line in out.splitlines()]
    assert lines[1] == f"root: GPT2LMHeadModel {sum(p.numel() for p in gpt2().parameters()):,}"
    assert "lm_head: Linear 2,048 all (tied with transformer.wte)" in lines


def test_cli_params_of_t5_with_constructor_arguments() -> None:
    code, out, _ = run("tests.real_models:t5(seed=3)", "Embedding", "--params", "--depth", "2")
    assert code == 0
    lines = [" ".join(line.split()) for line in out.splitlines()]
    assert lines[1] == f"root: T5ForConditionalGeneration {sum(p.numel() for p in t5().parameters()):,}"
    assert lines.count("embed_tokens: Embedding 2,048 all (tied with shared)") == 2


def test_cli_depth_says_what_is_selected_below() -> None:
    code, out, _ = run("tests.real_models:llama", "Linear: x", "--depth", "2")
    assert code == 0
    model = llama()
    per_layer = sum(isinstance(m, nn.Linear) for m in model.model.layers[0].modules())
    lines = [" ".join(line.split()) for line in out.splitlines()]
    modules = len(list(model.model.layers[0].modules())) - 1
    assert lines[3:6] == [
        "embed_tokens: Embedding",
        f"layers: ModuleList (+{2 * (modules + 1)} modules) … {2 * per_layer} selected below",
        "norm: LlamaRMSNorm",
    ]
    assert lines[-1] == "lm_head: Linear x"
