"""SSR: rehearsed examples are model-written, no real row survives, sampling is seeded, state round-trips."""

import pytest
import torch

import forgetless.strategies.ssr as ssr
from forgetless.config import parse_config
from forgetless.data.encoding import chat_prompt_text, encode_chat, encode_rows
from forgetless.data.tasks import TrainingTask
from forgetless.errors import ForgetlessError
from forgetless.strategies import build_strategy
from forgetless.training import context_for, run_continual

from .conftest import make_tiny_lm, tiny_config

CHAT_ROWS = [
    {"prompt": f"Secret ticket {i}: my toaster {i} is on fire", "response": f"Private reply {i}: unplug it."} for i in range(6)
]
TEXT_ROWS = [{"text": f"Confidential passage number {i} about the harbour."} for i in range(6)]


def make_context(model, tokenizer, task_index=0, run_seed=0):
    task_configs = [{"name": "a", "builtin": "support"}, {"name": "b", "builtin": "legal"}]
    config = parse_config({"tasks": task_configs, "train": {"max_length": 64, "seed": run_seed}})
    tasks = [TrainingTask("a", "chat", CHAT_ROWS, CHAT_ROWS[:1]), TrainingTask("b", "text", TEXT_ROWS, TEXT_ROWS[:1])]
    return context_for(config, model, tokenizer, tasks, task_index)


class FakeGenerator:
    """Stands in for sampling: records the prompts and returns canned continuations."""

    def __init__(self):
        self.prompts: list[list[str]] = []

    def __call__(self, model, tokenizer, prompts, *args):
        self.prompts.append(list(prompts))
        if prompts[0].endswith("Instruction:"):
            return [f" Synthetic question {i} about kettles\nResponse: An answer\n\nInstruction:" for i in range(len(prompts))]
        if prompts[0].endswith("Passage:"):
            return [f" Synthetic passage {i} about lighthouses.\n\nPassage: next" for i in range(len(prompts))]
        return [f"Refined answer {i} from the model." for i in range(len(prompts))]  # chat-template prompts (refine)


def all_values(obj, seen=None):
    """Every str, and every int list, reachable from an object's attributes."""
    seen = seen if seen is not None else set()
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, torch.Tensor):
        yield obj.tolist()
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from all_values(key, seen)
            yield from all_values(value, seen)
    elif isinstance(obj, (list, tuple)):
        if obj and all(isinstance(x, int) for x in obj):
            yield list(obj)
        for value in obj:
            yield from all_values(value, seen)
    elif hasattr(obj, "__dict__"):
        yield from all_values(vars(obj), seen)


def test_parse_generation():
    assert ssr.parse_generation(" Fix my phone\nResponse: Restart it.\n\nInstruction: x", "chat") == {
        "prompt": "Fix my phone", "response": "Restart it."}
    assert ssr.parse_generation(" Fix my phone please", "chat") == {"prompt": "Fix my phone please", "response": ""}
    assert ssr.parse_generation(" ok", "chat") is None  # too short to be an instruction
    assert ssr.parse_generation(" A passage here.\n\nPassage: the next one", "text") == {"text": "A passage here."}


def test_examples_are_generated_from_few_shot_prompts_and_refined(tiny_lm, tokenizer, monkeypatch):
    fake = FakeGenerator()
    monkeypatch.setattr(ssr, "sample_continuations", fake)
    strategy = build_strategy({"name": "ssr", "per_task": 5, "shots": 2})
    ctx = make_context(tiny_lm, tokenizer)
    strategy.on_task_start(ctx)
    assert len(fake.prompts) == 1 and len(fake.prompts[0]) == 5  # general passages before the first task
    assert all(p.count("Passage: ") == 2 and p.endswith("Passage:") for p in fake.prompts[0])
    general = strategy.pools[ssr.GENERAL_POOL]
    assert general[0] == encode_rows(tokenizer, [{"text": "Synthetic passage 0 about lighthouses."}], 64)[0]

    strategy.consolidate(ctx)
    icl, refine = fake.prompts[1], fake.prompts[2]
    assert all(p.count("Instruction: Secret ticket") == 2 for p in icl)  # two real demonstrations per prompt
    assert refine == [chat_prompt_text(tokenizer, f"Synthetic question {i} about kettles") for i in range(5)]
    expected = [encode_chat(tokenizer, f"Synthetic question {i} about kettles", f"Refined answer {i} from the model.", 64)
                for i in range(5)]
    assert strategy.pools[0] == expected


