"""`ssr`: Self-Synthesized Rehearsal — rehearse examples the model writes itself, keep no real data.

Huang et al., "Mitigating Catastrophic Forgetting in Large Language Models with Self-Synthesized
Rehearsal" (ACL 2024). When a task ends, the model (as it is then: the model the next task starts
from) writes pseudo-examples of that task by in-context learning from `shots` real demonstrations
(sampling at temperature 0.9, top-p 0.6, as in the paper); for chat tasks it then answers each
synthetic instruction itself (the paper's "refine the outputs with the latest model" step). The
demonstrations are local to that one call: after it, the strategy holds no real row of any task, and
its checkpoint state holds only the synthetic examples. Before the first task, the starting model
writes general-English passages in the same way from general-text demonstrations (from the run's
`general_data` rows instead, text or chat, where it has them), so the first task is protected too. While
a task trains, synthetic examples make up `ratio` of its training examples.

Simplifications against the paper (for cost): no k-means selection over a large generated pool
(the paper keeps ~200 per task chosen from many more), and one model both writes and refines.
"""

from __future__ import annotations

import random
from typing import Any

import torch
from pydantic import Field

from ..data.encoding import chat_prompt_text, encode_chat, encode_text
from ..errors import ForgetlessError
from ..evaluation._scoring import left_pad, model_device, scoring_mode
from . import register_strategy
from ._common import own_seed
from .base import Strategy, StrategyParams, Strength, TaskContext
from .replay import draw, mix_counts, pack_examples, unpack_examples

GENERAL_POOL = -1  # pool id of the general examples written before the first task
# Demonstrations are cut to this many characters so that a 2-shot prompt stays near 300 tokens.
DEMO_CHARS = 600
MIN_SYNTHETIC_CHARS = 8  # shorter generations (empty, a stray word) are dropped


def icl_prompt(demos: list[dict[str, Any]], task_format: str) -> str:
    """A few-shot prompt ending where the model is to write a new example of the same kind."""
    if task_format == "chat":
        shots = "".join(f"Instruction: {d['prompt'][:DEMO_CHARS]}\nResponse: {d['response'][:DEMO_CHARS]}\n\n" for d in demos)
        return shots + "Instruction:"
    return "".join(f"Passage: {d['text'][:DEMO_CHARS]}\n\n" for d in demos) + "Passage:"


def parse_generation(text: str, task_format: str) -> dict[str, str] | None:
    """The synthetic row in a continuation of `icl_prompt`, or None if there is none.

    Chat: "<instruction>\\nResponse: <response>\\n\\nInstruction: ..." -> the first instruction and
    response (the response may be missing: `refine` writes it). Text: the passage before the next one.
    """
    if task_format == "chat":
        instruction, _, rest = text.partition("\nResponse:")
        response = rest.split("\nInstruction:")[0].strip()
        instruction = instruction.split("\nInstruction:")[0].strip()
        return {"prompt": instruction, "response": response} if len(instruction) >= MIN_SYNTHETIC_CHARS else None
    passage = text.split("\nPassage:")[0].strip()
    return {"text": passage} if len(passage) >= MIN_SYNTHETIC_CHARS else None


def sample_continuations(
    model: torch.nn.Module, tokenizer, prompts: list[str], max_new_tokens: int, temperature: float, top_p: float, batch_size: int
) -> list[str]:
    """One sampled continuation per prompt (new text only), generated in left-padded batches."""
    outputs: list[str] = []
    device = model_device(model)
    with scoring_mode(model):
        for start in range(0, len(prompts), batch_size):
            encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts[start : start + batch_size]]
            ids, mask, _ = left_pad(encoded, tokenizer.pad_token_id, device)  # (B, T)
            generated = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                temperature=temperature,
                top_p=top_p,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
            )  # (B, T + new)
            outputs.extend(tokenizer.batch_decode(generated[:, ids.size(1) :], skip_special_tokens=True))
    return outputs


