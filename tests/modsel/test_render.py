"""The annotated tree: the seed README's output, golden files, the aligned props column, folding
of identical siblings, ``max_depth``, ``params``, ``only_selected`` and the HTML form.

Golden files live in ``tests/modsel/golden/``; ``MODSEL_REGEN_GOLDEN=1 pytest tests/modsel``
rewrites them (then read the diff before committing it).
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import modsel

from .models import Network, SkipBlock, network

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("MODSEL_REGEN_GOLDEN") == "1"

HOOKS_CSS = "SkipBlock #0: HookParam\nSkipBlock: HookModule"
PROPS_CSS = "\n#bulk > Linear: a\n#bulk > #1: b\nSkipBlock Sequential: c\nSkipBlock LeakyReLU\n"


def _skip_block(index: int, block: str = "", seq: str = "", first: str = "", relu: str = "") -> list[str]:
    lines = [
        f"        {index}: SkipBlock {block}",
        f"            seq: Sequential {seq}",
        f"                0: Linear {first}",
        f"                1: LeakyReLU {relu}",
        "                2: Linear",
        f"                3: LeakyReLU {relu}",
        "                4: Linear",
        f"                5: LeakyReLU {relu}",
    ]
    return [line.rstrip() for line in lines]


# The seed README's trees, written out by hand ("same for 3: SkipBlock and 4: SkipBlock" expanded).
SEED_HOOKS = [
    "ModuleSelector:",
    "root: Network",
    "    bulk: Sequential",
    "        0: Linear",
    "        1: LeakyReLU",
    *(line for i in (2, 3, 4) for line in _skip_block(i, block="HookModule", first="HookParam")),
    "        5: Linear",
]
SEED_PROPS = [
    "ModuleSelector:",
    "root: Network",
    "    bulk: Sequential",
    "        0: Linear a",
    "        1: LeakyReLU b",
    *(line for i in (2, 3, 4) for line in _skip_block(i, seq="c", relu="all")),
    "        5: Linear a",
]


def squeeze(text: str) -> list[str]:
    """Lines with runs of whitespace inside them made one space (indentation is kept)."""
    out = []
    for line in text.splitlines():
        indent = len(line) - len(line.lstrip(" "))
        out.append(" " * indent + " ".join(line.split()))
    return out


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    data = (text + "\n").encode("utf-8")
    if REGEN:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
    assert path.exists(), f"missing golden file {path}; run with MODSEL_REGEN_GOLDEN=1"
    assert path.read_bytes() == data, f"{name} differs from its golden file (MODSEL_REGEN_GOLDEN=1 rewrites)"


# a tree line: the label (single spaces inside), then after gaps of 2+ spaces the optional
# parameter count and the optional props
_LINE = re.compile(r"^(?P<label> *\S.*?)(?: {2,}(?P<count>[\d,]+))?(?: {2,}(?P<props>\S.*))?$")


def parse_line(line: str) -> re.Match[str]:
    m = _LINE.match(line)
    assert m is not None, line
    return m


def props_columns(text: str) -> set[int]:
    """Where the props start on each line that has props."""
    matches = [parse_line(line) for line in text.splitlines()[1:]]
    return {m.start("props") for m in matches if m.group("props")}


@pytest.fixture(scope="module")
def transformer48() -> nn.Transformer:
    torch.manual_seed(0)
    return nn.Transformer(
        num_encoder_layers=48, num_decoder_layers=48, d_model=16, nhead=2, dim_feedforward=16
    )


# ---- the seed README -----------------------------------------------------------------------------


@pytest.mark.parametrize(("css", "expected"), [(HOOKS_CSS, SEED_HOOKS), (PROPS_CSS, SEED_PROPS)])
def test_seed_readme_tree(css: str, expected: list[str]) -> None:
    text = repr(modsel.select(network(), css))
    assert squeeze(text) == expected


@pytest.mark.parametrize(("css", "name"), [(HOOKS_CSS, "seed_hooks.txt"), (PROPS_CSS, "seed_props.txt")])
def test_seed_golden(css: str, name: str) -> None:
    check_golden(name, repr(modsel.select(network(), css)))


@pytest.mark.parametrize("css", [HOOKS_CSS, PROPS_CSS])
def test_props_column_is_aligned(css: str) -> None:
    text = repr(modsel.select(network(), css))
    (column,) = props_columns(text)
    widest = max(len(parse_line(line).group("label")) for line in text.splitlines())
    assert column >= widest + 2


def test_tree_method_and_render_text_agree_with_repr() -> None:
    root = modsel.select(network(), HOOKS_CSS)
    assert root.tree() == repr(root) == modsel.render_text(root)
    assert root.tree(header=False) == "\n".join(repr(root).split("\n")[1:])


def test_no_stylesheet_rules_prints_the_bare_tree() -> None:
    text = repr(modsel.select(network(), ""))
    bare = [line.replace(" HookModule", "").replace(" HookParam", "") for line in SEED_HOOKS]
    assert squeeze(text) == bare


def test_subtree_render_starts_at_depth_zero() -> None:
    root = modsel.select(network(), HOOKS_CSS)
    text = root.bulk[2].tree(header=False)
    assert squeeze(text)[0] == "2: SkipBlock HookModule"
    assert squeeze(text)[1] == "    seq: Sequential"


# ---- folding -------------------------------------------------------------------------------------


def test_transformer_folds_identical_layers(transformer48: nn.Transformer) -> None:
    text = repr(modsel.select(transformer48, "LayerNorm: norm"))
    lines = squeeze(text)
    assert "            1…47: TransformerEncoderLayer ×47 (same as 0)" in lines
    assert "            1…47: TransformerDecoderLayer ×47 (same as 0)" in lines
    # one encoder layer printed in full, no other numbered layer
    assert "            0: TransformerEncoderLayer" in lines
    assert not any(re.match(r" {12}([1-9]|[1-4]\d): Transformer", line) for line in lines)
    assert sum(line.strip().startswith("norm1: LayerNorm") for line in lines) == 2  # enc + dec layer 0
    assert len(lines) < 50
    check_golden("transformer48.txt", text)


def test_fold_none_prints_everything(transformer48: nn.Transformer) -> None:
    text = modsel.select(transformer48, "LayerNorm: norm").tree(fold=None)
    assert "…" not in text
    lines = squeeze(text)
    for i in range(48):
        assert f"            {i}: TransformerEncoderLayer" in lines
        assert f"            {i}: TransformerDecoderLayer" in lines
    expected_nodes = len(list(transformer48.modules()))  # no module is shared in nn.Transformer
    assert len(lines) == 1 + expected_nodes


@pytest.mark.parametrize("n", [1, 2, 5])
def test_short_runs_are_never_folded(n: int) -> None:
    model = nn.ModuleList([nn.Linear(2, 2) for _ in range(n)])
    assert squeeze(repr(modsel.select(model, ""))) == [
        "ModuleSelector:",
        "root: ModuleList",
        *(f"    {i}: Linear" for i in range(n)),
    ]


def test_run_of_six_folds() -> None:
    model = nn.ModuleList([nn.Linear(2, 2) for _ in range(6)])
    assert squeeze(repr(modsel.select(model, ""))) == [
        "ModuleSelector:",
        "root: ModuleList",
        "    0: Linear",
        "    1…5: Linear ×5 (same as 0)",
    ]


def test_fold_threshold_is_an_option() -> None:
    model = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
    root = modsel.select(model, "")
    assert squeeze(root.tree(fold=2)) == [
        "ModuleSelector:",
        "root: ModuleList",
        "    0: Linear",
        "    1…2: Linear ×2 (same as 0)",
    ]


def test_siblings_with_different_props_are_not_folded_together() -> None:
    model = nn.ModuleList([nn.Linear(2, 2) for _ in range(20)])
    assert squeeze(repr(modsel.select(model, ":nth-child(10): x"))) == [
        "ModuleSelector:",
        "root: ModuleList",
        "    0: Linear",
        "    1…8: Linear ×8 (same as 0)",
        "    9: Linear x",
        "    10: Linear",
        "    11…19: Linear ×9 (same as 10)",
    ]


def test_siblings_with_different_parameter_shapes_are_not_folded_together() -> None:
    model = nn.ModuleList([nn.Linear(2, 2) if i % 2 else nn.Linear(2, 3) for i in range(12)])
    lines = squeeze(repr(modsel.select(model, "")))
    assert lines == ["ModuleSelector:", "root: ModuleList", *(f"    {i}: Linear" for i in range(12))]
    model = nn.ModuleList(
        [nn.Linear(2, 2) for _ in range(6)] + [nn.Linear(2, 2, bias=False) for _ in range(6)]
    )
    assert squeeze(repr(modsel.select(model, ""))) == [
        "ModuleSelector:",
        "root: ModuleList",
        "    0: Linear",
        "    1…5: Linear ×5 (same as 0)",
        "    6: Linear",
        "    7…11: Linear ×5 (same as 6)",
    ]


def test_siblings_with_different_children_are_not_folded_together() -> None:
    blocks = [nn.Sequential(nn.Linear(2, 2), nn.ReLU()) for _ in range(6)]
    blocks[3] = nn.Sequential(nn.Linear(2, 2), nn.Tanh())
    lines = squeeze(repr(modsel.select(nn.ModuleList(blocks), "")))
    assert not any("…" in line for line in lines)
    assert lines.count("        1: ReLU") == 5
    assert lines.count("        1: Tanh") == 1


def test_props_deep_inside_a_sibling_stop_folding() -> None:
    model = nn.ModuleList([nn.Sequential(nn.Linear(2, 2), nn.ReLU()) for _ in range(8)])
    lines = squeeze(repr(modsel.select(model, "#4 > ReLU: x")))
    assert lines == [
        "ModuleSelector:",
        "root: ModuleList",
        "    0: Sequential",
        "        0: Linear",
        "        1: ReLU",
        "    1: Sequential",
        "        0: Linear",
        "        1: ReLU",
        "    2: Sequential",
        "        0: Linear",
        "        1: ReLU",
        "    3: Sequential",
        "        0: Linear",
        "        1: ReLU",
        "    4: Sequential",
        "        0: Linear",
        "        1: ReLU x",
        "    5: Sequential",
        "        0: Linear",
        "        1: ReLU",
        "    6: Sequential",
        "        0: Linear",
        "        1: ReLU",
        "    7: Sequential",
        "        0: Linear",
        "        1: ReLU",
    ]


def test_fold_line_keeps_props_of_the_folded_run() -> None:
    model = nn.ModuleList([nn.Linear(2, 2) for _ in range(7)])
    lines = squeeze(repr(modsel.select(model, "Linear: p")))
    assert lines == [
        "ModuleSelector:",
        "root: ModuleList",
        "    0: Linear p",
        "    1…6: Linear ×6 (same as 0) p",
    ]


# ---- max_depth -----------------------------------------------------------------------------------


def test_max_depth() -> None:
    root = modsel.select(network(), "Linear: a")
    assert squeeze(root.tree(max_depth=2)) == [
        "ModuleSelector:",
        "root: Network",
        "    bulk: Sequential",
        "        0: Linear a",
        "        1: LeakyReLU",
        "        2: SkipBlock (+7 modules)",
        "        3: SkipBlock (+7 modules)",
        "        4: SkipBlock (+7 modules)",
        "        5: Linear a",
    ]
    assert squeeze(root.tree(max_depth=0)) == ["ModuleSelector:", "root: Network (+28 modules)"]
    assert squeeze(root.tree(max_depth=1)) == [
        "ModuleSelector:",
        "root: Network",
        "    bulk: Sequential (+27 modules)",
    ]
    assert root.tree(max_depth=4) == root.tree() == root.tree(max_depth=100)


def test_max_depth_one_module_below() -> None:
    model = nn.Sequential(nn.Sequential(nn.ReLU()))
    assert squeeze(modsel.select(model, "").tree(max_depth=1)) == [
        "ModuleSelector:",
        "root: Sequential",
        "    0: Sequential (+1 module)",
    ]


# ---- params --------------------------------------------------------------------------------------


def _count(text: str) -> int:
    return int(text.replace(",", ""))


def test_params_column_counts_each_subtree() -> None:
    model = network()
    root = modsel.select(model, "Linear: a")
    text = root.tree(params=True)
    lines = text.splitlines()[1:]
    modules = dict(model.named_modules())
    paths = [path for path, _ in root.named_modules()]
    assert len(lines) == len(paths)
    for line, path in zip(lines, paths, strict=True):
        m = parse_line(line)
        assert (
            m.group("label").strip() == f"{path.rsplit('.', 1)[-1] or 'root'}: {type(modules[path]).__name__}"
        )
        assert _count(m.group("count")) == sum(p.numel() for p in modules[path].parameters()), line
        assert m.group("props") == ("a" if isinstance(modules[path], nn.Linear) else None), line
    assert parse_line(lines[0]).group("count") == "1,021"  # Linear(1, 10), 9 x Linear(10, 10), Linear(10, 1)
    check_golden("network_params.txt", text)


def test_params_column_is_right_aligned_and_props_stay_aligned() -> None:
    text = modsel.select(network(), "Linear: a").tree(params=True)
    matches = [parse_line(line) for line in text.splitlines()[1:]]
    assert len({m.end("count") for m in matches}) == 1  # right-aligned counts
    assert len({m.start("count") for m in matches}) > 1  # (of different widths)
    assert len(props_columns(text)) == 1
    widest = max(len(m.group("label")) for m in matches)
    assert min(m.start("count") for m in matches) >= widest + 2


def test_params_of_a_fold_line_is_the_sum_of_the_run(transformer48: nn.Transformer) -> None:
    text = modsel.select(transformer48, "").tree(params=True)
    layer = sum(p.numel() for p in transformer48.encoder.layers[0].parameters())
    fold = next(line for line in text.splitlines() if "TransformerEncoderLayer ×47" in line)
    assert fold.split()[-1] == f"{47 * layer:,}"
    first = next(line for line in text.splitlines() if line.strip().startswith("0: TransformerEncoderLayer"))
    assert first.split()[-1] == f"{layer:,}"
    root_line = text.splitlines()[1]
    assert root_line.split()[-1] == f"{sum(p.numel() for p in transformer48.parameters()):,}"


# ---- only_selected -------------------------------------------------------------------------------


def test_only_selected() -> None:
    root = modsel.select(network(), "SkipBlock #0: HookParam\n#bulk > Linear:last-child: head")
    assert squeeze(root.tree(only_selected=True)) == [
        "ModuleSelector:",
        "root: Network",
        "    bulk: Sequential",
        "        2: SkipBlock",
        "            seq: Sequential",
        "                0: Linear HookParam",
        "        3: SkipBlock",
        "            seq: Sequential",
        "                0: Linear HookParam",
        "        4: SkipBlock",
        "            seq: Sequential",
        "                0: Linear HookParam",
        "        5: Linear head",
    ]


def test_only_selected_with_nothing_selected() -> None:
    assert squeeze(modsel.select(network(), "Conv2d").tree(only_selected=True)) == [
        "ModuleSelector:",
        "root: Network",
    ]


# ---- HTML ----------------------------------------------------------------------------------------


class Tagged(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({"<b>": nn.Linear(1, 1), "a&b": nn.ReLU()})


def test_repr_html_escapes() -> None:
    root = modsel.select(Tagged(), "#\\<b\\>: x")
    out = root._repr_html_()
    assert out.startswith("<pre")
    assert out.endswith("</pre>")
    body = re.sub(r"^<pre[^>]*>|</pre>$", "", out)
    assert "<b>" not in body
    assert "&lt;b&gt;: Linear" in body
    assert "a&amp;b: ReLU" in body
    assert re.search(r'<b style="[^"]*">x</b>$', body.splitlines()[3]), "props are highlighted"
    assert html.unescape(_unhighlight(body)) == repr(root)
    assert modsel.render_html(root) == out


def _unhighlight(body: str) -> str:
    """The HTML body without the tags that highlight props."""
    return re.sub(r'<b style="[^"]*">|</b>', "", body)


def test_html_of_seed_tree_unescapes_to_text() -> None:
    root = modsel.select(network(), HOOKS_CSS)
    body = re.sub(r"^<pre[^>]*>|</pre>$", "", root._repr_html_())
    assert html.unescape(_unhighlight(body)) == repr(root)


# ---- keep the fixture classes honest -------------------------------------------------------------


def test_fixture_is_the_seed_network() -> None:
    model = network()
    assert isinstance(model, Network)
    assert [type(m).__name__ for m in model.bulk] == [
        "Linear",
        "LeakyReLU",
        "SkipBlock",
        "SkipBlock",
        "SkipBlock",
        "Linear",
    ]
    assert isinstance(model.bulk[2], SkipBlock)


# ---- trainable vs frozen ---------------------------------------------------------------------------
def test_params_column_counts_frozen_parameters() -> None:
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    model[0].weight.requires_grad_(False)  # 6 frozen of the first layer's 9
    lines = modsel.select(model, "").tree(params=True).splitlines()
    assert lines[1].split() == ["root:", "Sequential", "13", "(6", "frozen)"]
    assert lines[2].split() == ["0:", "Linear", "9", "(6", "frozen)"]
    assert lines[3].split() == ["1:", "Linear", "4"]


def test_no_frozen_column_when_everything_trains() -> None:
    text = modsel.select(nn.Sequential(nn.Linear(2, 3)), "").tree(params=True)
    assert "frozen" not in text


def test_siblings_that_differ_in_trainability_do_not_fold_together() -> None:
    model = nn.ModuleList([nn.Linear(1, 1) for _ in range(8)])
    model[4].weight.requires_grad_(False)
    text = modsel.select(model, "").tree()
    assert "×" not in text  # runs of 4 and 3: neither longer than 5
    for p in model[4].parameters():
        p.requires_grad_(True)
    assert "1…7: Linear ×7 (same as 0)" in modsel.select(model, "").tree()


# ---- names that could forge lines --------------------------------------------------------------------


FORGED = nn.ModuleDict({"a\nroot: Evil": nn.Linear(1, 1), "b\x1b[31m": nn.ReLU()})


def test_control_characters_in_names_are_escaped_in_text_and_html() -> None:
    tree = modsel.select(FORGED, "Linear: x")
    text = tree.tree()
    assert text.splitlines() == [
        "ModuleSelector:",
        "root: ModuleDict",
        "    a\\nroot: Evil: Linear    x",
        "    b\\x1b[31m: ReLU",
    ]
    assert "\x1b" not in text
    shown = html.unescape(re.sub(r"<[^>]+>", "", modsel.render_html(tree)))
    assert shown.count("\n") == text.count("\n") and "a\\nroot: Evil: Linear" in shown
