"""`forgetless advise`: which strategy (or stack) to use, from your constraints and measured evidence.

The evidence is the user's own `forgetless compare` / `tune` folders when given (`--from DIR`; a `compare --seeds`
folder gives each row's means over its seeds), otherwise the
shipped benchmark tables (data/assets/advice/evidence.json, built from docs/results by
scripts/build_advice_evidence.py: several tasks from the bundled sequence, one task from the worse of `legal` and
`jargon` per strategy; the rows run at several seeds give their means over the seeds); the answer says which. The
decision is the small table below:

| constraint                   | rule                                                                     |
|------------------------------|--------------------------------------------------------------------------|
| raw old data may not be kept | drop candidates that store training rows (replay, fip's anchors)          |
| compute: low / medium / high | drop candidates whose step time exceeds 1.10x / 1.50x / no limit of naive |
| budget (largest drop)        | keep candidates whose measured general change is >= -budget (over       |
|                              | several seeds: its mean; the answer shows the worst seed beside it and   |
|                              | says when that seed was beyond the budget)                               |
| chat model (the default)     | drop candidates whose instruction pass rate, formats (compare's column;  |
|                              | not in the shipped evidence) or leakage-free share fell beyond the       |
|                              | budget by more than noise (change + 1.96 s.e. < -budget);                |
|                              | candidates without those measurements stay, and the answer says so;      |
|                              | when every candidate measured (of those the other rules allow) fell,     |
|                              | none is dropped and the answer says that every one measured fell         |
| chat model, naive ran on     | where naive's answers ran on (the share that ended by themselves, the    |
|                              | `stops` check, fell by more than RAN_ON beyond noise), suggest comparing |
|                              | wise with replay of the model's own short replies stacked on it; `stops` |
|                              | leaves no candidate out (the shipped evidence has none)                  |
| ranking                      | first the rows within budget at each of several seeds (a mean within it  |
|                              | can hide a seed beyond it; a one-seed row's spread is unmeasured, so it  |
|                              | ranks with the rest), then                                               |
|                              | the most in-domain gain kept (several tasks; the mean gain for every     |
|                              | row once any row within budget lacks gain kept), else the smallest drop  |
| below naive's frontier       | a strategy whose change saved at equal gain against naive's frontier is  |
|                              | negative (over several seeds: the mean where defined, and below at most  |
|                              | of them) ranks after plain fine-tuning trained less, where such a row is |
|                              | within the budget: it earned no credit over it                           |

The chat rule exists because the multiple-choice suite alone misleads: on the shipped benchmark `ewc` at lam 100
kept the general suite (-0.022 against naive's -0.095 on `support`) while its instruction pass rate fell as far as
naive's and every answer took up the domain's phrasing (docs/results/generation-checks.md). Its exception exists
because on that benchmark every candidate measured lost instruction following, `wise` too: dropping them all would
leave the ones never measured, which is no evidence of keeping it.

When no candidate meets the budget, the one with the smallest measured drop is recommended and the answer
says the budget was not met in the evidence. `naive` at the evidence's own setting is never recommended (it
protects nothing), but naive at another learning rate or step count (`naive(lr=...,steps=...)`, the rows that
trace naive's frontier in `compare --frontier-lr/--frontier-steps`) is a candidate like any other: training
less is the first thing to try, and when it stays within budget the answer says so beside any strategy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import ForgetlessError

STEP_RATIO_LIMIT = {"low": 1.10, "medium": 1.50, "high": float("inf")}
_Z = 1.96  # as the run-time budget (forgetless.budget): a drop counts only when beyond the limit by the noise
# naive's answers ran on when the share of them that ended by themselves (the `stops` check) fell by more than this:
# set between the two domains measured before the rule, support (13 % -> 92 % of the answers cut at the budget)
# and legal (the share that stopped changed +0.07, -0.12, -0.16 at three seeds); jargon, run after it was set, gave
# +0.055, +0.000, -0.055 (docs/results/generation-checks.md). Where between -0.16 and -0.79 it lies is untested.
RAN_ON = 0.5
SHORT_REPLIES_STACK = "'[{name: replay, general_ratio: 0.3}, {name: wise, alpha: 0.3}]'"


@dataclass(frozen=True)
class Constraints:
    raw_data_allowed: bool = False  # may earlier tasks' training rows be stored?
    compute: str = "medium"  # low | medium | high: how much slower than plain fine-tuning a step may be
    tasks: int = 2  # tasks in the sequence
    adapter: str = "full"  # full | lora
    budget: float = 0.01  # largest acceptable drop of the general score
    chat: bool = True  # must the model keep following instructions (a chat / instruct model)?

    def __post_init__(self) -> None:
        if self.compute not in STEP_RATIO_LIMIT:
            raise ForgetlessError(f"--compute must be one of {sorted(STEP_RATIO_LIMIT)}, got {self.compute!r}")
        if self.tasks < 1:
            raise ForgetlessError(f"--tasks must be at least 1, got {self.tasks}")
        if self.adapter not in ("full", "lora"):
            raise ForgetlessError(f"--adapter must be full or lora, got {self.adapter!r}")
        if not self.budget > 0:
            raise ForgetlessError(f"--budget must be a positive drop such as 0.01, got {self.budget}")


@dataclass(frozen=True)
class Candidate:
    name: str  # a strategy or a stack ("replay+wise")
    general_change: float
    se: float
    gain_kept: float | None
    step_ratio: float | None
    stores_raw_data: bool
    # Generation checks where measured: {"instructions": (change, se), "formats": ..., "stops": ..., "leakage": ...}.
    generation: dict[str, tuple[float, float]] = field(default_factory=dict)
    domain: str | None = None  # shipped one-task evidence: the domain whose (worse) general change this is
    gain_domain: str | None = None  # ... and the domain its gain kept is from
    gain: float | None = None  # mean in-domain gain over the tasks: ranks rows when the evidence has no gain kept
    # General change saved at equal gain against naive's frontier (forgetless.frontier) and its s.e., where measured.
    frontier: tuple[float, float | None] | None = None
    seeds: int = 1  # the general change (and frontier distance) is the mean over this many seeds
    worst_change: float | None = None  # over several seeds: the worst seed's general change
    above: int | None = None  # over several seeds: at how many it was above naive's frontier
    frontier_domain: str | None = None  # shipped one-task evidence: the domain naive's frontier was run on
    # The seeds the frontier distance and `above` are over, where not `seeds` (shipped one-task evidence: legal's
    # change beside jargon's distance, which may be over other seeds).
    frontier_seeds: int | None = None
    # The seeds the gain kept is over, where known (shipped evidence: the several-task gain kept is seed 0's, the
    # one-task one `jargon`'s over its seeds); unset, it is seed 0's when there is no mean gain, else `seeds`.
    gain_seeds: int | None = None

    @property
    def distance_seeds(self) -> int:
        return self.frontier_seeds or self.seeds

    @property
    def below_frontier(self) -> bool:
        """Below naive's frontier: plain fine-tuning trained less reached its gain with a smaller drop.

        Over several seeds the mean leaves out the seeds where the distance is undefined (beyond the frontier's
        range, counted as above), so a negative mean demotes only a row that was below at most of its seeds."""
        if self.frontier is None or self.frontier[0] >= 0 or train_override(self.name) is not None:
            return False
        return self.above is None or self.above < self.distance_seeds - self.above

    def lost_generation(self, budget: float) -> list[str]:
        """The generation checks this candidate fell on beyond the budget by more than noise. `stops` is not one:
        answers that run on already fail the instructions they break, and it only says why (the short-replies hint)."""
        return [name for name, (change, se) in sorted(self.generation.items())
                if name != "stops" and change + _Z * se < -budget]


@dataclass(frozen=True)
class Advice:
    recommended: Candidate | None
    alternatives: list[Candidate]
    excluded: dict[str, str]  # candidate -> why it was left out
    met_budget: bool
    source: str
    # The best plain fine-tuning at another train setting within budget, when the evidence has one.
    training_less: Candidate | None = None
    behind_training_less: list[Candidate] = field(default_factory=list)  # within budget, below naive's frontier
    beyond_budget: list[Candidate] = field(default_factory=list)  # allowed by the constraints, not by the budget
    # Rows that would rank before the recommendation (within budget at every seed) but for that tier: within on
    # their mean only, or measured at one seed.
    passed_over: list[Candidate] = field(default_factory=list)
    # Chat model, where every candidate the other constraints allow and the evidence measured lost instruction
    # following: each one and what it lost. Then the chat rule leaves none out, which would favour the candidates
    # never measured: no evidence of keeping it.
    generation_lost_by_all_measured: dict[str, str] = field(default_factory=dict)
    # Chat model, where naive's answers ran on (its `stops` change and s.e., below -RAN_ON): rehearsing the model's
    # own short replies is worth a try. None where they did not, or were not measured.
    naive_ran_on: tuple[float, float] | None = None


def _generation(row: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """A row's generation checks (shipped evidence or compare.json) as {name: (change, se)}."""
    return {check: tuple(v) for check, v in (row.get("generation") or {}).items()}


