"""Fine-tune the bundled default model with TRL's SFTTrainer, protected and measured by forgetless.

    python examples/sft_with_forgetless.py --out sft-out                      # ~10 min on 2 CPU cores
    python examples/sft_with_forgetless.py --out sft-out --max-steps 2 --limit 4 \
        --strategies '[{"name": "ewc", "samples": 8}]'                     # a quick check: ~80 s on 2 CPU cores

(`ewc` estimates its Fisher on `samples` sequences at the task's start and end, 64 by default: about 3 of the
3.5-4 minutes that `--max-steps 2 --limit 4` alone takes here: 187 s of 224 s under cProfile.)

The three forgetless lines: `with_strategies(SFTTrainer)`, `strategies=[...]` and the
`ForgettingMonitor` callback. Everything else is a plain TRL script (prompt-completion data,
completion-only loss, bf16 where the hardware has it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

import forgetless

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="sft-out", help="output folder (checkpoints off; forgetless's report)")
    parser.add_argument("--data", default=str(HERE / "tickets.jsonl"), help="JSONL of {prompt, response} rows")
    parser.add_argument("--strategies", default='["ewc"]', help='JSON list of strategy specs, e.g. \'["replay", "wise"]\'')
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--limit", type=int, default=None, help="score at most this many items per evaluation task")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA Ampere+, or a CPU with AVX512-BF16/AMX)")
    args = parser.parse_args()

    path = forgetless.default_model_path()  # a plain transformers folder: any HF tool loads it
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    rows = [json.loads(line) for line in Path(args.data).read_text(encoding="utf-8").splitlines() if line.strip()]
    dataset = Dataset.from_list([{"prompt": r["prompt"], "completion": r["response"]} for r in rows])

    SFTWithStrategies = forgetless.with_strategies(SFTTrainer)
    monitor = forgetless.ForgettingMonitor(
        suites=["general"], tasks=[str(HERE / "quiz.jsonl")], every_steps=max(1, args.max_steps // 3),
        out_dir=args.out, limit=args.limit,
    )
    trainer = SFTWithStrategies(
        model=model,
        args=SFTConfig(
            output_dir=str(Path(args.out) / "trainer"), max_steps=args.max_steps, per_device_train_batch_size=2,
            gradient_accumulation_steps=2, learning_rate=2e-4, max_length=128, logging_steps=5, save_strategy="no",
            report_to=[], bf16=args.bf16, use_cpu=True if not _has_cuda() else False,
        ),
        train_dataset=dataset,
        processing_class=tokenizer,
        strategies=json.loads(args.strategies),
        callbacks=[monitor],
    )
    trainer.train()
    metrics = monitor.results().metrics
    print(f"general change: {metrics.general_delta_abs:+.4f} ± {metrics.general_delta_se:.4f} "
          f"(before {metrics.general_before:.4f}); report: {Path(args.out) / 'report.md'}")


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
