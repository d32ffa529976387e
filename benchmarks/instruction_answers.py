"""Which `instructions` checks each row of a comparison kept, and how many of its answers ran to the length budget.

    .venv/bin/python benchmarks/instruction_answers.py bench-out/chat-general/bundled bench-out/chat-general/chat

Reads compare folders that scored the `instructions` suite (the answers are kept in before.json and in each row's
evaluations.json) and prints a line for the start and for each row after its last task: the pass rate of each
check that some run passed (ten prompts each; the others are named below the table); for JSON, numbered and bulleted lists,
also the share of answers holding the asked format anywhere, text around it allowed; the pass rate of all prompts;
`formats`, the last three readings over their 30 prompts (the share after training: compare's `formats` column
is its change from the start);
the share of answers that ran to the suite's budget of new tokens (counted as generated where the evaluation kept the
lengths, forgetless.evaluation.stops; in older folders their re-tokenized length within 2 tokens of it: approximate
both ways, as re-tokenizing a decoded answer can count fewer tokens than were generated and an answer that ended by
itself 1 or 2 tokens short of the budget counts as cut); and the mean answer length in tokens, counted the same way. A
fine-tuned model that still writes the asked format and then runs on ("Here is the JSON: ... Your answer is ...")
fails "output only", "nothing else" and word limits: these columns tell that apart from one that no longer writes
the format.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from general_data_table import folder_names, rows_of, samples, shared_start  # benchmarks/, beside this script

from forgetless.evaluation.evaluator import EvaluationLog
from forgetless.evaluation.formats import ANYWHERE, format_samples
from forgetless.evaluation.instructions import CHECKS, MAX_NEW_TOKENS, passes
from forgetless.evaluation.suites import load_suite
from forgetless.metrics import ScoreSamples
from forgetless.models import load_tokenizer

NEAR_BUDGET = 2  # as scripts/build_chat_general.py: a re-tokenized answer this close to the budget filled it


def answer_columns(folders: list[Path]) -> dict[str, ScoreSamples]:
    """column name -> the instruction answers' samples: the folders' shared start, then each row of each folder after
    training."""
    columns = {"start": EvaluationLog.from_json(shared_start(folders)).general_samples[0]["instructions"]}
    names = folder_names(folders)
    for folder in folders:
        for label in rows_of(folder):
            column = f"{names[folder]}: {label}"
            if column in columns:
                raise SystemExit(f"two runs would share the column {column!r}: give the folders distinct names")
            columns[column] = samples(folder, label, -1)["instructions"]
    return columns


def check_pass_rates(answers: list[str], rows: list[dict]) -> dict[str, float]:
    """check name -> pass rate of the prompts whose first check it is; "NAME, somewhere in the answer" -> the share
    of those answers holding the asked format anywhere (forgetless.evaluation.formats's readings)."""
    results = defaultdict(list)
    for answer, row in zip(answers, rows):
        name, arguments = row["checks"][0]
        results[name].append(passes(answer, row["checks"]))
        if name in ANYWHERE:
            results[f"{name}, somewhere in the answer"].append(ANYWHERE[name](answer, **arguments))
    return {name: sum(values) / len(values) for name, values in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+", help="compare folders sharing one before.json")
    parser.add_argument("--model", default="default", help="the model whose tokenizer counts the answers' tokens")
    args = parser.parse_args()
    answered = answer_columns(args.folders)
    columns = {name: samples.texts for name, samples in answered.items()}
    [suite] = load_suite("instructions")
    tokenizer = load_tokenizer(args.model)
    rates = {name: check_pass_rates(answers, suite.rows) for name, answers in columns.items()}
    lengths = {name: samples.lengths or [len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in samples.texts]
               for name, samples in answered.items()}
    near = {name: 0 if samples.lengths else NEAR_BUDGET for name, samples in answered.items()}  # counted: exact
    shown = [check for check in rates["start"] if any(rates[name][check] for name in columns)]
    print("| run | " + " | ".join(shown) + f" | all | formats | answers at the {MAX_NEW_TOKENS}-token budget "
          "| mean length (tokens) |")
    print("|---|" + "---:|" * (len(shown) + 4))
    for name, answers in columns.items():
        passed = sum(passes(a, row["checks"]) for a, row in zip(answers, suite.rows)) / len(answers)
        at_budget = sum(n >= MAX_NEW_TOKENS - near[name] for n in lengths[name]) / len(answers)
        formats = format_samples(answers, suite.rows[:len(answers)])  # an evaluation with a limit answered fewer
        formats = float("nan") if formats is None else formats.score()
        mark = "*" if near[name] else ""  # re-tokenized: approximate
        print(f"| {name} | " + " | ".join(f"{rates[name][check]:.1f}" for check in shown)
              + f" | {passed:.3f} | {formats:.3f} | {at_budget:.2f}{mark} | {sum(lengths[name]) / len(answers):.1f}{mark} |")
    if any(near.values()):
        print(f"\n*: re-tokenized (the evaluation kept no answer lengths): within {NEAR_BUDGET} tokens of the budget "
              "counts as cut.")
    print("\nPassed by no run: " + (", ".join(c for c in rates["start"] if c in CHECKS and c not in shown) or "none"))


if __name__ == "__main__":
    main()
