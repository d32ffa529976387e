"""Multiple-choice scoring: forgetless against lm-evaluation-harness, same model object, one process.

    python benchmarks/eval_speed.py [--model default] [--task-file F.jsonl] [--limit N] [--batch-size B]

Prints both accuracies (acc, acc_norm with stderr), their absolute differences, the largest per-choice
log-likelihood difference and the time ratio lm-eval / forgetless. lm-eval runs with `--batch-size`
requests per forward; forgetless gets the same padded-token budget, B x the longest request.
Both are warmed up on a few items before timing; with `--repeats N` they alternate N times and the
fastest run of each counts (other processes on a small machine make single timings noisy).
The task file has one JSON object per line with `question`, `choices` and `answer` (the index
of the correct choice).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from forgetless.evaluation.lm_eval_bridge import run_lm_eval_multiple_choice
from forgetless.evaluation.multiple_choice import MultipleChoiceItem, score_multiple_choice
from forgetless.fileio import read_jsonl
from forgetless.models import load_model_and_tokenizer

DEFAULT_TASK = Path(__file__).resolve().parent.parent / "src/forgetless/data/assets/general/capitals.jsonl"
WARMUP_ITEMS = 8


def load_items(path: Path, limit: int | None) -> list[MultipleChoiceItem]:
    rows = read_jsonl(path)[:limit]
    return [MultipleChoiceItem(row["question"], tuple(row["choices"]), int(row["answer"])) for row in rows]


def longest_request_tokens(tokenizer, items: list[MultipleChoiceItem]) -> int:
    """Tokens of the longest question + choice, the width of lm-eval's first (largest) batch."""
    return max(len(tokenizer(item.question + " " + choice)["input_ids"]) for item in items for choice in item.choices)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--task-file", type=Path, default=DEFAULT_TASK)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1, help="time each this many times, alternating; keep the best")
    args = parser.parse_args()

    model, tokenizer = load_model_and_tokenizer(args.model)
    items = load_items(args.task_file, args.limit)
    budget = args.batch_size * longest_request_tokens(tokenizer, items)
    print(f"{len(items)} items from {args.task_file}; model {args.model}; torch threads {torch.get_num_threads()}")
    print(f"lm-eval batch size {args.batch_size}; forgetless budget {budget} padded tokens per forward")

    score_multiple_choice(model, tokenizer, items[:WARMUP_ITEMS], max_batch_tokens=budget)
    run_lm_eval_multiple_choice(model, tokenizer, items[:WARMUP_ITEMS], batch_size=args.batch_size)

    our_times, their_runs = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours = score_multiple_choice(model, tokenizer, items, max_batch_tokens=budget)
        our_times.append(time.perf_counter() - start)
        their_runs.append(run_lm_eval_multiple_choice(model, tokenizer, items, batch_size=args.batch_size))
    our_seconds = min(our_times)
    theirs = min(their_runs, key=lambda run: run.seconds)

    print(f"{'':12}{'acc':>18}{'acc_norm':>18}{'seconds':>10}")
    for name, result, seconds in [("forgetless", ours, our_seconds), ("lm-eval", theirs, theirs.seconds)]:
        acc = f"{result.acc:.4f} ± {result.acc_stderr:.4f}"
        acc_norm = f"{result.acc_norm:.4f} ± {result.acc_norm_stderr:.4f}"
        print(f"{name:12}{acc:>18}{acc_norm:>18}{seconds:>10.2f}")
    largest = max(abs(a - b) for x, y in zip(ours.loglikelihoods, theirs.loglikelihoods) for a, b in zip(x, y))
    print(
        f"|acc difference| {abs(ours.acc - theirs.acc):.4f}   "
        f"|acc_norm difference| {abs(ours.acc_norm - theirs.acc_norm):.4f}"
    )
    print(f"items judged differently: acc {sum(a != b for a, b in zip(ours.correct, theirs.correct))}, "
          f"acc_norm {sum(a != b for a, b in zip(ours.correct_norm, theirs.correct_norm))}; "
          f"largest log-likelihood difference {largest:.2e}")
    print(f"time ratio lm-eval / forgetless: {theirs.seconds / our_seconds:.2f}x end to end, "
          f"{theirs.model_seconds / our_seconds:.2f}x against lm-eval's loglikelihood call alone "
          f"({theirs.model_seconds:.2f} s)")


if __name__ == "__main__":
    main()
