"""Training-step cost of each strategy against plain fine-tuning, as ratios measured in one process.

    .venv/bin/python benchmarks/strategy_overhead.py                      # all registered strategies
    .venv/bin/python benchmarks/strategy_overhead.py --strategies ewc stm --steps 5 --adapter lora
    .venv/bin/python benchmarks/strategy_overhead.py --strategies '{"name": "layerwise", "task_importance": "pass"}'
    .venv/bin/python benchmarks/strategy_overhead.py --tiny               # a tiny random model: a set-up check

For each strategy: its one-off preparation (on_task_start + prepare_examples: Fisher, importance, STM
scoring, generation) is timed once; then training steps with the strategy and plain steps alternate on
the same batches (forward, token cross-entropy, the StrategyStack's extra_loss, backward, after_backward,
AdamW), and the ratio of median
step times is printed. Alternating steps cancels most of the noise of a shared machine; single numbers
from such a machine are not worth quoting, ratios are.

Peak memory: each strategy runs in its own fresh process. The process's resident high-water mark is
read after two plain steps (model, AdamW state, activations: plain fine-tuning's peak) and again after
the strategy's preparation and steps; their ratio is the strategy's peak memory against plain
fine-tuning. A high-water mark only rises, so the plain peak cannot be hidden by what comes later.

`--trainer` chooses what runs the steps: `step` (default; the loop above, the StrategyStack's hooks called
in a plain PyTorch step), `runner` (`forgetless run`'s own trainer, `with_strategies(transformers.Trainer)`)
and `sft` (`with_strategies(trl.SFTTrainer)`, as in a user's script; benchmarks/sft_run.py). Several may be
given: one column each. Through a trainer, steps cannot alternate; the process trains plain steps, then
the strategy's, then plain steps again on the same model, and divides the strategy's median step
(callback-timed, on_step_begin to on_step_end, its first step left out) by the median of both plain phases.
Preparation there is the time from `train()` to the first step, less the plain phase's.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from forgetless.adapters import adapter_name, prepare_for_task
from forgetless.config import parse_config
from forgetless.data.encoding import PaddingCollator, encode_rows
from forgetless.data.tasks import load_task
from forgetless.errors import ForgetlessError
from forgetless.models import load_model_and_tokenizer
from forgetless.nn import token_cross_entropy, trained_tokens
from forgetless.strategies import OptimizerStep, StrategyStack, TaskData, build_strategy, known_strategies
from forgetless.strategies._common import protection_examples
from forgetless.strategies.ewc import per_sample_fisher
from forgetless.strategies.layerwise import squared_gradient_importance
from forgetless.task_weights import trained_parameters
from forgetless.training import ContinualRun, context_for


def peak_rss_bytes() -> int:
    """This process's resident-memory high-water mark (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def step(model, optimizer, batch, stack: StrategyStack | None) -> float:
    """One optimizer step; the strategy's hooks run through its StrategyStack, as in the runner."""
    started = time.perf_counter()
    outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    loss = token_cross_entropy(outputs.logits, batch["labels"])
    if stack is not None:
        extra = stack.extra_loss(model, batch, outputs)
        if extra is not None:
            loss = loss + extra
    loss.backward()
    if stack is not None:
        stack.after_backward(model, OptimizerStep(trained_tokens(batch["labels"])))
        stack.step_done(stack.context.clock.task_step + 1)
    optimizer.step()
    if stack is not None:
        stack.after_optimizer_step(model)
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def measure(spec: str, args, model_and_tokenizer) -> dict:
    model, tokenizer = model_and_tokenizer
    spec = json.loads(spec) if spec.lstrip().startswith("{") else spec  # '{"name": "stm", "tau": 25}'
    config = parse_config(
        {
            "adapter": args.adapter,
            "tasks": [{"name": "support", "builtin": "support"}],
            "strategies": [spec],
            # The measured steps are the whole task, so work done near a task's end (layerwise's
            # importance recording over its last steps) falls inside them: the worst-case step.
            "train": {"batch_size": args.batch_size, "max_length": args.max_length, "steps": args.steps + 1},
        }
    )
    model = prepare_for_task(model, config, 0)
    model.train()
    task = load_task(config.tasks[0])
    strategy = build_strategy(spec)
    stack = StrategyStack([strategy])
    stack.check(config.training_setup())
    examples = encode_rows(tokenizer, task.train[: args.batch_size * (args.steps + 1)], args.max_length)
    collate = PaddingCollator(tokenizer.pad_token_id)
    plain_batches = [collate(examples[i * args.batch_size : (i + 1) * args.batch_size]) for i in range(args.steps + 1)]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    for _ in range(2):  # warm-up; AdamW's state exists after the first
        step(model, optimizer, plain_batches[0], None)
    plain_peak = peak_rss_bytes()

    started = time.perf_counter()
    data = TaskData(name=task.name, format=task.format, rows=task.train, examples=examples)
    adapter = adapter_name(0) if args.adapter == "lora" else None
    ctx = stack.start_task(config.training_setup(), model, tokenizer, data, adapter=adapter)
    ctx.clock.task_steps = args.steps + 1
    prepared = stack.prepare_examples(examples)
    preparation = time.perf_counter() - started

    # The same batches for both kinds of step; the strategy's own (masked, mixed) examples for its steps.
    strategy_batches = [collate(prepared[i * args.batch_size : (i + 1) * args.batch_size]) for i in range(args.steps + 1)]
    step(model, optimizer, strategy_batches[0], stack)  # warm-up
    plain_times, strategy_times = [], []
    for i in range(1, args.steps + 1):
        plain_times.append(step(model, optimizer, plain_batches[i], None))
        strategy_times.append(step(model, optimizer, strategy_batches[i], stack))
    state_bytes = sum(t.numel() * t.element_size() for t in strategy.state_tensors().values())
    return {
        "strategy": spec,
        "preparation_s": preparation,
        "plain_step_s": statistics.median(plain_times),
        "step_ratio": statistics.median(strategy_times) / statistics.median(plain_times),
        "peak_memory_ratio": peak_rss_bytes() / plain_peak,
        "plain_peak_gb": plain_peak / 2**30,
        "state_mb": state_bytes / 2**20,
    }