def shipped_evidence(tasks: int) -> tuple[list[Candidate], str]:
    data = json.loads(resources.files("forgetless").joinpath("data/assets/advice/evidence.json").read_text("utf-8"))
    key = "several_tasks" if tasks > 1 else "one_task"
    candidates = []
    for name, row in data["strategies"].items():
        if not (found := row.get(key)):
            continue
        saved = found.get("change_saved")
        candidates.append(Candidate(
            name, found["general_change"], found["se"], found["gain_kept"], row["step_ratio"], row["stores_raw_data"],
            _generation(row), found.get("domain"), found.get("gain_domain"),
            frontier=None if saved is None else (saved, found.get("change_saved_se")), seeds=found.get("seeds", 1),
            worst_change=found.get("worst_change"), above=found.get("above"), frontier_domain=found.get("frontier_domain"),
            frontier_seeds=found.get("frontier_seeds"), gain_seeds=found.get("gain_seeds"),
        ))
    return candidates, (f"the shipped benchmark table ({data['provenance'][key]}; generation checks: "
                        f"{data['provenance']['generation']})")


def compare_evidence(folders: list[str | Path]) -> tuple[list[Candidate], str]:
    """Rows of the user's own compare / tune folders (compare.json), or of a `compare --seeds` folder (seeds.json:
    each row over its seeds), later folders overriding earlier labels."""
    rows: dict[str, Candidate] = {}
    for folder in folders:
        folder = Path(folder)
        if (folder / "compare.json").is_file():
            found = [_compare_candidate(row) for row in _rows(folder / "compare.json")]
        elif (folder / "seeds.json").is_file():
            found = _seeds_candidates(folder)
        else:
            raise ForgetlessError(f"--from {folder}: no compare.json or seeds.json (run `forgetless compare` or `tune` "
                                  "into it first)")
        rows.update((c.name, c) for c in found if c is not None)
    return list(rows.values()), "your own comparison in " + ", ".join(map(str, folders))


