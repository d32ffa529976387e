"""The bundled continual benchmark, one row per strategy: what each learns and what each forgets.

    .venv/bin/python benchmarks/quality.py --strategies naive ewc stm --out bench-out/quality
    .venv/bin/python benchmarks/quality.py --strategies naive '{"name": "ewc", "lam": 1000}' --out DIR
    .venv/bin/python benchmarks/quality.py --strategies '["stm", "replay"]' --out DIR          # a stack
    .venv/bin/python benchmarks/quality.py --quick --strategies naive l2sp --out /tmp/q   # minutes, set-up check
    .venv/bin/python benchmarks/quality.py --trainer sft --strategies naive ewc --out DIR  # through SFTTrainer

`forgetless compare` on the bundled set-up: default model, `support` then `pydoc` (`--tasks` to change), the
general suite scored before training (once, shared by every row) and after each task. Writes DIR/compare.json,
DIR/compare.md, DIR/pareto.png and each row's run under DIR/<label>/ (see forgetless.compare for the columns).
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from forgetless.compare import compare, frontier_settings, parse_strategy
from forgetless.comparison_table import write_table
from forgetless.config import parse_config
from forgetless.training import ContinualRun

# lr 5e-4: at 2e-4 naive fine-tuning's final general drop on support -> pydoc was only 2 s.e. (-0.016 +- 0.007),
# too small to judge "cut in half"; at 5e-4 it is -0.081 +- 0.010 (docs/results/quality.md).
TRAIN = {"steps": 30, "batch_size": 4, "lr": 5.0e-4, "max_length": 256, "seed": 0}
TASKS = ("support", "pydoc")
QUICK_TRAIN = {"steps": 2, "batch_size": 2, "lr": 2.0e-4, "max_length": 64, "seed": 0}


def base_config(adapter: str, quick: bool, tasks: list[str], lr: float | None = None, suites: list[str] = ("general",)):
    return parse_config(
        {
            "model": "default",
            "adapter": adapter,
            "tasks": [{"name": task, "builtin": task} for task in tasks],
            # In-domain gain is read from held-out perplexity; support's reply-choice questions add ~80 s a run.
            "eval": {"suites": list(suites), "limit": 10 if quick else None, "task_choices": False},
            "train": {**(QUICK_TRAIN if quick else TRAIN), **({"lr": lr} if lr else {})},
            "checkpoints": "none",
        },
        "quality",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", nargs="+", default=["naive"], help="names, JSON/YAML mappings or lists (stacks)")
    parser.add_argument("--adapter", default="full", choices=["full", "lora"])
    parser.add_argument("--out", required=True, help="rows already in DIR/compare.json are kept (same label: replaced)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), help="built-in tasks, trained in this order")
    parser.add_argument("--lr", type=float, help=f"learning rate (default {TRAIN['lr']})")
    parser.add_argument("--suites", nargs="+", default=["general"], help="built-in evaluation suites (e.g. general instructions)")
    parser.add_argument("--quick", action="store_true", help="2 steps, 10 items per evaluation task")
    parser.add_argument("--trainer", default="runner", choices=["runner", "sft"],
                        help="sft: train each task through with_strategies(trl.SFTTrainer) (benchmarks/sft_run.py)")
    parser.add_argument("--frontier-lr", type=float, nargs="+", help="also run naive at these learning rates")
    parser.add_argument("--frontier-steps", type=int, nargs="+", help="also run naive at these steps per task")
    parser.add_argument("--resume", action="store_true",
                        help="after a kill: continue the row that was cut off, keep the rows already in the table")
    parser.add_argument("--rebuild", action="store_true", help="only rewrite DIR/compare.md and pareto.png from compare.json")
    args = parser.parse_args()
    out = Path(args.out)
    if args.rebuild:
        table = json.loads((out / "compare.json").read_text())
        write_table(table, out)
        return print((out / "compare.md").read_text())
    command = shlex.join(
        ["python", "benchmarks/quality.py", "--strategies", *args.strategies, "--adapter", args.adapter,
         "--tasks", *args.tasks, *(["--lr", str(args.lr)] if args.lr else []),
         *(["--trainer", args.trainer] if args.trainer != "runner" else []),
         *(["--suites", *args.suites] if args.suites != ["general"] else []),
         *(["--frontier-lr", *map(str, args.frontier_lr)] if args.frontier_lr else []),
         *(["--frontier-steps", *map(str, args.frontier_steps)] if args.frontier_steps else []), "--out", args.out,
         *(["--quick"] if args.quick else []), *(["--resume"] if args.resume else [])]
    )
    run_class = ContinualRun
    if args.trainer == "sft":
        from sft_run import SFTContinualRun  # benchmarks/, beside this script

        run_class = SFTContinualRun
    config = base_config(args.adapter, args.quick, args.tasks, args.lr, args.suites)
    compare(
        config,
        [parse_strategy(text) for text in args.strategies],
        out,
        run_factory=lambda config, folder, before, resume_from: run_class(config, folder, before=before,
                                                                          resume_from=resume_from),
        resume=args.resume,
        command=command,
        setting={"trainer": args.trainer},
        frontier=frontier_settings(config, args.frontier_lr, args.frontier_steps),
    )
    print("\n" + (out / "compare.md").read_text())


if __name__ == "__main__":
    main()
