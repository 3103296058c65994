"""The annotated tree: the seed README's output, golden files, the aligned props column, folding
of identical siblings, ``max_depth``, ``params``, ``only_selected`` and the HTML form.

Golden files live in ``tests/modsel/golden/``; ``MODSEL_REGEN_GOLDEN=1 pytest tests/modsel``
rewrites them (then read the diff before committing it).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import modsel

from .models import Network, Shared, SkipBlock, network
from .util import shown_text

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
        "        2: SkipBlock (+7 modules) … 3 selected below",
        "        3: SkipBlock (+7 modules) … 3 selected below",
        "        4: SkipBlock (+7 modules) … 3 selected below",
        "        5: Linear a",
    ]
    assert squeeze(root.tree(max_depth=0)) == [
        "ModuleSelector:",
        "root: Network (+28 modules) … 11 selected below",
    ]
    assert squeeze(root.tree(max_depth=1)) == [
        "ModuleSelector:",
        "root: Network",
        "    bulk: Sequential (+27 modules) … 11 selected below",
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
    assert "<b>" not in out
    assert "&lt;b&gt;: Linear" in out
    assert "a&amp;b: ReLU" in out
    assert re.search(r'<b style="[^"]*">x</b>$', out.splitlines()[3]), "props are highlighted"
    assert shown_text(out) == repr(root)
    assert modsel.render_html(root) == out


def test_html_of_seed_tree_unescapes_to_text() -> None:
    root = modsel.select(network(), HOOKS_CSS)
    assert shown_text(root._repr_html_()) == repr(root)


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
    shown = shown_text(modsel.render_html(tree))
    assert shown.count("\n") == text.count("\n") and "a\\nroot: Evil: Linear" in shown


# ---- what a cut by max_depth hides -------------------------------------------------------------------


def test_a_cut_node_without_selections_below_has_no_note() -> None:
    root = modsel.select(network(), "#bulk > Linear: a")
    assert squeeze(root.tree(max_depth=2))[5:8] == [
        "        2: SkipBlock (+7 modules)",
        "        3: SkipBlock (+7 modules)",
        "        4: SkipBlock (+7 modules)",
    ]
    assert "selected below" not in root.tree(max_depth=2)


def test_a_selected_cut_node_counts_only_what_is_below_it() -> None:
    root = modsel.select(network(), "SkipBlock: s\nSkipBlock Linear: a")
    lines = squeeze(root.tree(max_depth=2))
    assert lines[5] == "        2: SkipBlock (+7 modules) s … 3 selected below"
    assert squeeze(root.tree(max_depth=0))[1] == "root: Network (+28 modules) … 12 selected below"


def test_the_note_follows_the_aligned_props_and_counts() -> None:
    root = modsel.select(network(), "Linear: a")
    text = root.tree(max_depth=2, params=True)
    lines = text.splitlines()
    assert lines[5].split() == ["2:", "SkipBlock", "(+7", "modules)", "330", "…", "3", "selected", "below"]
    columns = {parse_line(line).start("props") for line in lines[1:] if parse_line(line).group("props")}
    assert len(columns) == 1  # "a" and "… 3 selected below" start in the same column


def test_a_cut_with_only_selected_counts_selections_below() -> None:
    root = modsel.select(network(), "SkipBlock #0: HookParam")
    assert squeeze(root.tree(max_depth=2, only_selected=True)) == [
        "ModuleSelector:",
        "root: Network",
        "    bulk: Sequential",
        "        2: SkipBlock (+7 modules) … 1 selected below",
        "        3: SkipBlock (+7 modules) … 1 selected below",
        "        4: SkipBlock (+7 modules) … 1 selected below",
    ]


def test_html_shows_what_a_cut_hides() -> None:
    root = modsel.select(network(), "SkipBlock: s\nSkipBlock Linear: a")
    out = modsel.render_html(root, max_depth=2)
    line = next(line for line in out.splitlines() if "2: SkipBlock" in line)
    assert re.search(r'<b style="[^"]*">s</b> <i style="[^"]*">… 3 selected below</i>$', line)
    assert shown_text(out) == root.tree(max_depth=2)


# ---- tied parameters: each tensor counted once per subtree ---------------------------------------


def _counts(text: str) -> list[int]:
    return [_count(parse_line(line).group("count")) for line in text.splitlines()[1:]]


def _distinct(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())  # torch counts each tensor once


class TiedHead(nn.Module):
    """An embedding and a head that shares its weight (as GPT-2's lm_head does)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4))
        self.head = nn.Linear(4, 10)
        self.head.weight = self.body[0].weight


def test_a_tied_weight_counts_once_and_its_later_holder_is_marked() -> None:
    model = TiedHead()
    text = modsel.select(model, "").tree(params=True)
    assert squeeze(text) == [
        "ModuleSelector:",
        "root: TiedHead 70",  # 40 + 20 + 10 (the head's bias); torch agrees
        "    body: Sequential 60",
        "        0: Embedding 40",
        "        1: Linear 20",
        "    head: Linear 50 (tied with body.0)",
    ]
    assert _counts(text)[0] == _distinct(model) == 70


def test_a_module_at_two_places_counts_once() -> None:
    model = Shared()  # one Linear(2, 2) at ``a`` and ``b.inner``, and a Linear(2, 3) without bias
    text = modsel.select(model, "").tree(params=True)
    assert squeeze(text) == [
        "ModuleSelector:",
        "root: Shared 12",
        "    a: Linear 6",
        "    b: Sequential 6",
        "        inner: Linear 6 (tied with a)",
        "        relu: ReLU 0",
        "    c: Linear 6",
    ]


def test_frozen_tied_weights_count_once() -> None:
    model = TiedHead()
    model.head.weight.requires_grad_(False)  # the embedding's too: one tensor
    lines = modsel.select(model, "").tree(params=True).splitlines()
    assert lines[1].split() == ["root:", "TiedHead", "70", "(40", "frozen)"]
    assert lines[5].split()[-6:] == ["50", "(40", "frozen)", "(tied", "with", "body.0)"]


def test_one_tensor_in_two_slots_of_one_module() -> None:
    model = nn.Linear(3, 3)
    model.register_parameter("again", model.weight)
    text = modsel.select(nn.Sequential(model), "").tree(params=True)
    assert squeeze(text)[1:] == ["root: Sequential 12", "    0: Linear 12 (tied with 0.weight)"]


def test_marks_name_every_first_place() -> None:
    a, b, c = nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2)
    c.weight, c.bias = a.weight, b.bias
    text = modsel.select(nn.Sequential(a, b, c), "").tree(params=True)
    assert squeeze(text) == [
        "ModuleSelector:",
        "root: Sequential 12",
        "    0: Linear 6",
        "    1: Linear 6",
        "    2: Linear 6 (tied with 0, 1)",
    ]


