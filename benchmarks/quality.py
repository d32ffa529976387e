"""The bundled continual benchmark, one row per strategy: what each learns and what each forgets.

    .venv/bin/python benchmarks/quality.py --strategies naive ewc stm --out bench-out/quality
    .venv/bin/python benchmarks/quality.py --strategies naive '{"name": "ewc", "lam": 1000}' --out DIR
    .venv/bin/python benchmarks/quality.py --strategies '["stm", "replay"]' --out DIR          # a stack
    .venv/bin/python benchmarks/quality.py --quick --strategies naive l2sp --out /tmp/q   # minutes, set-up check
    .venv/bin/python benchmarks/quality.py --trainer sft --strategies naive ewc --out DIR  # through SFTTrainer

Default model; `support`, then `pydoc` (`--tasks` to change); the general suite scored before training and after each task.
Every strategy starts from the same model, so the "before" evaluation runs once and is shared.
Writes DIR/quality.json (one row per strategy, plus the raw results of each run under DIR/<label>/)
and DIR/quality.md. Each row: in-domain gain per task (R[i][i] - R[0][i]), general delta (abs, rel, s.e.),
BWT, forgetting, wall time, and against `naive` (when it is in the list): the share of naive's general
drop that was cut and the share of naive's in-domain gain that was kept.
"""

from __future__ import annotations

import argparse
import json
import pickle
import time
from pathlib import Path

from forgetless.config import parse_config
from forgetless.evaluation.evaluator import EvaluationLog
from forgetless.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
from forgetless.report import format_table
from forgetless.results import RunResults
from forgetless.training import ContinualRun

# lr 5e-4: at 2e-4 naive fine-tuning's final general drop on support -> pydoc was only 2 s.e. (-0.016 +- 0.007),
# too small to judge "cut in half"; at 5e-4 it is -0.081 +- 0.010 (docs/results/quality.md).
TRAIN = {"steps": 30, "batch_size": 4, "lr": 5.0e-4, "max_length": 256, "seed": 0}
TASKS = ("support", "pydoc")
QUICK_TRAIN = {"steps": 2, "batch_size": 2, "lr": 2.0e-4, "max_length": 64, "seed": 0}


def parse_strategy(text: str):
    """`ewc`, a JSON mapping such as `{"name": "ewc", "lam": 1000}`, or a JSON list (a stack): `["stm", "replay"]`."""
    return json.loads(text) if text.lstrip()[:1] in "{[" else text


def label_of(spec) -> str:
    if isinstance(spec, list):
        return "+".join(map(label_of, spec))
    if isinstance(spec, str):
        return spec
    params = ",".join(f"{k}={v}" for k, v in spec.items() if k != "name")
    return f"{spec['name']}({params})" if params else spec["name"]


def run_config(spec, adapter: str, quick: bool, tasks: list[str], lr: float | None = None):
    return parse_config(
        {
            "model": "default",
            "adapter": adapter,
            "tasks": [{"name": task, "builtin": task} for task in tasks],
            "strategies": spec if isinstance(spec, list) else [spec],
            # In-domain gain is read from held-out perplexity; support's reply-choice questions add ~80 s a run.
            "eval": {"suites": ["general"], "limit": 10 if quick else None, "task_choices": False},
            "train": {**(QUICK_TRAIN if quick else TRAIN), **({"lr": lr} if lr else {})},
            "checkpoints": "none",
        },
        f"quality ({label_of(spec)})",
    )


def quality_row(label: str, results: RunResults, seconds: float) -> dict:
    matrix, tasks, m = results.matrix, results.tasks, results.metrics
    return {
        "strategy": label,
        "in_domain_gain": {task: matrix[i + 1][i] - matrix[0][i] for i, task in enumerate(tasks)},
        # The general mean after each task: a final score can hide a drop in the middle of the sequence.
        "general_after_each_task": results.general_after_each_task(),
        "general_before": m.general_before,
        "general_after": m.general_after,
        "general_delta_abs": m.general_delta_abs,
        "general_delta_rel": m.general_delta_rel,
        "general_delta_se": m.general_delta_se,
        "general_within_noise": m.general_within_noise,
        "bwt": m.bwt,
        "forgetting": m.forgetting,
        "wall_time_s": seconds,
        "training": results.training,
    }


def compare_with_naive(rows: list[dict]) -> None:
    naive = next((row for row in rows if row["strategy"] == "naive"), None)
    if naive is None:
        return
    for row in rows:
        drop = -naive["general_delta_abs"]
        row["general_drop_cut"] = None if drop <= 0 else 1 - (-row["general_delta_abs"]) / drop
        gains = [row["in_domain_gain"][t] / g for t, g in naive["in_domain_gain"].items() if g > 0]
        row["in_domain_gain_kept"] = min(gains) if gains else None


