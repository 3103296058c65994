"""Speed benchmark for modsel: matching, stylesheets, parsing and wide lists, against fixed goals.

Run ``python benchmarks/bench_modsel.py`` (``--quick`` for fewer repeats); see benchmarks/README.md.

Every time is a median over several runs, each taken after ``gc.collect()`` with
``time.perf_counter``. Ratios compare two medians measured in this run, the two calls timed
alternately (A, B, A, B, ...), so that a slow phase of a noisy machine hits both sides alike.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING
from xml.sax.saxutils import quoteattr

import torch
from synthetic import Synthetic  # benchmarks/ is on sys.path when a script here runs
from torch import nn

import modsel

if TYPE_CHECKING:
    from bs4 import BeautifulSoup

# ---- what is measured against what ----------------------------------------------------------
MATCH_SELECTORS = ("Linear", "ModuleList > * Linear")
# structural selectors for the soupsieve comparison (soupsieve's cost grows with them)
STRUCTURAL_SELECTORS = (
    ":has(> LayerNorm)",
    "Sequential > Linear + GELU",
    ":nth-child(2n+1 of Linear)",
    "Module > :not(:has(Linear))",
)

SYNTHETIC_CSS = (
    "Linear: a\n#attn > #q: b\n#mlp Linear: c\n:has(> LayerNorm): d\nModuleList > *:has(Dropout): e"
)
TRANSFORMER_CSS = (
    "Linear: a\n#self_attn > #out_proj: b\n#layers #linear1: c\n"
    ":has(> #norm1): d\nModuleList > *:has(Dropout): e"
)

WIDE_SELECTORS = (":nth-child(2n+1)", ":nth-last-of-type(3)", "Linear ~ ReLU", ":nth-child(odd of Linear)")
WIDE_SIZES = (7_000, 14_000)

GOAL_MATCH = 1.5  # modsel.match <= 1.5 x list(named_modules())
GOAL_SELECT = 3.0  # modsel.select, caches warm, <= 3 x list(named_modules())
GOAL_SOUPSIEVE = 5.0  # soupsieve / modsel >= 5
GOAL_PARSE_S = 0.100  # 1,000-rule stylesheet parses in < 100 ms
GOAL_WIDE = 3.0  # 14k / 7k children: ~2 is linear, ~4 quadratic; fail above 3
# a failing descendant chain "#nope * * ... *" on a chain of nested modules, twice as deep with
# twice the combinators: ~4 is linear in modules x combinators (at 13 / 25 compounds, more than
# modsel's MAX_CLOSURE_CHAIN, both go through its explicit-stack matcher; small sizes, where fixed
# costs weigh, measure less); exponential matching took 5 s at 25/12 and never ended at 30/14
DEEP_CASES = ((25, 12), (50, 24))
GOAL_DEEP = 8.0
# the first descendant step on a 5,000 / 10,000-deep chain, matched on a document built outside
# the timing (building one is superlinear in the depth: each node's path is as long as its
# depth): ~2 is linear in the depth, ~4 quadratic (each node walking all its ancestors)
DEEP_CHAIN = (5_000, 10_000)
DEEP_CHAIN_SELECTORS = ("#nope *", "Identity Sequential")
GOAL_DEEP_CHAIN = 3.0

DEFAULT_BLOCKS = 7_700  # x 13 modules + 2 = 100,102 modules


@dataclass(frozen=True)
class Repeats:
    baseline: int
    paired: int
    soupsieve: int
    parse: int
    wide: int


FULL = Repeats(baseline=9, paired=7, soupsieve=3, parse=7, wide=9)
QUICK = Repeats(baseline=3, paired=3, soupsieve=1, parse=3, wide=3)


# ---- models ---------------------------------------------------------------------------------
def transformer() -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # enable_nested_tensor warning of the default settings
        return nn.Transformer(
            num_encoder_layers=48, num_decoder_layers=48, d_model=64, nhead=2, dim_feedforward=64
        )


def wide(size: int) -> nn.Module:
    """A ModuleList of ``size`` children cycling Linear, ReLU, GELU."""
    kinds: tuple[Callable[[], nn.Module], ...] = (lambda: nn.Linear(1, 1), nn.ReLU, nn.GELU)
    return nn.ModuleList(kinds[i % 3]() for i in range(size))


def module_count(model: nn.Module) -> int:
    return sum(1 for _ in model.named_modules())


# ---- timing ---------------------------------------------------------------------------------
def timed(fn: Callable[[], object]) -> float:
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_time(fn: Callable[[], object], repeats: int) -> float:
    return statistics.median(timed(fn) for _ in range(repeats))


def paired(a: Callable[[], object], b: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Medians of ``a`` and ``b``, timed alternately."""
    times_a: list[float] = []
    times_b: list[float] = []
    for _ in range(repeats):
        times_a.append(timed(a))
        times_b.append(timed(b))
    return statistics.median(times_a), statistics.median(times_b)


