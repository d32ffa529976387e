"""What `lwf`'s bfloat16 teacher buys and costs: forward time against float32, and the KL floor it adds.

    .venv/bin/python benchmarks/lwf_teacher_precision.py                 # default model, LoRA, 4 x 256
    .venv/bin/python benchmarks/lwf_teacher_precision.py --batches 3 --max-length 128

The teacher is what `lwf` runs each step (the base with the adapter disabled, LM head at the distilled
positions only); the two precisions alternate on the same batches and the ratio of median times is
printed. The floor is `T^2 KL(bfloat16 teacher || float32 teacher)` at the distilled positions: what the
rounding alone asks of a student that still equals the teacher, to be read against the `T^2 KL` a run
reports as `lwf_mean_scaled_kl`.
"""

from __future__ import annotations

import argparse
import statistics
import time

from forgetless.adapters import prepare_for_task
from forgetless.config import parse_config
from forgetless.data.encoding import PaddingCollator, encode_rows
from forgetless.data.tasks import load_task
from forgetless.evaluation._scoring import model_device
from forgetless.models import load_model_and_tokenizer
from forgetless.strategies import build_strategy
from forgetless.strategies._common import runs_bfloat16_natively
from forgetless.strategies.lwf import distillation_loss, distilled_positions
from forgetless.training import context_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=2.0)
    args = parser.parse_args()

    model, tokenizer = load_model_and_tokenizer("default")
    config = parse_config({"adapter": "lora", "tasks": [{"name": "support", "builtin": "support"}]})
    model = prepare_for_task(model, config, 0)
    task = load_task(config.tasks[0])
    ctx = context_for(config, model, tokenizer, [task], 0)
    examples = encode_rows(tokenizer, task.train[: args.batch_size * (args.batches + 1)], args.max_length)
    collate = PaddingCollator(tokenizer.pad_token_id)
    batches = [collate(examples[i * args.batch_size : (i + 1) * args.batch_size]) for i in range(args.batches + 1)]
    print(f"bfloat16 matrix units on {model_device(model)}: {runs_bfloat16_natively(model_device(model))}")

    teachers = {}
    for precision in ("float32", "bfloat16"):
        teachers[precision] = build_strategy({"name": "lwf", "teacher_precision": precision, "temperature": args.temperature})
        teachers[precision].on_task_start(ctx)
    times = {precision: [] for precision in teachers}
    floors, largest = [], 0.0
    for index, batch in enumerate(batches):
        mask = distilled_positions(batch, "all")
        logits = {}
        for precision, strategy in teachers.items():
            started = time.perf_counter()
            logits[precision] = strategy.teacher_logits(ctx, batch, mask)
            if index > 0:  # the first batch warms both up
                times[precision].append(time.perf_counter() - started)
        reference = logits["float32"]
        every_row = mask.new_ones(1, len(reference))  # the float32 logits as a (1, N, V) "student"
        floors.append(distillation_loss(reference.unsqueeze(0), logits["bfloat16"], every_row, args.temperature).item())
        largest = max(largest, (logits["bfloat16"].float() - reference).abs().max().item())
    medians = {precision: statistics.median(values) for precision, values in times.items()}
    print(
        f"teacher forward ({args.batch_size} x {batches[0]['input_ids'].size(1)} tokens): float32 {medians['float32']:.3f} s, "
        f"bfloat16 {medians['bfloat16']:.3f} s, float32 / bfloat16 = {medians['float32'] / medians['bfloat16']:.2f}x"
    )
    print(f"T^2 KL floor from rounding (T = {args.temperature}): mean {statistics.mean(floors):.5f}, largest {max(floors):.5f}")
    print(f"largest logit difference: {largest:.3f}")


if __name__ == "__main__":
    main()
