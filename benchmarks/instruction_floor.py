"""How far the starting model's instruction pass rate is above what answers that ignore the prompt reach.

    .venv/bin/python benchmarks/instruction_floor.py bench-out/gen/before.json

Reads a "before" evaluation that scored the `instructions` suite (compare's before.json, or a resumable state's)
and prints, per check and in all: the pass rate of the model's own answers; of the same answers given to the
wrong prompts (every cyclic shift of the answer list, averaged: the floor of answering in general without
following this prompt); and of a few constant answers (what a collapse to one fixed reply would score).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict

from forgetless.evaluation.instructions import passes
from forgetless.evaluation.suites import load_suite

CONSTANT_ANSWERS = ["OK.", "I am sorry, I cannot help with that.",
                    "Thank you for getting in touch. Best regards, Support"]


def pass_rate(answers: list[str], rows: list[dict]) -> float:
    return sum(passes(answer, row["checks"]) for answer, row in zip(answers, rows)) / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", help="before.json (forgetless compare) holding the instructions suite's answers")
    args = parser.parse_args()
    saved = json.loads(open(args.before, encoding="utf-8").read())
    samples = saved["log"]["general_samples"][0]["instructions"]
    answers = samples.get("texts")
    if not answers:
        raise SystemExit(f"{args.before}: no instruction answers (written before answers were kept, or no instructions suite)")
    [suite] = load_suite("instructions")
    rows = suite.rows[: len(answers)]
    n = len(rows)
    shifted = [[answers[(i + k) % n] for i in range(n)] for k in range(1, n)]
    by_check = defaultdict(list)
    for index, row in enumerate(rows):
        by_check[row["checks"][0][0]].append(index)
    print(f"{n} prompts")
    print(f"{'check':<16} {'own answers':>11} {'shuffled':>9} " + " ".join(f"{a[:12]!r:>15}" for a in CONSTANT_ANSWERS))
    for check, indices in [("all", list(range(n))), *sorted(by_check.items())]:
        part = [rows[i] for i in indices]
        own = pass_rate([answers[i] for i in indices], part)
        floor = statistics.mean(pass_rate([s[i] for i in indices], part) for s in shifted)
        constants = [pass_rate([a] * len(part), part) for a in CONSTANT_ANSWERS]
        print(f"{check:<16} {own:>11.3f} {floor:>9.3f} " + " ".join(f"{c:>15.3f}" for c in constants))


if __name__ == "__main__":
    main()