def clear_caches() -> int:
    """Forget parsed and compiled selectors: clear every ``functools`` cache in modsel except the
    loaded grammar. Returns how many caches were cleared."""
    cleared = 0
    for module_name, module in list(sys.modules.items()):
        if module_name != "modsel" and not module_name.startswith("modsel."):
            continue
        for name, value in list(vars(module).items()):
            if name not in KEEP_CACHES and callable(getattr(value, "cache_clear", None)):
                value.cache_clear()
                cleared += 1
    return cleared


KEEP_CACHES = {"_lark"}  # the Lark parser object: built once per process


Call = Callable[[], object]


# ---- the table ------------------------------------------------------------------------------
NAME_WIDTH = 56
COLUMNS = f"{'name':<{NAME_WIDTH}} {'median s':>9} {'ratio':>14}  {'goal':<16} {'result':<6} note"


@dataclass
class Row:
    name: str
    seconds: float
    ratio: str = "-"
    goal: str = "-"
    passed: bool | None = None
    note: str = ""
    value: float = 0.0  # the figure compared with the goal
    call: Call | None = None  # the modsel call measured, for --profile


@dataclass
class Goal:
    """``value <= limit`` (or ``>=`` with ``at_least``) for every row checked against it."""

    text: str
    limit: float
    unit: str  # how values are written: "x base", "x ss/ms", "x 14k/7k", "s"
    at_least: bool = False
    rows: list[Row] = field(default_factory=list)

    def check(self, name: str, seconds: float, value: float, note: str = "", call: Call | None = None) -> Row:
        passed = value >= self.limit if self.at_least else value <= self.limit
        op = ">=" if self.at_least else "<="
        if self.unit == "s":
            ratio, goal = "-", f"{op} {1000 * self.limit:.0f} ms"
        else:
            ratio, goal = f"{value:.2f}{self.unit}", f"{op} {self.limit:g}{self.unit.split()[0]}"
        row = show(Row(name, seconds, ratio, goal, passed, note, value, call))
        self.rows.append(row)
        return row

    def verdict(self) -> str:
        failed = [row for row in self.rows if not row.passed]
        if not failed:
            return f"PASS  {self.text}"
        worst = (min if self.at_least else max)(failed, key=lambda row: row.value)
        shown = f"{worst.seconds:.4f} s" if self.unit == "s" else worst.ratio
        return f"FAIL  {self.text}: {len(failed)}/{len(self.rows)} rows fail, worst {worst.name}: {shown}"


def show(row: Row) -> Row:
    result = "-" if row.passed is None else ("PASS" if row.passed else "FAIL")
    line = (
        f"{row.name:<{NAME_WIDTH}} {row.seconds:>9.4f} {row.ratio:>14}  {row.goal:<16} {result:<6} {row.note}"
    )
    print(line.rstrip())
    sys.stdout.flush()
    return row


_STARTED = time.perf_counter()


def section(title: str) -> None:
    print(f"\n-- {title}  [at {time.perf_counter() - _STARTED:.0f} s]")


