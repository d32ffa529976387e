"""Which tensors' move during a run's last task cost a general task: revert groups of tensors to their values
after the task before it, in the final model, and score that general task again.

    .venv/bin/forgetless run CONFIG --out RUN      # with `checkpoints: every_task` (and two tasks or more)
    .venv/bin/python benchmarks/revert_groups.py RUN --task word_definitions

Full fine-tuning checkpoints only (model.safetensors per task). Prints, per tensor, how far the last task moved it
(|W_last - W_before| / |W_start|) and the cosine between its move from the start before and after that task, then
the task's score at the start, before the last task, at the end, and at the end with each group (embeddings, norms,
attention q/k and v/o, MLP gate/up and down, thirds of the layers by depth) at its before-the-last-task values.
A group whose revert restores the score holds what the last task did to it. Writes RUN/revert_groups.json.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from forgetless.evaluation.suites import general_suite
from forgetless.models import default_model_path, load_model, load_tokenizer

PROJECTIONS = {"attention q,k": ("q_proj", "k_proj"), "attention v,o": ("v_proj", "o_proj"),
               "mlp gate,up": ("gate_proj", "up_proj"), "mlp down": ("down_proj",)}


def _layer(name: str) -> int | None:
    found = re.search(r"layers\.(\d+)\.", name)
    return int(found.group(1)) if found else None


def groups(names: list[str]) -> dict[str, list[str]]:
    """Tensor names by kind and by depth third."""
    layers = [n for n in (_layer(k) for k in names) if n is not None]
    depth = max(layers) + 1 if layers else 0
    out = {"embeddings": [k for k in names if "embed" in k], "norms": [k for k in names if "norm" in k]}
    out.update({g: [k for k in names if any(p in k for p in parts)] for g, parts in PROJECTIONS.items()})
    for third in range(3):
        lo, hi = third * depth // 3, (third + 1) * depth // 3
        out[f"layers {lo}-{hi - 1}"] = [k for k in names if _layer(k) is not None and lo <= _layer(k) < hi]
    return out


def moves(start: dict, before: dict, end: dict, names: list[str]) -> list[tuple[str, float, float]]:
    """(name, |end - before| / |start|, cosine of (before - start) and (end - start)) per tensor."""
    rows = []
    for k in names:
        d1, d2 = (before[k] - start[k]).float().flatten(), (end[k] - start[k]).float().flatten()
        step = (end[k] - before[k]).float().norm().item() / max(start[k].float().norm().item(), 1e-12)
        cos = torch.nn.functional.cosine_similarity(d1, d2, dim=0).item() if d1.norm() > 0 < d2.norm() else float("nan")
        rows.append((k, step, cos))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a `forgetless run` folder written with checkpoints: every_task")
    parser.add_argument("--task", default="word_definitions", help="a task of the general suite")
    parser.add_argument("--model", default=None, help="the run's starting model (default: the bundled one)")
    args = parser.parse_args()
    checkpoints = sorted((args.run / "checkpoints").glob("after-*/model.safetensors"),
                         key=lambda p: int(p.parent.name.split("-")[1]))
    if len(checkpoints) < 2:
        raise SystemExit(f"{args.run}/checkpoints: need model.safetensors after two tasks at least "
                         "(run with `checkpoints: every_task`)")
    suite = {t.name: t for t in general_suite()}
    if args.task not in suite:
        raise SystemExit(f"--task: {args.task!r} is not a general task ({', '.join(sorted(suite))})")
    path = args.model or default_model_path()
    tokenizer, model = load_tokenizer(path), load_model(path)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    before, end = load_file(str(checkpoints[-2])), load_file(str(checkpoints[-1]))
    names = [k for k in start if k in end]  # a tied output head is saved once, as the embeddings

    rows = moves(start, before, end, names)
    cosines = sorted(c for _, _, c in rows if c == c)
    print(f"{checkpoints[-2].parent.name} -> {checkpoints[-1].parent.name}: cosine of each tensor's move from the "
          f"start before and after: median {cosines[len(cosines) // 2]:.3f}, range {cosines[0]:.3f} to {cosines[-1]:.3f}")
    for name, step, cos in sorted(rows, key=lambda r: -r[1])[:8]:
        print(f"  moved most in the last task: {name} {step:.4f} of its norm (cosine {cos:+.3f})")

    def score(state: dict) -> float:
        model.load_state_dict(state, strict=False)
        return suite[args.task].evaluate(model, tokenizer).summary["score"]

    found = {"start": score(start), "before the last task": score(before), "end": score(end)}
    print(f"{args.task}: " + ", ".join(f"{k} {v:.3f}" for k, v in found.items()))
    reverted = {}
    for group, members in groups(names).items():
        chosen = set(members)
        reverted[group] = score({k: (before[k] if k in chosen else end[k]) for k in names})
        print(f"  end with {group} ({len(members)} tensors) as before the last task: {reverted[group]:.3f}", flush=True)
    out = args.run / "revert_groups.json"
    out.write_text(json.dumps({"task": args.task, "scores": found, "reverted": reverted}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
