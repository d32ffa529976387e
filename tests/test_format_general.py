"""benchmarks/data/format_general.jsonl: the chat rows, each with one held-out format asked for and met, nothing else changed."""

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "build_format_general.py"


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (ROOT / "benchmarks" / "data" / name).read_text(encoding="utf-8").splitlines()]


def test_the_file_is_what_the_script_builds():
    done = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def undo_format(request: str, response: str) -> str:
    """The reply without the format each kind's rewrite added (written out here, not taken from the script)."""
    if request.endswith("Wrap your entire answer in double quotation marks."):
        assert response[0] == response[-1] == '"'
        return response[1:-1]
    if "<<my title>>" in request:
        title, blank, rest = response.split("\n", 2)
        assert re.fullmatch(r"<<[A-Z][a-z ]+>>", title) and blank == ""
        return rest
    if request.endswith("three asterisks: ***"):
        first, second = response.split("\n\n***\n\n")
        return first + " " + second
    if request.endswith("First repeat the question word for word, then answer it."):
        question = request.removesuffix(" First repeat the question word for word, then answer it.")
        assert response.startswith(question + "\n\n")
        return response[len(question) + 2:]
    raise AssertionError(f"no known format asked in {request!r}")


def test_each_row_is_its_chat_row_with_one_format_asked_and_met():
    chat, formatted = rows("chat_general.jsonl"), rows("format_general.jsonl")
    assert len(formatted) == len(chat) == 149
    kinds = Counter()
    for plain, row in zip(chat, formatted):
        assert row["prompt"].startswith(plain["prompt"] + " ")
        kinds[row["prompt"][len(plain["prompt"]):]] += 1
        # The divider replaces a paragraph break or the space after a sentence: compare words, not whitespace.
        assert undo_format(row["prompt"], row["response"]).split() == plain["response"].split()
    assert sorted(kinds.values()) == [37, 37, 37, 38]  # assigned cyclically over topic x form: evenly spread
