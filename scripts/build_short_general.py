"""Build benchmarks/data/short_general.jsonl: the default model's own short replies, ones that stop, as `general_data`.

    .venv/bin/python scripts/build_short_general.py            # --check: fail if the committed file differs

After fine-tuning on the support replies (105-164 tokens each), the model's answers to the `instructions` suite
run on to the suite's 96-token budget (docs/results/generation-checks.md, "Why the pass rate falls"), and most of
the chat rows rehearsed so far are longer than that budget too. These rows rehearse answers that stop: five
requests for a brief answer x the chat rows' thirty topics (scripts/build_chat_general.py) = 150 prompts, written
here, answered by the model with greedy decoding (forgetless's own generation, as the suite does it) within the
suite's budget. Only replies that ended on their own, well inside the budget, are kept: at most SHORT tokens
(re-tokenized), a margin of 16 so that re-tokenizing a reply cut by the budget cannot pass for one that stopped.
The end-of-turn token that ends each reply is added when a chat row is encoded for training, so the rows teach
stopping. No prompt asks for anything the suite checks by count or form (lines, words, case, required words,
endings, JSON, lists), but each asks for brevity, as the suite's `max_words` prompt does with a count. Greedy
decoding on CPU in float32 is deterministic on one machine; another CPU's kernels may change a token, which --check
would report.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from _generated import write_or_check  # scripts/, beside this file
from build_chat_general import TOPICS

OUT = Path(__file__).resolve().parents[1] / "benchmarks/data/short_general.jsonl"
SHORT = 80
FORMS = ["Give me one quick tip about {}.",
         "Describe {} briefly.",
         "Keep it brief: what is worth knowing about {}?",
         "Answer briefly: what is one reason to care about {}?",
         "Briefly, how would you explain {} to a friend?"]


def prompts() -> list[str]:
    return [form.format(topic) for topic in TOPICS for form in FORMS]


def build_text() -> str:
    from forgetless.evaluation.instructions import MAX_NEW_TOKENS, generate
    from forgetless.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer("default")
    asked = prompts()
    replies = [r.strip() for r in generate(model, tokenizer, asked, MAX_NEW_TOKENS, progress=True)]
    lengths = [len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in replies]
    rows = [{"prompt": p, "response": r} for p, r, n in zip(asked, replies, lengths) if r and n <= SHORT]
    print(f"{len(rows)} of {len(asked)} prompts kept: their replies stopped within {SHORT} tokens", file=sys.stderr)
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


if __name__ == "__main__":
    sys.exit(write_or_check(__doc__.splitlines()[0], OUT, build_text))
