"""Build src/forgetless/data/assets/instructions/instructions.jsonl: the instruction-following check prompts.

    .venv/bin/python scripts/build_instructions.py            # --check: fail if the committed file differs

Prompts of our own, in the spirit of IFEval (Zhou et al. 2023): every prompt carries checks a program can
verify (a line count, lowercase only, a required word, an ending phrase, valid JSON, ...), so a response
passes or fails with no judge. Eleven templates x ten topics = 110 prompts; the topics, words and summary
paragraphs are written here, not taken from any evaluation or training file. Deterministic: no randomness.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from _generated import write_or_check  # scripts/, beside this file

OUT = Path(__file__).resolve().parents[1] / "src/forgetless/data/assets/instructions/instructions.jsonl"

TOPICS = ["the ocean", "autumn", "a lighthouse", "mountains", "rain", "the moon", "bicycles", "bees", "chess", "bread"]
WORDS = ["blue", "quiet", "ancient", "bright", "gentle", "golden", "simple", "silver", "careful", "warm"]
PARAGRAPHS = [
    "The town library opened in 1902 with two hundred books donated by local families. Over the next century it "
    "moved twice, grew to hold more than fifty thousand volumes, and added a reading room for children.",
    "Honey bees communicate the location of flowers through a movement called the waggle dance. The angle of the "
    "dance shows the direction of the food, and its length shows how far away the flowers are.",
    "Sourdough bread rises because of wild yeast and bacteria living in a starter of flour and water. The bacteria "
    "produce acids that give the bread its sour taste and help it keep fresh for longer.",
    "A lighthouse keeper once had to climb the tower stairs several times every night to wind the clockwork that "
    "turned the lamp. Electric lamps and automatic timers made the job unnecessary in most places.",
    "Chess began in India around the sixth century and spread through Persia to Europe. The queen only became the "
    "strongest piece in the fifteenth century, which made the game much faster.",
    "Mountain weather changes quickly: a clear morning can turn into a storm by noon. Hikers are advised to start "
    "early, carry warm clothes and turn back if clouds build up over the peaks.",
    "The moon always shows the same face to the Earth because it turns once on its axis for every orbit. This is "
    "called tidal locking, and many moons in the solar system share it.",
    "Early bicycles had no pedals; riders pushed along the ground with their feet. Pedals, chains and air-filled "
    "tyres came later and turned the bicycle into a practical way to travel.",
    "Autumn leaves change colour when trees stop making chlorophyll, the green pigment. Yellow and orange pigments "
    "that were there all along become visible, and some trees also make new red ones.",
    "Rain forms when tiny water droplets in clouds join together until they are too heavy to float. Most raindrops "
    "start as ice crystals high in the cloud and melt on the way down.",
]


def prompts() -> list[dict]:
    rows = []
    for index, topic in enumerate(TOPICS):
        word, paragraph = WORDS[index], PARAGRAPHS[index]
        templates = [
            (f"Write a short poem about {topic} in exactly 4 lines. Write only the poem.", [["line_count", {"n": 4}]]),
            (f"List exactly 3 facts about {topic} as bullet points, each line starting with '- '. Write nothing else.",
             [["bullet_count", {"n": 3}]]),
            (f"Describe {topic} in one or two sentences, using only lowercase letters.", [["lowercase", {}]]),
            (f"Write one sentence about {topic} that uses the word '{word}'.", [["include_word", {"word": word}]]),
            (f"Explain what {topic} is in at most 30 words.", [["max_words", {"n": 30}]]),
            (f"Write two sentences about {topic}. End your answer with the exact phrase 'That is all.'",
             [["end_with", {"phrase": "That is all."}]]),
            (f'Describe {topic} as a JSON object with exactly the keys "name" and "description". Output only the JSON.',
             [["json_keys", {"keys": ["description", "name"]}]]),
            (f"Write one sentence about {topic} in capital letters only.", [["uppercase", {}]]),
            (f"Summarize this paragraph in one sentence that starts with 'In short,'.\n\n{paragraph}",
             [["start_with", {"phrase": "In short,"}]]),
            (f"Write a few sentences about {topic} without using any commas.", [["no_commas", {}]]),
            (f"Name 5 words related to {topic} as a numbered list from 1. to 5. Write nothing else.",
             [["numbered_count", {"n": 5}]]),
        ]
        for number, (prompt, checks) in enumerate(templates):
            rows.append({"id": f"{index:02d}-{number:02d}", "prompt": prompt, "checks": checks})
    return rows


def main() -> int:
    def text() -> str:
        return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in prompts())

    return write_or_check(__doc__.splitlines()[0], OUT, text)


if __name__ == "__main__":
    sys.exit(main())