# ---- sections -------------------------------------------------------------------------------
def bench_model(label: str, model: nn.Module, css: str, reps: Repeats, goals: dict[str, Goal]) -> None:
    def baseline() -> object:
        return list(model.named_modules())

    section(f"{label} ({type(model).__name__}): {module_count(model):,} modules")
    show(Row(f"baseline list(named_modules()) [{label}]", median_time(baseline, reps.baseline), "1.00x base"))

    for selector in MATCH_SELECTORS:
        call: Call = partial(modsel.match, model, selector)
        count = len(modsel.match(model, selector))  # compiles: the steady state is timed
        base, took = paired(baseline, call, reps.paired)
        goals["match"].check(f"match {selector!r} [{label}]", took, took / base, f"{count:,} matches", call)

    # select: baseline, cold (every parse/compile cache cleared just before, outside the timing)
    # and warm, timed in turn
    select_call: Call = partial(modsel.select, model, css)
    assert clear_caches() > 0, "found no modsel caches to clear"
    times: dict[str, list[float]] = {"base": [], "cold": [], "warm": []}
    select_call()
    for _ in range(reps.paired):
        times["base"].append(timed(baseline))
        clear_caches()
        times["cold"].append(timed(select_call))
        times["warm"].append(timed(select_call))
    base, cold, warm = (statistics.median(times[k]) for k in ("base", "cold", "warm"))
    goals["select"].check(f"select 5 rules, warm [{label}]", warm, warm / base, call=select_call)
    note = f"cold - warm = {1000 * (cold - warm):.1f} ms"
    show(Row(f"select 5 rules, cold: parse+compile [{label}]", cold, f"{cold / base:.2f}x base", note=note))


def soup_of(model: nn.Module) -> BeautifulSoup:
    """The model as an XML document: tag = class name, id = registered name (``root``)."""
    from bs4 import BeautifulSoup

    parts: list[str] = []

    def add(module: nn.Module, name: str) -> None:
        tag = type(module).__name__
        kids = [(key, kid) for key, kid in module._modules.items() if kid is not None]
        if not kids:
            parts.append(f"<{tag} id={quoteattr(name)}/>")
            return
        parts.append(f"<{tag} id={quoteattr(name)}>")
        for key, kid in kids:
            add(kid, key)
        parts.append(f"</{tag}>")

    add(model, "root")
    return BeautifulSoup("".join(parts), "xml")


def rule_selectors(css: str) -> list[tuple[str, str]]:
    """(selector, prop) of each ``selector: prop`` line."""
    pairs = [line.rsplit(": ", 1) for line in css.splitlines()]
    return [(selector, prop) for selector, prop in pairs]


def bench_soupsieve(model: nn.Module, css: str, reps: Repeats, goals: dict[str, Goal]) -> None:
    section("soupsieve on the same tree as XML (document built outside the timing)")
    start = time.perf_counter()
    soup = soup_of(model)
    print(f"   (BeautifulSoup XML document built in {time.perf_counter() - start:.1f} s, not timed)")

    for selector in MATCH_SELECTORS + STRUCTURAL_SELECTORS:
        found_ss = len(soup.select(selector))
        found_ms = len(modsel.match(model, selector))
        assert found_ss == found_ms, f"{selector!r}: soupsieve {found_ss} != modsel {found_ms}"
        ms, ss = paired(
            partial(modsel.match, model, selector), partial(soup.select, selector), reps.soupsieve
        )
        note = f"modsel.match {ms:.4f} s; {found_ms:,} = {found_ss:,} matches"
        call: Call = partial(modsel.match, model, selector)
        goals["soupsieve"].check(f"soupsieve select {selector!r}", ss, ss / ms, note, call)

    # informative: both documents built beforehand (modsel.match builds its tree in the call)
    document = modsel.select(model, "")
    for selector in MATCH_SELECTORS:
        compiled = modsel.compile(selector)
        assert len(compiled.match_nodes(document)) == len(soup.select(selector))
        prebuilt: Call = partial(compiled.match_nodes, document)
        ms, ss = paired(prebuilt, partial(soup.select, selector), reps.soupsieve)
        note = f"informative: modsel Selector.match_nodes on a prebuilt tree {ms:.4f} s"
        show(Row(f"  soupsieve select {selector!r}, prebuilt", ss, f"{ss / ms:.2f}x ss/ms", note=note))

    rules = rule_selectors(css)
    root = modsel.select(model, css)
    counts_ms = {prop: 0 for _, prop in rules}
    for node in root.modules():
        for prop in node.props:
            counts_ms[prop] += 1
    counts_ss = {prop: len(soup.select(sel)) for sel, prop in rules}
    assert counts_ss == counts_ms, f"per-rule counts differ: soupsieve {counts_ss}, modsel {counts_ms}"

    def five_selects() -> None:
        for sel, _ in rules:
            soup.select(sel)

    select_call: Call = partial(modsel.select, model, css)
    ms, ss = paired(select_call, five_selects, reps.soupsieve)
    note = f"modsel.select {ms:.4f} s; counts " + " ".join(f"{p}={n:,}" for p, n in counts_ms.items())
    goals["soupsieve"].check("soupsieve 5 rules (5 selects) vs modsel.select", ss, ss / ms, note, select_call)