def _rows(path: Path) -> list[dict[str, Any]]:
    """compare.json's rows; a row written before compare's `formats` check gets it from its run folder, as compare
    and merge give it (forgetless.comparison_rows.fill_formats)."""
    rows = json.loads(path.read_text(encoding="utf-8"))["rows"]
    for row in rows:
        generation = row.get("generation") or {}
        if "instructions" in generation and "formats" not in generation:
            from .comparison_rows import with_formats  # loads the evaluation code: only where needed

            row["generation"] = with_formats(generation, path.parent, row["strategy"])
    return rows


def _mean_gain(row: dict[str, Any]) -> float | None:
    gains = list((row.get("in_domain_gain") or {}).values())
    return sum(gains) / len(gains) if gains else None


def _compare_candidate(row: dict[str, Any]) -> Candidate | None:
    if row.get("general_delta_abs") is None:
        return None
    saved = row.get("change_saved_vs_frontier")
    return Candidate(
        row["strategy"], row["general_delta_abs"], row["general_delta_se"], row.get("in_domain_gain_kept"),
        row.get("step_time_ratio"), bool(row.get("stores_raw_data")), _generation(row), gain=_mean_gain(row),
        frontier=None if saved is None else (saved, row.get("change_saved_vs_frontier_se")),
    )


