"""Which tensors' move during a run's last task cost a general task: revert groups of tensors to their values
after the task before it, in the final model, and score that general task again.

    .venv/bin/forgetless run CONFIG --out RUN      # full fine-tuning, `checkpoints: every_task`, two tasks or more
    .venv/bin/python benchmarks/revert_groups.py RUN --task word_definitions [--radius 0.01] [--match REGEX]...

The starting model, its dtype, `trust_remote_code` and the evaluation's item limit are the run's (its
results.json). Prints the tensors' distances from the start before and after the last task (median, largest, and
with --radius how many are inside it), the cosine between those two moves (median and range), the tensors the last
task moved most (|W_end - W_before| / |W_start|), then the task's score at the start, before the last task, at the
end (with the last task's change and its s.e.), and at the end with each group (embeddings and output head, norms,
attention q/k and v/o, MLP gate/up and down, thirds of the layers by depth, and each --match REGEX's tensors) at
its before-the-last-task values, each with its change from the end and that change's paired bootstrap s.e. over
the task's items (forgetless.metrics.paired_delta, the same resamples for every group). A group whose revert gives
back the score holds the part of the last task's change that cost it; groups overlap. Writes RUN/revert_groups.json: "scores",
"last_task_change" (change, se), "reverted" (group -> score, change from the end, se) and "moves" (per tensor).
"""

from __future__ import annotations

import argparse
import re
import statistics
from pathlib import Path

import torch
from safetensors.torch import load_file

from forgetless.config import parse_config
from forgetless.evaluation.suites import general_suite
from forgetless.fileio import atomic_write_json
from forgetless.metrics import paired_delta
from forgetless.models import load_model_and_tokenizer
from forgetless.results import RunResults

PROJECTIONS = {"attention q,k": ("q_proj", "k_proj"), "attention v,o": ("v_proj", "o_proj"),
               "mlp gate,up": ("gate_proj", "up_proj"), "mlp down": ("down_proj",)}
SHOWN = 10  # tensors listed as moved most


def _layer(name: str) -> int | None:
    found = re.search(r"layers\.(\d+)\.", name)
    return int(found.group(1)) if found else None