def seed_sheet(rules: int) -> str:
    return "\n".join(f"#bulk > #{i} Linear: p{i}" for i in range(rules))


def heavy_sheet(rules: int) -> str:
    return "\n".join(
        f"Linear[in_features>={i}][bias=true]:not(#x{i}, .Dropout) > "
        f'#y{i}:has(> LayerNorm, + ReLU):nth-child(2n+1 of .Linear), #bulk ~ *[eps^="1e"]: p{i}, q'
        for i in range(rules)
    )


def bench_parse(reps: Repeats, goals: dict[str, Goal]) -> None:
    section("parsing a 1,000-rule stylesheet (parse cache cleared before each run)")
    for label, text, key in (
        ("seed rules '#bulk > #{i} Linear: p{i}'", seed_sheet(1000), "parse_seed"),
        ("heavy rules ([attr], :not, :has, :nth of)", heavy_sheet(1000), "parse_heavy"),
    ):

        def run(text: str = text) -> modsel.Stylesheet:
            modsel.parse.cache_clear()
            return modsel.parse(text)

        sheet = run()
        assert len(sheet.rules) == 1000
        took = median_time(run, reps.parse)
        note = f"{1e6 * took / 1000:.0f} us/rule, {len(text):,} chars"
        goals[key].check(f"parse 1,000 {label}", took, took, note, run)


def bench_wide(reps: Repeats, goals: dict[str, Goal]) -> None:
    small_n, big_n = WIDE_SIZES
    section(f"wide ModuleList: {small_n:,} vs {big_n:,} children (Linear, ReLU, GELU, ...)")
    small, big = wide(small_n), wide(big_n)
    for selector in WIDE_SELECTORS:
        counts = [len(modsel.match(m, selector)) for m in (small, big)]  # also compiles
        t_small, t_big = paired(
            partial(modsel.match, small, selector), partial(modsel.match, big, selector), reps.wide
        )
        note = f"{small_n // 1000}k: {t_small:.4f} s; {counts[0]:,} / {counts[1]:,} matches"
        call: Call = partial(modsel.match, big, selector)
        goals["wide"].check(f"match {selector!r} [wide {big_n // 1000}k]", t_big, t_big / t_small, note, call)


def chain(depth: int) -> nn.Module:
    """``depth`` modules, each the only child of the one above."""
    model: nn.Module = nn.Identity()
    for _ in range(depth - 1):
        model = nn.Sequential(model)
    return model


def bench_deep(reps: Repeats, goals: dict[str, Goal]) -> None:
    (small_d, small_k), (big_d, big_k) = DEEP_CASES
    section(f"deep chains: '#nope' + ' *' x {small_k} on {small_d} nested modules vs x {big_k} on {big_d}")
    small, big = chain(small_d), chain(big_d)
    small_css, big_css = "#nope" + " *" * small_k, "#nope" + " *" * big_k
    assert modsel.match(small, small_css) == modsel.match(big, big_css) == []  # also compiles
    t_small, t_big = paired(
        partial(modsel.match, small, small_css), partial(modsel.match, big, big_css), reps.wide
    )
    call: Call = partial(modsel.match, big, big_css)
    note = f"{small_d}/{small_k}: {t_small * 1e3:.2f} ms"
    goals["deep"].check(
        f"match '#nope * ... *' [{big_d} deep, {big_k} steps]", t_big, t_big / t_small, note, call
    )
    small_d, big_d = DEEP_CHAIN
    section(f"deep chains: a failing first descendant step on {small_d:,} vs {big_d:,} nested modules")
    models = chain(small_d), chain(big_d)
    for selector in DEEP_CHAIN_SELECTORS:
        compiled = modsel.compile(selector)
        assert all(compiled.match_nodes(modsel.select(model, "")) == [] for model in models)
        times: tuple[list[float], list[float]] = ([], [])
        for _ in range(reps.wide):  # alternately, each on a fresh document (no memo yet)
            for model, took in zip(models, times, strict=True):
                document = modsel.select(model, "")
                took.append(timed(partial(compiled.match_nodes, document)))
                del document
        t_small, t_big = (statistics.median(took) for took in times)
        note = f"{small_d // 1000}k deep: {t_small * 1e3:.1f} ms (match_nodes on a built document)"
        goals["deep_chain"].check(f"match {selector!r} [{big_d // 1000}k deep]", t_big, t_big / t_small, note)


