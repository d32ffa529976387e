"""What the per-step probe costs against a training step, in one process (these machines are noisy).

    .venv/bin/python benchmarks/probe_cost.py --steps 8 --items 1 2 4          # the default model, batch 4 x 256

Default model, `support`, full fine-tuning. The general suite's "before" evaluation runs once and is shared.
For each --items value the task trains --steps steps with the probe after every step; the step time is the
callback-timed optimizer step minus the probe's own time inside it. Prints probe seconds per step, training
seconds per step and their ratio (the goal: at most 5 %).
"""

from __future__ import annotations

import argparse
import statistics

from strategy_overhead import StepTimes  # benchmarks/, beside this script

from forgetless.config import parse_config
from forgetless.data.encoding import encode_rows
from forgetless.models import load_model_and_tokenizer
from forgetless.training import ContinualRun


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--items", type=int, nargs="+", default=[1, 2, 4], help="items per probe")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--limit", type=int, help="items per general task (default: all)")
    args = parser.parse_args()
    model, tokenizer = load_model_and_tokenizer("default")
    before = None
    print(f"{'items':>5s} {'probe s/step':>12s} {'train s/step':>12s} {'ratio':>7s}")
    for items in args.items:
        config = parse_config({
            "tasks": [{"name": "support", "builtin": "support"}], "checkpoints": "none",
            "eval": {"suites": ["general"], "limit": args.limit, "task_choices": False,
                     "probe": {"items_per_step": items, "window": 20}},
            "train": {"steps": args.steps, "batch_size": args.batch_size, "max_length": args.max_length, "lr": 1e-5},
        })
        run = ContinualRun(config, "/tmp/forgetless-probe-cost", model=model, tokenizer=tokenizer, progress=False,
                           before=before)
        if before is None:
            run.evaluator.evaluate(model, "before", None, 0)
            before = run.evaluator.log.first()
        else:
            run.evaluator.adopt_before(before)
        run._started = 0.0
        run.probe = run._probe()
        task = run.tasks[0]
        trainer = run._trainer(0, task, encode_rows(tokenizer, task.train, args.max_length))
        timer = StepTimes()
        trainer.add_callback(timer)  # after the run's own callback, so each timed step includes its probe
        trainer.train()
        probe_per_step = run.probe.seconds / len(run.probe.points)
        train = statistics.median(timer.steps[1:]) - probe_per_step
        print(f"{items:5d} {probe_per_step:12.3f} {train:12.2f} {100 * probe_per_step / train:6.1f} %", flush=True)


if __name__ == "__main__":
    main()