def _seeds_candidates(folder: Path) -> list[Candidate]:
    """seeds.json's rows: general change and gain as means over the seeds (s.e. over seeds), the change saved at
    equal gain as the mean of the seeds where it is defined; cost and stored data from the first seed's row."""
    from .seeds import mean_se, seed_folder, seeds_above

    summary = json.loads((folder / "seeds.json").read_text(encoding="utf-8"))
    path = seed_folder(folder, summary["seeds"][0]) / "compare.json"
    if not path.is_file():
        raise ForgetlessError(f"--from {folder}: seeds.json names seed {summary['seeds'][0]} but {path} is missing")
    first = {row["strategy"]: row for row in _rows(path)}
    candidates = []
    for row in summary["rows"]:
        one = first.get(row["strategy"])
        if one is None:
            raise ForgetlessError(f"--from {folder}: seeds.json has a row {row['strategy']!r} that {path} lacks; "
                                  "rerun the comparison's summary (it is rewritten after every seed)")
        per_seed = row.get("saved_per_seed")
        defined = [v for v in per_seed or [] if v is not None]
        frontier = mean_se(defined) if defined else None
        if frontier is not None and len(summary["seeds"]) == 1:  # one seed: its own paired bootstrap s.e.
            frontier = (frontier[0], one.get("change_saved_vs_frontier_se"))
        candidates.append(Candidate(
            row["strategy"], row["change"],
            row["change_se"] if row["change_se"] is not None else one["general_delta_se"],
            None, one.get("step_time_ratio"), bool(one.get("stores_raw_data")), _generation(one), gain=row["gain"],
            frontier=frontier, seeds=len(summary["seeds"]),
            worst_change=min(change for _, change in row["per_seed"]),
            above=None if per_seed is None else seeds_above(per_seed),
        ))
    return candidates


def _lost_text(c: Candidate, lost: list[str]) -> str:
    return ", ".join(f"{name} {c.generation[name][0]:+.3f} ± {c.generation[name][1]:.3f}" for name in lost)