# ---- main -----------------------------------------------------------------------------------
def summary(goals: dict[str, Goal]) -> bool:
    print("\n== summary")
    for goal in goals.values():
        if goal.rows:
            print(goal.verdict())
    return all(row.passed for goal in goals.values() for row in goal.rows)


def profile_failures(goals: dict[str, Goal], top: int = 15) -> None:
    """cProfile, once, the modsel call behind each failing row (caches warm, as timed)."""
    import cProfile
    import io
    import pstats

    for goal in goals.values():
        for row in goal.rows:
            if row.passed or row.call is None:
                continue
            row.call()
            gc.collect()
            profiler = cProfile.Profile()
            profiler.runcall(row.call)
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
            lines = [line for line in out.getvalue().splitlines() if line.strip()]
            start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
            print(f"\n== profile of the modsel call of: {row.name} (by tottime; the profiler inflates times)")
            print(lines[0].strip())
            print("\n".join(lines[start : start + top + 1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run; noisier)")
    parser.add_argument(
        "--blocks", type=int, default=DEFAULT_BLOCKS, help="blocks of the synthetic model (13 modules each)"
    )
    parser.add_argument("--no-soupsieve", action="store_true", help="skip the soupsieve comparison")
    parser.add_argument(
        "--profile", action="store_true", help="after the table, cProfile the modsel call of each failing row"
    )
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when a goal fails")
    args = parser.parse_args(argv)
    reps = QUICK if args.quick else FULL

    small_k, big_k = (n // 1000 for n in WIDE_SIZES)
    goals = {
        "match": Goal("modsel.match vs list(named_modules())", GOAL_MATCH, "x base"),
        "select": Goal("modsel.select, 5 rules, warm, vs list(named_modules())", GOAL_SELECT, "x base"),
        "soupsieve": Goal("soupsieve / modsel, synthetic model", GOAL_SOUPSIEVE, "x ss/ms", at_least=True),
        "parse_seed": Goal("parse 1,000 seed rules", GOAL_PARSE_S, "s"),
        "parse_heavy": Goal("parse 1,000 heavy rules (informative)", GOAL_PARSE_S, "s"),
        "wide": Goal(
            "wide ModuleList time ratio (~2 linear, ~4 quadratic)", GOAL_WIDE, f"x {big_k}k/{small_k}k"
        ),
        "deep": Goal("deep failing descendant chain time ratio (~4 linear)", GOAL_DEEP, "x 50/25"),
        "deep_chain": Goal(
            "10k / 5k-deep chain time ratio (~2 linear, ~4 quadratic)", GOAL_DEEP_CHAIN, "x 10k/5k"
        ),
    }
    began = time.perf_counter()
    mode = "quick" if args.quick else "full"
    print(
        f"modsel {modsel.__version__}, python {sys.version.split()[0]}, torch {torch.__version__}, {mode} run"
    )
    start = time.perf_counter()
    modsel.parse("Linear")  # load the grammar once, outside every timing
    print(
        f"grammar load + first parse: {time.perf_counter() - start:.3f} s (once per process, not timed below)"
    )

    start = time.perf_counter()
    synthetic = Synthetic(args.blocks)
    print(f"synthetic model built in {time.perf_counter() - start:.1f} s (not timed)")
    print()
    print(COLUMNS)
    bench_model("synthetic", synthetic, SYNTHETIC_CSS, reps, goals)
    bench_model("transformer", transformer(), TRANSFORMER_CSS, reps, goals)
    missing = [name for name in ("bs4", "soupsieve", "lxml") if importlib.util.find_spec(name) is None]
    if missing and not args.no_soupsieve:
        section(f"soupsieve comparison skipped: {', '.join(missing)} not installed (bench extra, lxml)")
    elif not args.no_soupsieve:
        bench_soupsieve(synthetic, SYNTHETIC_CSS, reps, goals)
    if not args.profile:  # let the synthetic model go before the sections that follow
        for goal in goals.values():
            for row in goal.rows:
                row.call = None
    del synthetic
    gc.collect()
    bench_parse(reps, goals)
    bench_wide(reps, goals)
    bench_deep(reps, goals)

    ok = summary(goals)
    if args.profile:
        profile_failures(goals)
    print(f"\ntotal {time.perf_counter() - began:.0f} s")
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