class StepTimes(TrainerCallback):
    """Wall time of each optimizer step (on_step_begin to on_step_end), and when the first one began."""

    def __init__(self):
        self.steps: list[float] = []
        self.first_begin: float | None = None
        self._begin = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._begin = time.perf_counter()
        self.first_begin = self.first_begin or self._begin

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(time.perf_counter() - self._begin)


def trained_through(kind: str, spec, args, model, tokenizer, out: Path) -> tuple[list[float], float]:
    """Train one task of args.steps + 1 steps through the runner's or SFT's trainer; (step times, preparation s)."""
    config = parse_config(
        {
            "adapter": args.adapter,
            "tasks": [{"name": "support", "builtin": "support"}],
            "strategies": [spec],
            "eval": {"suites": []},
            "checkpoints": "none",
            "train": {
                "batch_size": args.batch_size, "max_length": args.max_length, "steps": args.steps + 1, "lr": 1e-5,
                "scheduler": "constant", "max_train_examples": args.batch_size * (args.steps + 1),
            },
        }
    )
    if kind == "sft":
        from sft_run import SFTContinualRun as run_class  # benchmarks/ is on sys.path when run as a script
    else:
        run_class = ContinualRun
    run = run_class(config, out, model=model, tokenizer=tokenizer, progress=False)
    task = run.tasks[0]
    trainer = run._trainer(0, task, encode_rows(tokenizer, task.train, args.max_length))
    timer = StepTimes()
    trainer.add_callback(timer)
    started = time.perf_counter()
    trainer.train()
    return timer.steps[1:], timer.first_begin - started


def measure_through_trainer(kind: str, spec, args, model_and_tokenizer) -> dict:
    model, tokenizer = model_and_tokenizer
    spec = json.loads(spec) if spec.lstrip().startswith("{") else spec
    one_task = parse_config({"adapter": args.adapter, "tasks": [{"name": "support", "builtin": "support"}]})
    model = prepare_for_task(model, one_task, 0)  # once: every phase trains the same adapter (or weights)
    with tempfile.TemporaryDirectory() as out:
        plain_first, plain_preparation = trained_through(kind, "naive", args, model, tokenizer, Path(out) / "plain")
        plain_peak = peak_rss_bytes()
        times, preparation = trained_through(kind, spec, args, model, tokenizer, Path(out) / "strategy")
        peak = peak_rss_bytes()
        plain_again, _ = trained_through(kind, "naive", args, model, tokenizer, Path(out) / "plain-again")
    plain = statistics.median(plain_first + plain_again)
    return {
        "strategy": spec,
        "trainer": kind,
        "preparation_s": preparation - plain_preparation,
        "plain_step_s": plain,
        "step_ratio": statistics.median(times) / plain,
        "peak_memory_ratio": peak / plain_peak,
        "plain_peak_gb": plain_peak / 2**30,
    }


def load(tiny: bool):
    if not tiny:
        return load_model_and_tokenizer("default")
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tokenizer = load_model_and_tokenizer("default")
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    return model, tokenizer


def worker(spec: str, args) -> None:
    """One strategy in this (fresh) process; prints its row as one JSON line."""
    try:
        if args.trainer[0] == "step":
            row = measure(spec, args, load(args.tiny))
        else:
            row = measure_through_trainer(args.trainer[0], spec, args, load(args.tiny))
    except ForgetlessError as exc:  # e.g. stm at a tau below a random tiny model's every token
        row = {"strategy": spec, "skipped": str(exc)}
    print("ROW " + json.dumps(row), flush=True)