def advise(constraints: Constraints, candidates: list[Candidate], source: str) -> Advice:
    excluded: dict[str, str] = {}
    kept = []
    limit = STEP_RATIO_LIMIT[constraints.compute]
    allowed = []
    for c in candidates:
        if c.name == "naive":
            excluded[c.name] = "protects nothing (the baseline)"
        elif c.stores_raw_data and not constraints.raw_data_allowed:
            excluded[c.name] = "stores earlier tasks' training rows"
        elif c.step_ratio is not None and c.step_ratio > limit:
            excluded[c.name] = f"step time {c.step_ratio:.2f}x over the {constraints.compute}-compute limit {limit:.2f}x"
        else:
            allowed.append(c)
    # Only a candidate the user may use can show that instruction following can be kept.
    measured = [c for c in allowed if c.generation]
    lost = {c.name: c.lost_generation(constraints.budget) for c in measured}
    lost_by_all = ({c.name: _lost_text(c, lost[c.name]) for c in measured}
                   if constraints.chat and measured and all(lost.values()) else {})
    for c in allowed:
        if constraints.chat and not lost_by_all and lost.get(c.name):
            excluded[c.name] = f"lost instruction following beyond noise ({_lost_text(c, lost[c.name])})"
        else:
            kept.append(c)
    within = [c for c in kept if c.general_change >= -constraints.budget]
    behind: list[Candidate] = []
    # Gain kept (a share of naive's) where every row has it, else the mean gain: never the two mixed.
    share = all(c.gain_kept is not None for c in within)

    def rank(c: Candidate) -> tuple:
        return _rank(c, constraints, share)

    if within:
        ordered = sorted(within, key=rank, reverse=True)
        if any(train_override(c.name) for c in ordered):
            # A strategy earns credit only for what plain fine-tuning cannot reach by training less.
            behind = [c for c in ordered if c.below_frontier]
            ordered = [c for c in ordered if not c.below_frontier] + behind
    else:
        ordered = sorted(kept, key=lambda c: c.general_change, reverse=True)
    less = next((c for c in ordered if train_override(c.name)), None) if within else None
    alternatives = [c for c in ordered[1:] if c is not less and c not in behind][:2]
    beyond = [c for c in kept if c not in within] if within else []
    best = ordered[0] if ordered else None
    passed_over = []
    if within and rank(best)[0]:
        # What would have ranked first but for the every-seed tier (rows behind training less lost for another reason).
        passed_over = [c for c in ordered if not rank(c)[0] and c not in behind and rank(c)[1:] > rank(best)[1:]]
    return Advice(best, alternatives, excluded, bool(within), source, less, behind, beyond, passed_over, lost_by_all,
                  _naive_ran_on(candidates) if constraints.chat else None)


def _naive_ran_on(candidates: list[Candidate]) -> tuple[float, float] | None:
    """naive's `stops` change and s.e. where it fell below -RAN_ON by more than noise."""
    stops = next((c.generation.get("stops") for c in candidates if c.name == "naive"), None)
    return stops if stops is not None and stops[0] + _Z * stops[1] < -RAN_ON else None


def _rank(c: Candidate, constraints: Constraints, share: bool) -> tuple:
    """Larger first. The budget promises each run: rows within it at each of several seeds come first; a mean within
    it can hide a seed beyond it, and one seed shows no spread at all. Then several tasks: gain, one task: change."""
    every_seed = c.seeds > 1 and not _beyond_at_a_seed(c, constraints.budget)
    gain = c.gain_kept if share else c.gain
    gain = gain if gain is not None else float("-inf")
    return (every_seed, gain, c.general_change) if constraints.tasks > 1 else (every_seed, c.general_change, gain)


def _beyond_at_a_seed(c: Candidate, budget: float) -> bool:
    return c.worst_change is not None and c.worst_change < -budget


def train_override(name: str) -> dict[str, str] | None:
    """{"lr": "0.0002", "steps": "15"} for a naive row at another train setting ("naive(lr=0.0002,steps=15)")."""
    if not (name.startswith("naive(") and name.endswith(")")):
        return None
    return dict(part.split("=", 1) for part in name[len("naive("):-1].split(",") if "=" in part)