def test_a_repeated_block_folds_and_its_run_counts_once() -> None:
    block = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    model = nn.Sequential(nn.ModuleList([block] * 12), nn.Linear(2, 2))
    text = modsel.select(model, "").tree(params=True)
    assert squeeze(text) == [
        "ModuleSelector:",
        "root: Sequential 12",
        "    0: ModuleList 6",
        "        0: Sequential 6",
        "            0: Linear 6",
        "            1: ReLU 0",
        "        1: Sequential 6",  # differs from 0 by its mark below, so shown
        "            0: Linear 6 (tied with 0.0.0)",
        "            1: ReLU 0",
        "        2…11: Sequential ×10 (same as 1) 6",
        "    1: Linear 6",
    ]
    assert _counts(text)[0] == _distinct(model)


def test_a_fold_run_of_untied_siblings_still_sums_when_the_tree_has_ties() -> None:
    model = nn.Sequential(nn.ModuleList([nn.Linear(2, 2) for _ in range(8)]), nn.Linear(2, 2))
    model[1].weight = model[0][0].weight
    text = modsel.select(model, "").tree(params=True)
    assert "        1…7: Linear ×7 (same as 0) 42" in squeeze(text)
    assert _counts(text)[0] == _distinct(model) == 50


def test_a_subtree_render_counts_what_it_holds() -> None:
    model = TiedHead()
    root = modsel.select(model, "")
    assert squeeze(root.head.tree(params=True, header=False)) == ["head: Linear 50"]


def _random_tied_model(seed: int) -> nn.Module:
    """A random tree of Sequentials and Linears where random Linears share weights, biases or
    whole modules with earlier ones."""
    rng = torch.Generator().manual_seed(seed)

    def pick(n: int) -> int:
        return int(torch.randint(n, (1,), generator=rng))

    linears: list[nn.Linear] = []
    root = nn.Sequential()
    parents = [root]
    for i in range(40):
        parent = parents[pick(len(parents))]
        kind = pick(5)
        if kind == 0:
            child: nn.Module = nn.Sequential()
            parents.append(child)  # type: ignore[arg-type]
        elif kind == 1 and linears:
            child = linears[pick(len(linears))]  # the same module again
        else:
            linear = nn.Linear(2, 2, bias=pick(2) == 0)
            if kind == 3 and linears:
                linear.weight = linears[pick(len(linears))].weight
            elif kind == 4 and linears and linears[0].bias is not None:
                linear.bias = linears[0].bias
            if pick(3) == 0:
                linear.weight.requires_grad_(False)
            linears.append(linear)
            child = linear
        parent.add_module(str(i), child)
    return root


@pytest.mark.parametrize("seed", range(20))
def test_every_subtree_count_is_torchs(seed: int) -> None:
    model = _random_tied_model(seed)
    root = modsel.select(model, "")
    text = root.tree(params=True, fold=None)
    for line, (path, node) in zip(text.splitlines()[1:], root.named_modules(), strict=True):
        params = list(node.module.parameters())
        total = sum(p.numel() for p in params)
        frozen = sum(p.numel() for p in params if not p.requires_grad)
        line = line.split(" (tied with ")[0]  # the mark comes last
        words = line.split()
        assert f"{total:,}" in words, (path, line)
        if frozen:
            assert line.rstrip().endswith(f"({frozen:,} frozen)"), (path, line)
        else:
            assert "frozen" not in line, (path, line)
    folded = root.tree(params=True)
    assert _counts(folded)[0] == _distinct(model)
