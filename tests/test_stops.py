"""The `stops` generation check (forgetless.evaluation.stops): answer lengths counted as generated, the share that
ended by themselves, its change, and where it shows (compare rows, advise)."""

import copy

import numpy as np
import pytest

from forgetless.comparison_rows import generation_checks
from forgetless.evaluation import instructions
from forgetless.evaluation.evaluator import EvaluationLog
from forgetless.evaluation.stops import stop_change, stop_samples
from forgetless.metrics import ScoreSamples
from forgetless.results import GeneralTaskChange


def _answers(lengths: list[int], budget: int = 96) -> ScoreSamples:
    return ScoreSamples(kind="mean", values=[0.0] * len(lengths), texts=["x"] * len(lengths), lengths=lengths,
                        budget=budget)


def test_length_counts_the_tokens_before_the_first_end_token():
    assert instructions._answer_length([5, 7, 2, 2, 2], ends=[2]) == 2
    assert instructions._answer_length([5, 7, 9], ends=[2]) == 3  # never ended: the whole budget
    assert instructions._answer_length([2, 5], ends=[2]) == 0
    assert instructions._answer_length([5, 9, 7, 2], ends=[2, 7]) == 2  # a chat turn's end token ends it too
    assert instructions._answer_length([5, 7], ends=[]) == 2


def test_the_end_tokens_are_the_tokenizers_and_the_generation_configs(tiny_lm, tokenizer):
    tiny_lm.generation_config.eos_token_id = [7, tokenizer.eos_token_id]
    assert instructions.end_tokens(tiny_lm, tokenizer) == [tokenizer.eos_token_id, 7]
    tiny_lm.generation_config.eos_token_id = None
    assert instructions.end_tokens(tiny_lm, tokenizer) == [tokenizer.eos_token_id]


def test_generated_lengths_stop_at_the_end_token_in_a_padded_batch(tiny_lm, tokenizer):
    tiny_lm.generation_config.eos_token_id = None  # only the tokenizer's end token counts
    prompts = ["Write a poem about the sea in four lines please.", "Say hi."]
    _, lengths = instructions.generate_with_lengths(tiny_lm, tokenizer, prompts, max_new_tokens=6)
    assert lengths == [6, 6]  # a random model ends nothing: both ran to the budget
    # Make the third token the long prompt generated the end token: it now ends there (greedy decoding repeats the
    # same tokens up to it), where the token first occurs in its answer; the short prompt, left-padded in the batch,
    # ends where its own greedy answer first holds that token, or runs to the budget.
    first_ids = _greedy_ids(tiny_lm, tokenizer, prompts[0], 6)
    second_ids = _greedy_ids(tiny_lm, tokenizer, prompts[1], 6)
    ending = copy.deepcopy(tokenizer)
    ending.eos_token = tokenizer.convert_ids_to_tokens(first_ids[2])
    _, lengths = instructions.generate_with_lengths(tiny_lm, ending, prompts, max_new_tokens=6)
    assert lengths[0] == first_ids.index(first_ids[2]) < 6
    assert lengths[1] == (second_ids.index(first_ids[2]) if first_ids[2] in second_ids else 6)


def _greedy_ids(model, tokenizer, prompt: str, budget: int) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = model.generate(input_ids=ids, max_new_tokens=budget, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=None)
    return out[0, ids.shape[1]:].tolist()


def test_the_instructions_task_keeps_each_answers_length_and_its_budget(monkeypatch, tiny_lm, tokenizer):
    [task] = instructions.instruction_suite()
    def answers(model, tok, prompts, budget, progress=False):
        return ["ok"] * len(prompts), [budget, 3, 40][: len(prompts)]

    monkeypatch.setattr(instructions, "generate_with_lengths", answers)
    samples = task.evaluate(tiny_lm, tokenizer, limit=3).samples
    assert samples.lengths == [96, 3, 40] and samples.budget == 96
    assert stop_samples(samples).values == [0.0, 1.0, 1.0]


def test_stop_change_against_a_hand_count():
    rng = np.random.default_rng(0)
    before = rng.integers(10, 97, size=100).tolist()
    after = [96 if i % 2 else n for i, n in enumerate(before)]  # every other answer now runs to the budget
    stopped_before = sum(n < 96 for n in before)
    stopped_after = sum(n < 96 for n in after)
    change, se = stop_change(_answers(before), _answers(after))
    assert change == pytest.approx((stopped_after - stopped_before) / 100)
    differences = np.array([float(a < 96) - float(b < 96) for a, b in zip(after, before)])
    assert se == pytest.approx(differences.std() / np.sqrt(100), rel=0.15)  # the bootstrap s.e. of a paired mean


def test_no_stop_change_without_lengths_or_for_other_prompts_or_budgets():
    assert stop_samples(ScoreSamples(kind="mean", values=[1.0], texts=["a"])) is None
    assert stop_change(None, _answers([5])) is None
    assert stop_change(_answers([5, 6]), _answers([5])) is None
    assert stop_change(_answers([5]), _answers([5], budget=64)) is None
    with pytest.raises(ValueError, match="one answer length per item"):
        ScoreSamples(kind="mean", values=[1.0, 0.0], lengths=[3], budget=96)
    with pytest.raises(ValueError, match="the budget"):
        ScoreSamples(kind="mean", values=[1.0], lengths=[3])


def test_lengths_survive_evaluations_json_and_an_old_file_loads_without_them(tmp_path):
    log = EvaluationLog(general_samples=[{"instructions": _answers([3, 96])}])
    log.write(tmp_path / "evaluations.json")
    again = EvaluationLog.read(tmp_path / "evaluations.json").general_samples[0]["instructions"]
    assert again.lengths == [3, 96] and again.budget == 96
    old = {"general": [], "task_evals": [], "task_samples": [],
           "general_samples": [{"instructions": {"kind": "mean", "values": [1.0], "texts": ["a"]}}]}
    assert EvaluationLog.from_json(old).general_samples[0]["instructions"].lengths is None


def test_a_compare_row_shows_stops_from_its_first_and_last_evaluations():
    change = GeneralTaskChange(before=0.3, after=0.1, delta=-0.2, rel=None, se=0.04, within_noise=False)
    log = EvaluationLog(general_samples=[{"instructions": _answers([3, 5, 96, 7])},
                                         {"instructions": _answers([96, 96, 96, 96])},  # not read: the middle one
                                         {"instructions": _answers([96, 5, 96, 96])}])
    found = generation_checks({"instructions": change}, log)
    assert found["stops"][0] == pytest.approx(1 / 4 - 3 / 4)
    assert list(found) == ["instructions", "stops"]  # no formats: these answers are not the suite's
    old = EvaluationLog(general_samples=[{"instructions": ScoreSamples(kind="mean", values=[1.0], texts=["a"])}] * 2)
    assert "stops" not in generation_checks({"instructions": change}, old)
