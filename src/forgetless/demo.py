"""`forgetless demo`: fine-tune the bundled default model on `support` twice (full weights, LoRA) and
show what each learned in-domain and what it forgot of general ability.

The settings below were chosen so the whole demo runs in well under 15 minutes on 2 CPU cores while
full fine-tuning's general-ability drop stays clearly outside the noise band (see README). Both runs
start from the same model, so the "before" evaluation is done once and shared.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import parse_config
from .report import format_table
from .results import RunResults
from .training import ContinualRun

DEMO_TRAIN = {"steps": 30, "batch_size": 4, "lr": 2.0e-4, "max_length": 256, "seed": 0}
QUICK_TRAIN = {"steps": 3, "batch_size": 2, "lr": 2.0e-4, "max_length": 128, "seed": 0}
LORA_LR_FACTOR = 5  # LoRA needs a larger step size than full fine-tuning to learn comparably


def demo_configs(quick: bool = False) -> dict[str, Any]:
    train = QUICK_TRAIN if quick else DEMO_TRAIN
    base = {
        "model": "default",
        "tasks": [{"name": "support", "builtin": "support"}],
        "strategies": ["naive"],
        "eval": {"suites": ["general"], "limit": 12 if quick else None},
        "train": train,
    }
    return {
        "full fine-tuning": parse_config({**base, "adapter": "full", "checkpoints": "none"}, "demo (full)"),
        "LoRA r=8 (q,k,v,o)": parse_config(
            {
                **base,
                "adapter": "lora",
                "lora": {"r": 8, "alpha": 16},
                "train": {**train, "lr": train["lr"] * LORA_LR_FACTOR},
                "checkpoints": "last",
            },
            "demo (lora)",
        ),
    }


def demo_row(label: str, results: RunResults) -> list[str]:
    task = results.tasks[0]
    first, last = results.task_evals[0].scores[task], results.task_evals[-1].scores[task]
    m = results.metrics
    return [
        label,
        f"{first['perplexity']:.2f} -> {last['perplexity']:.2f}",
        f"{first['mc_acc']:.3f} -> {last['mc_acc']:.3f}",
        f"{m.general_before:.4f}",
        f"{m.general_after:.4f}",
        f"{m.general_delta_abs:+.4f} ± {m.general_delta_se:.4f}",
        f"{100 * m.general_delta_rel:+.1f} %",
        "within noise" if m.general_within_noise else "beyond noise",
    ]


def run_demo(out: str | Path, quick: bool = False) -> list[list[str]]:
    out = Path(out)
    rows, before = [], None
    for label, config in demo_configs(quick).items():
        print(f"\n=== {label} ===", flush=True)
        folder = out / ("full" if config.adapter == "full" else "lora")
        run = ContinualRun(config, folder, before=before)
        rows.append(demo_row(label, run.execute()))
        before = run.evaluator.log
    headers = [
        "run", "support perplexity", "support reply accuracy", "general before", "general after",
        "general change (abs ± s.e.)", "relative", "noise",
    ]
    table = format_table(headers, rows)
    (out / "demo.md").write_text(table + "\n", encoding="utf-8")
    print("\n" + table)
    print(f"\nreports: {out / 'full' / 'report.md'}, {out / 'lora' / 'report.md'}")
    return rows