def test_no_raw_row_of_an_earlier_task_is_kept(tiny_lm, tokenizer, monkeypatch):
    monkeypatch.setattr(ssr, "sample_continuations", FakeGenerator())
    strategy = build_strategy({"name": "ssr", "per_task": 4})
    ctx = make_context(tiny_lm, tokenizer)
    strategy.on_task_start(ctx)
    strategy.prepare_examples(ctx, encode_rows(tokenizer, CHAT_ROWS, 64))
    strategy.consolidate(ctx)
    assert strategy.pools[0]  # something was written
    raw_strings = [v for row in CHAT_ROWS for v in row.values()]
    raw_ids = [e["input_ids"] for e in encode_rows(tokenizer, CHAT_ROWS, 64)]
    raw_ids += [e["input_ids"] for e in encode_rows(tokenizer, [{"text": v} for v in raw_strings], 64)]
    values = list(all_values(strategy)) + list(all_values(strategy.state_tensors()))
    for value in values:
        if isinstance(value, str):
            assert not any(raw in value or "Secret ticket" in value for raw in raw_strings)
        else:
            assert value not in raw_ids


def test_sampling_is_seeded_and_leaves_the_run_rng_alone(tokenizer):
    model = make_tiny_lm(len(tokenizer), hidden_size=16)
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    def write(seed, run_seed=0):
        strategy = build_strategy({"name": "ssr", "per_task": 3, "max_new_tokens": 6, "seed": seed, "refine": False})
        return strategy.synthesize(make_context(model, tokenizer, run_seed=run_seed), TEXT_ROWS, "text", pool_id=1)

    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first = write(0)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert first and first == write(0) and first != write(1)
    # No seed of its own (the default): the run's training seed, so `compare --seeds` writes a new pool per seed.
    assert write(None) == first and write(None, run_seed=1) == write(1) and write(0, run_seed=1) == first


def test_rehearsal_ratio_and_state_round_trip(tiny_lm, tokenizer, monkeypatch):
    monkeypatch.setattr(ssr, "sample_continuations", FakeGenerator())
    strategy = build_strategy({"name": "ssr", "per_task": 4, "ratio": 0.2})
    ctx = make_context(tiny_lm, tokenizer)
    strategy.on_task_start(ctx)
    strategy.consolidate(ctx)
    current = encode_rows(tokenizer, TEXT_ROWS, 64) * 10  # 60 examples
    ctx_b = make_context(tiny_lm, tokenizer, task_index=1)
    mixed = strategy.prepare_examples(ctx_b, current)
    assert len(mixed) == 60 + 15 and ctx_b.log["ssr_synthetic_examples"] == 15  # 15 / 75 = 0.2
    pool = [e for p in strategy.pools.values() for e in p]
    assert all(e in pool for e in mixed[60:])

    restored = build_strategy({"name": "ssr", "per_task": 4, "ratio": 0.2})
    restored.load_state_tensors(strategy.state_tensors())
    assert restored.pools == strategy.pools
    assert restored.prepare_examples(make_context(tiny_lm, tokenizer, 1), current) == mixed


def test_knobs_are_validated():
    assert build_strategy("ssr").stores_raw_data is False
    for bad in ({"per_task": 0}, {"ratio": 1.0}, {"temperature": 0.0}, {"top_p": 1.5}, {"shots": 0}):
        with pytest.raises(ForgetlessError, match=rf"^strategy\.{list(bad)[-1]}:"):
            build_strategy({"name": "ssr", **bad})


def test_end_to_end_ssr_rehearses_generated_examples(tmp_path, tokenizer, task_files):
    model = make_tiny_lm(len(tokenizer), hidden_size=16)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    train = {"steps": 2, "batch_size": 4, "lr": 1e-2, "max_length": 64, "seed": 0}
    strategies = [{"name": "ssr", "per_task": 4, "max_new_tokens": 8, "ratio": 0.25}]
    config = tiny_config(task_files, strategies=strategies, train=train, checkpoints="every_task")
    results = run_continual(config, tmp_path / "out", model=model, tokenizer=tokenizer, progress=False)
    first, second = results.training
    assert first["ssr_synthetic_examples"] > 0  # general passages on the first task
    assert second["ssr_pool_size"] > first["ssr_pool_size"]  # plus the first task's pseudo-examples
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "out" / "checkpoints" / "after-2-text" / "strategy-ssr.safetensors")
    assert set(saved["group"].tolist()) == {ssr.GENERAL_POOL, 0}