def importance_against_fisher(args) -> None:
    """Time `layerwise` importance and `ewc`'s per-sample Fisher on the same general examples, then each at
    its own default size (what a run protecting the starting model pays before its first task)."""
    from forgetless.strategies.ewc import EWC
    from forgetless.strategies.layerwise import Layerwise

    model, tokenizer = load(args.tiny)
    config = parse_config({"tasks": [{"name": "support", "builtin": "support"}], "train": {"max_length": 256}})
    task = load_task(config.tasks[0])
    ctx = context_for(config, model, tokenizer, [task], 0)
    weights = trained_parameters(model)
    layerwise, ewc = Layerwise(), EWC()

    def timed(function, count: int) -> float:
        examples = protection_examples(ctx, count, "general", seed=0)
        started = time.perf_counter()
        function(examples)
        return time.perf_counter() - started

    def importance(examples):
        squared_gradient_importance(model, weights, examples, layerwise.batch_size, tokenizer.pad_token_id)

    def fisher(examples):
        per_sample_fisher(model, list(weights), examples, tokenizer.pad_token_id, batch_size=ewc.batch_size)

    same = args.importance_examples
    importance_s, fisher_s = timed(importance, same), timed(fisher, same)
    print(
        f"same {same} general examples: layerwise importance {importance_s:.1f} s, per-sample Fisher {fisher_s:.1f} s, "
        f"Fisher / importance = {fisher_s / importance_s:.1f}x"
    )
    lw_count, ewc_count = layerwise.steps * layerwise.batch_size, ewc.samples
    lw_s = importance_s if lw_count == same else timed(importance, lw_count)
    ewc_s = fisher_s if ewc_count == same else timed(fisher, ewc_count)
    print(
        f"defaults (layerwise {lw_count}, ewc {ewc_count} examples): {lw_s:.1f} s against {ewc_s:.1f} s, "
        f"Fisher / importance = {ewc_s / lw_s:.1f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", nargs="+", default=None, help="default: every registered strategy")
    parser.add_argument("--adapter", default="full", choices=["full", "lora"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--tiny", action="store_true", help="a tiny random model instead of the default one")
    parser.add_argument("--trainer", nargs="+", default=["step"], choices=["step", "runner", "sft"],
                        help="what runs the steps (several: one column each)")
    parser.add_argument("--importance", action="store_true", help="only: layerwise importance against the Fisher")
    parser.add_argument("--importance-examples", type=int, default=32)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args)
    if args.importance:
        return importance_against_fisher(args)
    names = args.strategies or [n for n in known_strategies() if n != "naive" and not n.startswith("_")]
    forwarded = ["--adapter", args.adapter, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                 "--max-length", str(args.max_length), *(["--tiny"] if args.tiny else [])]
    if args.trainer == ["step"]:
        header = ("strategy", "prepare s", "plain step s", "step ratio", "peak mem ratio", "state MB")
        print(f"{header[0]:10s} {header[1]:>10s} {header[2]:>12s} {header[3]:>10s} {header[4]:>14s} {header[5]:>9s}")
    else:
        print("strategy   " + " ".join(f"{kind + ' plain s':>14s} {kind + ' step ratio':>17s} {kind + ' peak mem':>15s} "
                                         f"{kind + ' prepare s':>16s}" for kind in args.trainer))
    for name in names:
        rows = [_worker_row(name, [*forwarded, "--trainer", kind]) for kind in args.trainer]
        if any(row is None for row in rows):
            continue
        if args.trainer == ["step"]:
            row = rows[0]
            print(
                f"{name:10s} {row['preparation_s']:10.1f} {row['plain_step_s']:12.2f} {row['step_ratio']:10.2f}x "
                f"{row['peak_memory_ratio']:13.2f}x {row['state_mb']:9.1f}",
                flush=True,
            )
        else:
            cells = " ".join(f"{r['plain_step_s']:14.2f} {r['step_ratio']:16.2f}x {r['peak_memory_ratio']:14.2f}x "
                             f"{r['preparation_s']:16.1f}" for r in rows)
            print(f"{name:10s} {cells}", flush=True)


def _worker_row(name: str, forwarded: list[str]) -> dict | None:
    """Run one strategy in a fresh process; its row, or None after printing why there is none."""
    done = subprocess.run([sys.executable, __file__, *forwarded, "--worker", name], capture_output=True, text=True)
    rows = [line[4:] for line in done.stdout.splitlines() if line.startswith("ROW ")]
    if done.returncode or not rows:
        print(f"{name:10s} failed (exit {done.returncode}):\n{done.stderr[-2000:]}", flush=True)
        return None
    row = json.loads(rows[-1])
    if "skipped" in row:
        print(f"{name:10s} skipped: {row['skipped']}", flush=True)
        return None
    return row


if __name__ == "__main__":
    main()
