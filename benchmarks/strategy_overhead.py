"""Training-step cost of each strategy against plain fine-tuning, as ratios measured in one process.

    .venv/bin/python benchmarks/strategy_overhead.py                      # all registered strategies
    .venv/bin/python benchmarks/strategy_overhead.py --strategies ewc stm --steps 5 --adapter lora
    .venv/bin/python benchmarks/strategy_overhead.py --tiny               # a tiny random model: a set-up check

For each strategy: its one-off preparation (on_task_start + prepare_examples: Fisher, importance, STM
scoring, generation) is timed once; then training steps with the strategy and plain steps alternate on
the same batches (forward, token cross-entropy, extra_loss, backward, AdamW), and the ratio of median
step times is printed. Peak memory is sampled (process RSS) during each kind of step; the ratio of the
peak above the pre-step baseline is printed too. Alternating steps cancels most of the noise of a
shared machine; single numbers from such a machine are not worth quoting, ratios are.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import threading
import time

import psutil
import torch

from forgetless.adapters import prepare_for_task
from forgetless.config import parse_config
from forgetless.data.encoding import PaddingCollator, encode_rows
from forgetless.data.tasks import load_task
from forgetless.errors import ForgetlessError
from forgetless.models import load_model_and_tokenizer
from forgetless.strategies import TaskContext, build_strategy, known_strategies
from forgetless.training import token_cross_entropy


class PeakRss:
    """Samples this process's resident memory every few milliseconds while active."""

    def __init__(self):
        self.process = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self):
        self.peak = self.process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def step(model, optimizer, batch, strategy, ctx) -> float:
    started = time.perf_counter()
    outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    loss = token_cross_entropy(outputs.logits, batch["labels"], batch.get("token_weights"))
    if strategy is not None:
        extra = strategy.extra_loss(ctx, model, {**batch, "token_weights": batch.get("token_weights")}, outputs)
        if extra is not None:
            loss = loss + extra
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def measure(spec: str, args, model_and_tokenizer) -> dict:
    base_model, tokenizer = model_and_tokenizer
    config = parse_config(
        {
            "adapter": args.adapter,
            "tasks": [{"name": "support", "builtin": "support"}],
            "strategies": [spec],
            "train": {"batch_size": args.batch_size, "max_length": args.max_length},
        }
    )
    model = prepare_for_task(copy.deepcopy(base_model), config, 0)
    model.train()
    task = load_task(config.tasks[0])
    strategy = build_strategy(spec)
    strategy.check(config, [strategy])
    ctx = TaskContext(config=config, model=model, tokenizer=tokenizer, task=task, task_index=0, tasks=[task])
    examples = encode_rows(tokenizer, task.train[: args.batch_size * (args.steps + 1)], args.max_length)

    started = time.perf_counter()
    strategy.on_task_start(ctx)
    prepared = strategy.prepare_examples(ctx, examples)
    preparation = time.perf_counter() - started

    collate = PaddingCollator(tokenizer.pad_token_id)
    # The same batches for both kinds of step; the strategy's own (masked, mixed) examples for its steps.
    plain_batches = [collate(examples[i * args.batch_size : (i + 1) * args.batch_size]) for i in range(args.steps + 1)]
    strategy_batches = [collate(prepared[i * args.batch_size : (i + 1) * args.batch_size]) for i in range(args.steps + 1)]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    step(model, optimizer, plain_batches[0], None, ctx)  # warm-up
    step(model, optimizer, strategy_batches[0], strategy, ctx)
    plain_times, strategy_times = [], []
    baseline = psutil.Process().memory_info().rss
    plain_peak = strategy_peak = baseline
    for i in range(1, args.steps + 1):
        with PeakRss() as peak:
            plain_times.append(step(model, optimizer, plain_batches[i], None, ctx))
        plain_peak = max(plain_peak, peak.peak)
        with PeakRss() as peak:
            strategy_times.append(step(model, optimizer, strategy_batches[i], strategy, ctx))
        strategy_peak = max(strategy_peak, peak.peak)
    state_bytes = sum(t.numel() * t.element_size() for t in strategy.state_tensors().values())
    return {
        "strategy": spec,
        "preparation_s": preparation,
        "plain_step_s": statistics.median(plain_times),
        "step_ratio": statistics.median(strategy_times) / statistics.median(plain_times),
        "peak_memory_ratio": (strategy_peak - baseline + 1) / (plain_peak - baseline + 1),
        "rss_gb": strategy_peak / 2**30,
        "state_mb": state_bytes / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", nargs="+", default=None, help="default: every registered strategy")
    parser.add_argument("--adapter", default="full", choices=["full", "lora"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--tiny", action="store_true", help="a tiny random model instead of the default one")
    args = parser.parse_args()
    if args.tiny:
        from transformers import LlamaConfig, LlamaForCausalLM

        _, tokenizer = load_model_and_tokenizer("default")
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
        model_and_tokenizer = (model, tokenizer)
    else:
        model_and_tokenizer = load_model_and_tokenizer("default")
    names = args.strategies or [n for n in known_strategies() if n != "naive" and not n.startswith("_")]
    header = ("strategy", "prepare s", "plain step s", "step ratio", "peak mem ratio", "state MB")
    print(f"{header[0]:10s} {header[1]:>10s} {header[2]:>12s} {header[3]:>10s} {header[4]:>14s} {header[5]:>9s}")
    for name in names:
        try:
            row = measure(name, args, model_and_tokenizer)
        except ForgetlessError as exc:  # e.g. stm on a random tiny model masks every token
            print(f"{name:10s} skipped: {exc}", flush=True)
            continue
        print(f"{name:10s} {row['preparation_s']:10.1f} {row['plain_step_s']:12.2f} {row['step_ratio']:10.2f}x "
              f"{row['peak_memory_ratio']:13.2f}x {row['state_mb']:9.1f}", flush=True)


if __name__ == "__main__":
    main()
