"""Build benchmarks/data/chat_general.jsonl: the default model's own replies to open requests, as `general_data`.

    .venv/bin/python scripts/build_chat_general.py            # --check: fail if the committed file differs

What a chat model must keep is how it answers requests, and its own greedy replies are the closest offline
stand-in for its general chat traffic. Five open request forms x thirty topics = 150 prompts, written here.
None uses a topic, a form or a check of the `instructions` suite (scripts/build_instructions.py): no line
counts, case, required words, endings or JSON, so rehearsing these rows does not rehearse the suite's answers.
Each prompt goes through the model's chat template and is answered by greedy decoding (forgetless's own
generation, as the `instructions` suite does it) within MAX_NEW_TOKENS. This model's replies are long: one that
(re-tokenized) comes within 2 tokens of the budget stopped mid-sentence, and training on it would teach that, so
it is cut after its last full sentence (and left out if it has none). Known limit: re-tokenizing the decoded text
can count fewer tokens than were generated, so a reply cut by the budget can be missed (one in the committed file;
kept so that the file stays the one measured). Greedy decoding on CPU in float32 is deterministic on one machine;
another CPU's kernels may change a token, which --check would report.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from _generated import write_or_check  # scripts/, beside this file

OUT = Path(__file__).resolve().parents[1] / "benchmarks/data/chat_general.jsonl"
MAX_NEW_TOKENS = 160

TOPICS = ["volcanoes", "the piano", "gardening", "coffee", "trains", "the desert", "owls", "photography",
          "the human heart", "glaciers", "kites", "tea", "the violin", "rivers", "swimming", "clocks", "dolphins",
          "painting", "bridges", "snow", "maps", "camping", "elephants", "pottery", "thunderstorms", "apples",
          "sailing", "soap", "penguins", "the post office"]
FORMS = ["Tell me about {}.",
         "What should a beginner know about {}?",
         "Can you give me some advice about {}?",
         "Why do people find {} interesting?",
         "Write a short paragraph about {} for a children's book."]


def prompts() -> list[str]:
    return [form.format(topic) for topic in TOPICS for form in FORMS]


# A sentence end: ., ! or ? followed by white space, not after a digit ("1." opens a list item).
SENTENCE_END = r"(?<!\d)[.!?](?=\s)"


def full_sentences(reply: str) -> str:
    """`reply` up to its last sentence end (., ! or ?, not after a digit, followed by a space, a newline or the end), or ""."""
    ends = [m.end() for m in re.finditer(SENTENCE_END, reply + " ")]
    return reply[: ends[-1]].strip() if ends else ""


def build_text() -> str:
    from forgetless.evaluation.instructions import generate
    from forgetless.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer("default")
    asked = prompts()
    replies = generate(model, tokenizer, asked, MAX_NEW_TOKENS, progress=True)
    filled = [len(tokenizer(r, add_special_tokens=False)["input_ids"]) >= MAX_NEW_TOKENS - 2 for r in replies]
    kept = [(p, full_sentences(r) if cut else r.strip()) for p, r, cut in zip(asked, replies, filled)]
    rows = [{"prompt": p, "response": r} for p, r in kept if r]
    print(f"{len(rows)} of {len(asked)} prompts kept; {sum(filled)} replies filled the budget and were cut "
          f"after their last full sentence", file=sys.stderr)
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


if __name__ == "__main__":
    sys.exit(write_or_check(__doc__.splitlines()[0], OUT, build_text))