def markdown(rows: list[dict], commands: list[str]) -> str:
    tasks = list(rows[0]["in_domain_gain"])

    def pct(value):
        return "—" if value is None else f"{100 * value:.0f} %"

    def signed(value):  # BWT and forgetting need an earlier task: none in a one-task sequence
        return "—" if value is None else f"{value:+.4f}"

    table = format_table(
        ["strategy", *[f"gain {t}" for t in tasks], *[f"general after {t}" for t in tasks], "general delta ± s.e.",
         "relative", "BWT", "forgetting",
         "drop cut vs naive", "gain kept vs naive", "wall time"],
        [
            [
                row["strategy"],
                *[f"{row['in_domain_gain'][t]:+.4f}" for t in tasks],
                *[f"{row['general_after_each_task'][t]:.4f}" if "general_after_each_task" in row else "" for t in tasks],
                f"{row['general_delta_abs']:+.4f} ± {row['general_delta_se']:.4f}",
                f"{100 * row['general_delta_rel']:+.1f} %",
                signed(row["bwt"]),
                signed(row["forgetting"]),
                pct(row.get("general_drop_cut")),
                pct(row.get("in_domain_gain_kept")),
                f"{row['wall_time_s']:.0f} s",
            ]
            for row in rows
        ],
    )
    commands = "\n".join(f"    {c}" for c in commands)
    before = rows[0]["general_before"]
    return f"# Quality benchmark\n\nCommands:\n\n{commands}\n\nGeneral score before training: {before:.4f}.\n\n{table}\n"


def load_before(path: Path, key: dict):
    """The shared "before training" evaluation saved by an earlier invocation with the same set-up, or None."""
    if not path.exists():
        return None
    with path.open("rb") as handle:
        saved = pickle.load(handle)  # our own file, written below
    return saved["log"] if saved["key"] == key else None


def save_before(path: Path, key: dict, log) -> None:
    before = EvaluationLog(log.general[:1], log.task_evals[:1], log.general_samples[:1], log.task_samples[:1], 0.0)
    atomic_write_bytes(path, pickle.dumps({"key": key, "log": before}))


def rebuild(out: Path) -> None:
    """Re-derive every row's columns from DIR/<label>/results.json (e.g. after a column was added)."""
    table = json.loads((out / "quality.json").read_text())
    for row in table["rows"]:
        results = json.loads((out / row["strategy"].replace("/", "_") / "results.json").read_text())
        row.update(quality_row(row["strategy"], results, row["wall_time_s"]))
    compare_with_naive(table["rows"])
    atomic_write_json(out / "quality.json", table)
    atomic_write_text(out / "quality.md", markdown(table["rows"], table["commands"]))
    print(markdown(table["rows"], table["commands"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", nargs="+", default=["naive"], help="names or JSON mappings")
    parser.add_argument("--adapter", default="full", choices=["full", "lora"])
    parser.add_argument("--out", required=True, help="rows already in DIR/quality.json are kept (same label: replaced)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), help="built-in tasks, trained in this order")
    parser.add_argument("--lr", type=float, help=f"learning rate (default {TRAIN['lr']})")
    parser.add_argument("--quick", action="store_true", help="2 steps, 10 items per evaluation task")
    parser.add_argument("--trainer", default="runner", choices=["runner", "sft"],
                        help="sft: train each task through with_strategies(trl.SFTTrainer) (benchmarks/sft_run.py)")
    parser.add_argument("--rebuild", action="store_true", help="only rewrite DIR/quality.md from DIR's saved results")
    args = parser.parse_args()
    out = Path(args.out)
    if args.rebuild:
        return rebuild(out)
    lr = ["--lr", str(args.lr)] if args.lr else []
    command = "python benchmarks/quality.py " + " ".join(
        [*(f"'{s}'" if s[:1] in "{[" else s for s in ["--strategies", *args.strategies]), "--adapter", args.adapter,
         "--tasks", *args.tasks, *lr, *(["--trainer", args.trainer] if args.trainer != "runner" else []),
         "--out", args.out, *(["--quick"] if args.quick else [])]
    )
    # Several invocations may fill one table (e.g. a lambda sweep added later): keep their rows and commands.
    table = json.loads((out / "quality.json").read_text()) if (out / "quality.json").exists() else {"commands": [], "rows": []}
    setting = {"tasks": args.tasks, "quick": args.quick, "lr": args.lr, "adapter": args.adapter}
    if args.trainer != "runner":  # tables written before --trainer existed stay valid
        setting["trainer"] = args.trainer
    run_class = ContinualRun
    if args.trainer == "sft":
        from sft_run import SFTContinualRun  # benchmarks/, beside this script

        run_class = SFTContinualRun
    if table.setdefault("setting", setting) != setting:
        raise SystemExit(f"{out / 'quality.json'} holds rows for {table['setting']}, not {setting}: choose another --out")
    table["commands"] = [*table.get("commands", []), command]
    key = {"tasks": args.tasks, "quick": args.quick, "model": "default"}
    before = load_before(out / "before-eval.pkl", key)
    for spec in map(parse_strategy, args.strategies):
        label = label_of(spec)
        print(f"\n=== {label} ===", flush=True)
        started = time.perf_counter()
        config = run_config(spec, args.adapter, args.quick, args.tasks, args.lr)
        run = run_class(config, out / label.replace("/", "_"), before=before)
        results = run.execute()
        if before is None:
            before = run.evaluator.log
            save_before(out / "before-eval.pkl", key, before)
        row = quality_row(label, results, time.perf_counter() - started)
        table["rows"] = [r for r in table["rows"] if r["strategy"] != label] + [row]
        compare_with_naive(table["rows"])
        # After every strategy: a later crash loses nothing already measured.
        atomic_write_json(out / "quality.json", table)
        text = markdown(table["rows"], table["commands"])
        atomic_write_text(out / "quality.md", text)
    print("\n" + text)


if __name__ == "__main__":
    main()
