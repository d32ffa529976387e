"""Build benchmarks/data/format_general.jsonl: chat_general.jsonl's rows, each asked in a held-out format and answered in it.

    .venv/bin/python scripts/build_format_general.py            # --check: fail if the committed file differs

Does rehearsing format constraints keep a fine-tuned model following the constraints of the `instructions`
suite? The rows practise four kinds of constraint the suite does not check (scripts/build_instructions.py has
line and bullet counts, case, required words, word limits, start and end phrases, JSON keys, no commas and
numbered lists): wrap the whole answer in double quotes, put a title in <<double angle brackets>> first, split
the answer into two parts with a *** divider, and repeat the request word for word before answering. Each row is
a row of chat_general.jsonl (the starting model's own reply to an open request) with one constraint added to its
prompt and its reply rewritten here to meet it, so that these rows differ from the chat rows only by the
constraints: training on one against the other, paired by item, measures what practising the formats adds. The
kinds are assigned cyclically, (topic + form) mod 4, so each topic and each form meets every kind.
Deterministic and offline: no model runs, the replies are the committed ones.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from _generated import write_or_check  # scripts/, beside this file
from build_chat_general import FORMS, SENTENCE_END, TOPICS

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "benchmarks/data/chat_general.jsonl"
OUT = ROOT / "benchmarks/data/format_general.jsonl"
DIVIDER = "\n\n***\n\n"


def quoted(request: str, reply: str, topic: str) -> str:
    return f'"{reply}"'


def titled(request: str, reply: str, topic: str) -> str:
    return f"<<{topic.removeprefix('the ').capitalize()}>>\n\n{reply}"


def divided(request: str, reply: str, topic: str) -> str:
    """The reply cut in two at the paragraph break nearest its middle, else the sentence end, else the space."""
    middle = len(reply) / 2
    breaks = ([m.start() for m in re.finditer(r"\n\s*\n", reply)]
              # not the reply's last sentence end: no space follows it
              or [m.end() for m in re.finditer(SENTENCE_END, reply)]
              or [m.start() for m in re.finditer(r"\s", reply)])
    cut = min(breaks, key=lambda at: abs(at - middle))
    return reply[:cut].strip() + DIVIDER + reply[cut:].strip()


def repeated(request: str, reply: str, topic: str) -> str:
    return f"{request}\n\n{reply}"


# (instruction added to the request, rewrite of the reply, check the rewritten reply must pass)
KINDS = [
    ("Wrap your entire answer in double quotation marks.", quoted,
     lambda request, r: r.startswith('"') and r.endswith('"') and len(r) > 2),
    ("Begin with a title wrapped in double angular brackets, such as <<my title>>.", titled,
     lambda request, r: re.match(r"<<[^<>\n]+>>\n", r) is not None),
    ("Write your answer in two parts separated by a line with only three asterisks: ***", divided,
     lambda request, r: r.count("***") == 1 and all(part.strip() for part in r.split("***"))),
    ("First repeat the question word for word, then answer it.", repeated,
     lambda request, r: r.startswith(request + "\n\n") and len(r) > len(request) + 2),
]


def build_text() -> str:
    asked = {form.format(topic): (t, f, topic) for t, topic in enumerate(TOPICS) for f, form in enumerate(FORMS)}
    rows = []
    for line in SOURCE.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        request, reply = row["prompt"], row["response"]
        topic_index, form_index, topic = asked[request]
        instruction, rewrite, check = KINDS[(topic_index + form_index) % len(KINDS)]
        response = rewrite(request, reply, topic)
        if not check(request, response):
            raise SystemExit(f"{SOURCE}:{len(rows) + 1}: the rewritten reply fails its own check ({instruction!r})")
        rows.append({"prompt": f"{request} {instruction}", "response": response})
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


if __name__ == "__main__":
    sys.exit(write_or_check(__doc__.splitlines()[0], OUT, build_text))