def _stack_text(label: str) -> str:
    """A compare label as a config's strategy: "replay+wise" -> "[replay, wise]"; a "+" inside a knob's value (a regex
    in parentheses) does not split."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(label):
        depth += (char in "([{") - (char in ")]}")
        if char == "+" and depth == 0:
            parts.append(label[start:i])
            start = i + 1
    parts.append(label[start:])
    return "[" + ", ".join(parts) + "]" if len(parts) > 1 else label


def _as_config(name: str) -> str:
    """How a candidate goes into a config: `strategies: [...]`, or `train: {...}` for training less."""
    override = train_override(name)
    if override is not None:
        return "no strategy; plain fine-tuning trained less: " + _train_setting(override)
    return "strategies: " + _stack_text(name)


def _train_setting(override: dict[str, str]) -> str:
    return "train: {" + ", ".join(f"{k}: {v}" for k, v in override.items()) + "}"


def render(advice: Advice, constraints: Constraints) -> str:
    def evidence(c: Candidate) -> str:
        change = f"general change {c.general_change:+.4f} ± {c.se:.4f}"
        if c.seeds > 1:
            # A mean within budget can hide a seed beyond it: say so, the budget is a per-run promise.
            beyond = ", beyond the budget" if _beyond_at_a_seed(c, constraints.budget) else ""
            worst = "" if c.worst_change is None else f" (worst seed {c.worst_change:+.4f}{beyond})"
            change += f" over {c.seeds} seeds{worst}"
        parts = [change + (f" (on {c.domain})" if c.domain else "")]
        if c.gain_kept is not None:
            gain_seeds = c.gain_seeds or (1 if c.gain is None else c.seeds)
            parts.append(f"{100 * c.gain_kept:.0f} % of naive's in-domain gain kept"
                         + (f" (on {c.gain_domain})" if c.gain_domain and c.gain_domain != c.domain else "")
                         + ("" if gain_seeds == c.seeds else " (at one seed)" if gain_seeds == 1
                            else f" (over {gain_seeds} seeds)"))
        elif c.gain is not None:
            parts.append(f"mean in-domain gain {c.gain:+.4f}")
        if c.frontier is not None:
            saved, se = c.frontier
            n = c.distance_seeds
            above = f", above it at {c.above} of {n} seeds" if c.above is not None and n > 1 else ""
            if n > 1 and n != c.seeds:
                above = f" over {n} seeds" + above
            parts.append(f"change saved at equal gain against naive's frontier {saved:+.4f}"
                         + ("" if se is None else f" ± {se:.4f}") + above
                         + (f" (on {c.frontier_domain})" if c.frontier_domain and c.frontier_domain != c.domain else ""))
        if c.step_ratio is not None:
            parts.append(f"step time {c.step_ratio:.2f}x")
        parts.append("stores training rows" if c.stores_raw_data else "stores no training rows")
        parts += [f"{name} {change:+.3f} ± {se:.3f}" for name, (change, se) in sorted(c.generation.items())]
        return "; ".join(parts)

    if advice.recommended is None:
        return "No strategy fits these constraints:\n" + "\n".join(f"- {n}: {why}" for n, why in advice.excluded.items())
    best = advice.recommended
    stack = _stack_text(best.name)
    lines = [f"Recommended: {_as_config(best.name)}", f"  evidence: {evidence(best)}"]
    less = advice.training_less
    if advice.met_budget and _beyond_at_a_seed(best, constraints.budget):
        lines.append(f"  Within the budget on average over its {best.seeds} seeds, not at each: its worst seed lost "
                     f"{-best.worst_change:.4f}.")
    if advice.passed_over:
        def spread(c: Candidate) -> str:
            return "measured at one seed" if c.seeds == 1 else f"within on average only, worst seed {c.worst_change:+.4f}"

        lines.append(f"  Ranked first as within the budget at each of its {best.seeds} seeds, before "
                     + ", ".join(f"{c.name} ({spread(c)})" for c in advice.passed_over)
                     + ", which would otherwise rank higher.")
    if less is not None and less is not best:
        within = "on average stayed" if _beyond_at_a_seed(less, constraints.budget) else "also stayed"
        lines.append(f"  Plain fine-tuning trained less ({_train_setting(train_override(less.name))}, no strategy) {within} "
                     f"within budget in this evidence: {evidence(less)}. What the recommendation adds is its margin over that.")
    if not advice.met_budget:
        lines.append(f"  No candidate kept the general drop within {constraints.budget:g} in the evidence; this one "
                     "dropped least. Consider `forgetless tune` on its strength, or a lower learning rate.")
    if advice.generation_lost_by_all_measured:
        lost = "; ".join(f"{name}: {text}" for name, text in sorted(advice.generation_lost_by_all_measured.items()))
        lines.append(("  Its instruction following was not measured in this evidence, and every candidate measured lost it"
                      if not best.generation else "  Every candidate measured in this evidence lost instruction following")
                     + f" ({lost}). Leaving them all out would only favour candidates never measured, so none is left out"
                     " for that. Which strategy keeps it depended on the domain where measured (on support none did; wise"
                     " at alpha 0.3 kept it within noise on legal at three seeds and on jargon at two of three,"
                     " docs/results/generation-checks.md): check with `eval: {suites: [general, instructions]}` in a"
                     " compare run on your data.")
    elif constraints.chat and not best.generation:
        lost = sorted(n for n, why in advice.excluded.items() if why.startswith("lost instruction"))
        lines.append("  Its instruction following was not measured in this evidence"
                     + (f" (where measured, {', '.join(lost)} lost it)" if lost else "")
                     + ": check it with `eval: {suites: [general, instructions]}` in a compare run.")
    if advice.naive_ran_on is not None:
        change, se = advice.naive_ran_on
        lines.append(
            f"  naive's answers ran on: the share of its instruction answers that ended by themselves changed "
            f"{change:+.3f} ± {se:.3f}. Where that happened (support), replay of the model's own short replies stacked "
            "with wise brought the stopping back and lost less of the pass rate than wise alone (+0.067 ± 0.012 over "
            "three seeds, still below the start); where it did not (legal, jargon), the same rows cost pass rate "
            "against wise alone (-0.142 and -0.058 over three seeds, 3.7 and 2.3 s.e. item by item), "
            "docs/results/generation-checks.md. To try it, set `general_data:` in CONFIG to your model's own replies "
            "to requests for a brief answer, kept where they stopped by themselves (forgetless's repository builds "
            "them for the default model with scripts/build_short_general.py), and run: forgetless compare CONFIG "
            "--strategies "
            f"'{{name: wise, alpha: 0.3}}' {SHORT_REPLIES_STACK}")
    for alt in advice.alternatives:
        lines.append(f"Also within your constraints: {alt.name} ({evidence(alt)})")
    if advice.beyond_budget:
        lines.append(f"Beyond the budget of {constraints.budget:g} in this evidence: " + ", ".join(
            f"{c.name} ({c.general_change:+.4f}" + (f" over {c.seeds} seeds" if c.seeds > 1 else "") + ")"
            for c in advice.beyond_budget))
    for c in advice.behind_training_less:
        saved, se = c.frontier
        noise = " (within noise)" if se is None or abs(saved) < _Z * se else ""
        lines.append(f"Ranked after training less: {c.name}: below naive's frontier: at its gain, plain fine-tuning "
                     f"trained less dropped {-saved:.4f} less{noise} ({evidence(c)})")
    for name, why in advice.excluded.items():
        lines.append(f"Left out: {name}: {why}")
    lines.append(f"Source: {advice.source}.")
    if advice.source.startswith("the shipped"):
        override = train_override(best.name)
        check = (f"naive --frontier-lr {override.get('lr', 'LR')} --frontier-steps {override.get('steps', 'STEPS')}"
                 if override is not None else f"naive {repr(stack) if stack.startswith('[') else stack}")
        lines.append("The shipped numbers come from one benchmark on one model; defaults that protect there did not "
                     f"always travel to new domains. Check on your own data: forgetless compare CONFIG --strategies {check}")
    if constraints.adapter == "lora" and advice.source.startswith("the shipped"):
        lines.append("The shipped evidence is for full fine-tuning; every strategy also runs under LoRA.")
    return "\n".join(lines)


def ask(prompt: str, default: Any, cast=str) -> Any:
    """One interactive question with a default (Enter keeps it)."""
    answer = input(f"{prompt} [{default}]: ").strip()
    if not answer:
        return default
    try:
        return cast(answer)
    except ValueError:
        raise ForgetlessError(f"{prompt}: could not read {answer!r}") from None


def yes_no(text: str) -> bool:
    if text.lower() in ("y", "yes", "true", "1"):
        return True
    if text.lower() in ("n", "no", "false", "0"):
        return False
    raise ValueError(text)