def groups(names: list[str], patterns: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Tensor names by kind and, for three layers or more, by depth third; then one group per regular expression
    in `patterns` (the names in which re.search finds it)."""
    out = {"embeddings and head": [k for k in names if "embed" in k or "lm_head" in k],
           "norms": [k for k in names if "norm" in k]}
    out.update({g: [k for k in names if any(p in k for p in parts)] for g, parts in PROJECTIONS.items()})
    depth = max((n for n in map(_layer, names) if n is not None), default=-1) + 1
    if depth >= 3:
        for third in range(3):
            lo, hi = third * depth // 3, (third + 1) * depth // 3
            out[f"layers {lo}-{hi - 1}"] = [k for k in names if _layer(k) is not None and lo <= _layer(k) < hi]
    for pattern in patterns:
        out[f"matching {pattern}"] = [k for k in names if re.search(pattern, k)]
    return out


def moves(start: dict, before: dict, end: dict, names: list[str]) -> list[dict]:
    """Per tensor: its distance from the start before and after the last task and the last task's step, each over
    the start's norm, and the cosine of the two moves from the start (nan where either is zero)."""
    rows = []
    for k in names:
        w0, w1, w2 = start[k].float(), before[k].float(), end[k].float()
        norm = max(w0.norm().item(), 1e-12)
        d1, d2 = (w1 - w0).flatten(), (w2 - w0).flatten()
        n1, n2 = d1.norm().item(), d2.norm().item()
        cos = torch.nn.functional.cosine_similarity(d1, d2, dim=0).item() if n1 > 0 and n2 > 0 else float("nan")
        rows.append({"name": k, "before": n1 / norm, "end": n2 / norm,
                     "step": (w2 - w1).norm().item() / norm, "cosine": cos})
    return rows


def check_patterns(patterns: list[str], names: list[str]) -> None:
    """Each --match pattern must compile and find at least one tensor name."""
    for pattern in patterns:
        try:
            found = [k for k in names if re.search(pattern, k)]
        except re.error as error:
            raise SystemExit(f"--match {pattern!r}: not a regular expression ({error})") from None
        if not found:
            example = next((k for k in names if _layer(k) is not None), names[0])
            raise SystemExit(f"--match {pattern!r}: no tensor of the model has a name it finds (e.g. {example})")


def reverted_scores(samples_of, at_end, before: dict, end: dict, names: list[str], patterns: tuple[str, ...] = ()):
    """Per group: (group, its tensor names, {score, change, se}) with the group at its `before` values and every
    other tensor at its `end` value; change = that state's score minus the end's, se its paired bootstrap s.e."""
    for group, members in groups(names, patterns).items():
        chosen = set(members)
        put_back = samples_of({k: (before[k] if k in chosen else end[k]) for k in names})
        change, se = paired_delta(at_end, put_back)
        yield group, members, {"score": put_back.score(), "change": change, "se": se}


def _checkpoints(run: Path) -> list[Path]:
    found = sorted((run / "checkpoints").glob("after-*/model.safetensors"), key=lambda p: int(p.parent.name.split("-")[1]))
    if len(found) < 2:
        raise SystemExit(f"{run}/checkpoints: needs one model.safetensors per task for two tasks at least (full "
                         "fine-tuning with `checkpoints: every_task`; adapters or a sharded checkpoint are not read)")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a `forgetless run` folder (full fine-tuning, checkpoints: every_task)")
    parser.add_argument("--task", default="word_definitions", help="a task of the general suite")
    parser.add_argument("--radius", type=float, default=None,
                        help="count the tensors inside this relative distance from the start (l2sp's target: 0.01)")
    parser.add_argument("--match", action="append", default=[], metavar="REGEX",
                        help="also put back the tensors whose name this regular expression finds (repeatable), e.g. "
                        r"'layers\.[0-9]\.self_attn\.(v|o)_proj'")
    args = parser.parse_args()

    checkpoints = _checkpoints(args.run)
    config = parse_config(RunResults.read(args.run / "results.json").config, f"{args.run}/results.json")
    suite = {t.name: t for t in general_suite()}
    if args.task not in suite:
        raise SystemExit(f"--task: {args.task!r} is not a general task ({', '.join(sorted(suite))})")
    model, tokenizer = load_model_and_tokenizer(config.model, config.trust_remote_code, getattr(torch, config.model_dtype))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    before, end = load_file(str(checkpoints[-2])), load_file(str(checkpoints[-1]))
    names = [k for k in start if k in end]  # a tied output head is saved once, as the embeddings
    left_out, extra = sorted(set(start) - set(names)), sorted(set(end) - set(start))
    if extra or left_out not in ([], ["lm_head.weight"]):
        raise SystemExit(f"{checkpoints[-1]}: its tensors are not the starting model's (missing {left_out[:3]}, "
                         f"extra {extra[:3]})")
    check_patterns(args.match, names)  # before any scoring: a mistyped pattern costs nothing

    rows = moves(start, before, end, names)
    cosines = [r["cosine"] for r in rows if r["cosine"] == r["cosine"]]
    for when in ("before", "end"):
        inside = "" if args.radius is None else (
            f"; {sum(r[when] < 0.99 * args.radius for r in rows)} of {len(rows)} inside 99 % of {args.radius}")
        print(f"{when}: median distance from the start {statistics.median(r[when] for r in rows):.4f} of the "
              f"tensor's norm, largest {max(r[when] for r in rows):.4f}{inside}")
    if cosines:
        print(f"cosine of each tensor's move from the start before and after the last task: median "
              f"{statistics.median(cosines):.3f}, range {min(cosines):.3f} to {max(cosines):.3f}")
    for r in sorted(rows, key=lambda r: -r["step"])[:SHOWN]:
        print(f"  moved most in the last task: {r['name']} {r['step']:.4f} of its norm (cosine {r['cosine']:+.3f})")

    def samples(state: dict):
        model.load_state_dict(state, strict=False)  # checked above: only a tied head is absent
        return suite[args.task].evaluate(model, tokenizer, limit=config.eval.limit).samples

    found = {"start": samples(start), "before the last task": samples(before), "end": samples(end)}
    last_change = paired_delta(found["before the last task"], found["end"])
    print(f"{args.task}: " + ", ".join(f"{k} {v.score():.3f}" for k, v in found.items())
          + f" (the last task's change {last_change[0]:+.3f} ± {last_change[1]:.3f})")
    reverted = {}
    for group, members, row in reverted_scores(samples, found["end"], before, end, names, tuple(args.match)):
        reverted[group] = row
        print(f"  end with {group} ({len(members)} tensors) as before the last task: {row['score']:.3f} "
              f"({row['change']:+.3f} ± {row['se']:.3f} from the end)", flush=True)
    out = args.run / "revert_groups.json"
    atomic_write_json(out, {"task": args.task, "scores": {k: v.score() for k, v in found.items()},
                            "last_task_change": {"change": last_change[0], "se": last_change[1]},
                            "reverted": reverted, "moves": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