@register_strategy
class SelfSynthesizedRehearsal(Strategy):
    """Rehearse model-written pseudo-examples of earlier tasks (and general text) instead of real data."""

    name = "ssr"
    sharded_reason = ("it generates rehearsal text with the whole model at each task's start, and {engine} splits its "
                      "parameters across processes")
    strength = Strength("ratio", "up", bound=0.5, applies="next_task")

    class Params(StrategyParams):
        per_task: int = Field(16, ge=1, description="Synthetic examples written per finished task.")
        ratio: float = Field(0.1, ge=0, lt=1, description="Fraction of the training examples that are synthetic.")
        shots: int = Field(2, ge=1, description="Real demonstrations per generation prompt.")
        max_new_tokens: int = Field(64, ge=1, description="Token budget of each generation.")
        temperature: float = Field(0.9, gt=0, description="Sampling temperature of the synthetic instructions.")
        top_p: float = Field(0.6, gt=0, le=1, description="Nucleus sampling mass.")
        refine: bool = Field(True, description="The model answers each synthetic instruction itself.")
        general: bool = Field(True, description="Write general passages before the first task.")
        batch_size: int = Field(16, ge=1, description="Prompts generated together.")
        seed: int | None = Field(None, description="Seed of demonstration choice and sampling; null: the run's training seed.")

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.pools: dict[int, list[dict[str, list[int]]]] = {}  # pool id (task index, or -1) -> synthetic examples

    def synthesize(
        self, ctx: TaskContext, rows: list[dict[str, Any]], task_format: str, pool_id: int
    ) -> list[dict[str, list[int]]]:
        """`per_task` encoded synthetic examples written by ctx.model from few-shot prompts over `rows`.

        `rows` are used only inside this call; nothing derived from them but the synthetic examples is kept.
        """
        seed = own_seed(self.seed, ctx) * 1_000_003 + pool_id
        rng = random.Random(seed)
        prompts = [icl_prompt(rng.sample(rows, min(self.shots, len(rows))), task_format) for _ in range(self.per_task)]
        generate = lambda texts: sample_continuations(  # noqa: E731
            ctx.model, ctx.tokenizer, texts, self.max_new_tokens, self.temperature, self.top_p, self.batch_size
        )
        with torch.random.fork_rng(devices=[]):  # sampling is seeded without touching the run's RNG
            torch.manual_seed(seed)
            parsed = [row for row in map(lambda t: parse_generation(t, task_format), generate(prompts)) if row]
            if task_format == "chat" and parsed and self.refine:
                answers = generate([chat_prompt_text(ctx.tokenizer, row["prompt"]) for row in parsed])
                parsed = [{"prompt": row["prompt"], "response": answer.strip()} for row, answer in zip(parsed, answers)]
        max_length = ctx.setup.max_length
        examples: list[dict[str, list[int]]] = []
        for row in parsed:
            if task_format == "text":
                examples.extend(encode_text(ctx.tokenizer, row["text"], max_length))
            elif len(row["response"]) >= MIN_SYNTHETIC_CHARS:
                feature = encode_chat(ctx.tokenizer, row["prompt"], row["response"], max_length)
                if any(label != -100 for label in feature["labels"]):
                    examples.append(feature)
        return examples

    def on_task_start(self, ctx: TaskContext) -> None:
        if ctx.task_index == 0 and self.general and GENERAL_POOL not in self.pools:
            general = ctx.general_data
            self.pools[GENERAL_POOL] = self.synthesize(ctx, list(general.rows), general.format, GENERAL_POOL)

    def prepare_examples(self, ctx: TaskContext, examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        pool = [e for pool_id in sorted(self.pools) for e in self.pools[pool_id]]
        rng = random.Random(own_seed(self.seed, ctx) * 1_000_003 + 7919 * (ctx.task_index + 1))
        (count,) = mix_counts(len(examples), [self.ratio if pool else 0.0])
        rehearsed = draw(pool, count, rng)
        ctx.log["ssr_synthetic_examples"] = len(rehearsed)
        ctx.log["ssr_pool_size"] = len(pool)
        return list(examples) + rehearsed  # the Trainer shuffles

    def consolidate(self, ctx: TaskContext) -> None:
        """Write the finished task's pseudo-examples now, with the model the next task starts from."""
        if not ctx.is_last_task:  # after the last task nothing would rehearse them
            if ctx.task.rows is None:
                raise ForgetlessError(
                    f"ssr writes pseudo-examples from a few of task {ctx.task.name!r}'s rows as text demonstrations, "
                    "but this task came as token ids only; give the trainer a text, prompt-completion or messages dataset"
                )
            self.pools[ctx.task_index] = self.synthesize(ctx, ctx.task.rows, ctx.task.format, ctx.task_index)
            ctx.log["ssr_written"] = len(self.pools[ctx.task_index])

    def state_tensors(self) -> dict[str, torch.Tensor]:
        examples = [e for pool_id in sorted(self.pools) for e in self.pools[pool_id]]
        if not examples:
            return {}
        return pack_examples(examples, [pool_id for pool_id in sorted(self.pools) for _ in self.pools[pool_id]])

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.pools = {}
        if tensors:
            for pool_id, example in unpack_examples(tensors):
                self.pools.setdefault(pool_id, []).append(example)
