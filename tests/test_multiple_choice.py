"""The packed multiple-choice scorer against one plain forward per (question, choice)."""

from __future__ import annotations

import math
import random

import pytest
import torch

from forgetless.errors import ForgetlessError
from forgetless.evaluation.multiple_choice import (
    MultipleChoiceItem,
    score_multiple_choice,
)
from forgetless.metrics import accuracy_stderr


def direct_loglikelihood(model, tokenizer, question: str, continuation: str) -> float:
    """lm-eval's recipe written out: move trailing spaces, encode whole, split, one unpadded forward."""
    context = question.rstrip()
    continuation = question[len(context) :] + continuation
    context_ids = tokenizer(context)["input_ids"]
    continuation_ids = tokenizer(context + continuation)["input_ids"][len(context_ids) :]
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)  # [length - 1, vocab]
    targets = ids[0, 1:]
    token_logprobs = logprobs[torch.arange(len(targets)), targets]
    return token_logprobs[-len(continuation_ids) :].sum().item()


def random_items(count: int, seed: int = 0) -> list[MultipleChoiceItem]:
    """Questions of varied length; choices from one word to a ~150-token reply; some questions end in a space."""
    rng = random.Random(seed)
    words = "the capital of France is Paris and Berlin lies in Germany while Kuala Lumpur Ouagadougou".split()
    items = []
    for index in range(count):
        question = "Question: " + " ".join(rng.choices(words, k=rng.randint(1, 30))) + "?\nAnswer:"
        if index % 3 == 0:
            question += " "
        choices = [" ".join(rng.choices(words, k=rng.choice([1, 1, 2, 5]))) for _ in range(rng.randint(2, 5))]
        if index == 1:
            choices[0] = " ".join(rng.choices(words, k=150))  # a long support-style reply
        items.append(MultipleChoiceItem(question, tuple(choices), rng.randrange(len(choices))))
    return items


def test_loglikelihoods_match_one_forward_per_choice(tiny_lm, tokenizer):
    items = random_items(12)
    # A small budget forces several batches with left padding of different widths.
    result = score_multiple_choice(tiny_lm, tokenizer, items, max_batch_tokens=300)
    for item, scores in zip(items, result.loglikelihoods):
        expected = [direct_loglikelihood(tiny_lm, tokenizer, item.question, " " + choice) for choice in item.choices]
        assert scores == pytest.approx(expected, abs=2e-4)


def test_custom_delimiter_is_part_of_the_continuation(tiny_lm, tokenizer):
    item = MultipleChoiceItem("Q: 2 + 2 =", ("4", "five"), 0)
    result = score_multiple_choice(tiny_lm, tokenizer, [item], delimiter="\n")
    expected = [direct_loglikelihood(tiny_lm, tokenizer, item.question, "\n" + choice) for choice in item.choices]
    assert result.loglikelihoods[0] == pytest.approx(expected, abs=2e-4)


def test_acc_and_acc_norm_follow_lm_eval_definitions(tiny_lm, tokenizer):
    items = random_items(20, seed=1)
    result = score_multiple_choice(tiny_lm, tokenizer, items)
    for item, scores, correct, correct_norm in zip(items, result.loglikelihoods, result.correct, result.correct_norm):
        best = max(range(len(scores)), key=lambda i: scores[i])
        # acc_norm divides by the character length of the choice itself, without the delimiter.
        best_norm = max(range(len(scores)), key=lambda i: scores[i] / len(item.choices[i]))
        assert correct == (best == item.answer)
        assert correct_norm == (best_norm == item.answer)
    assert result.n == 20
    assert result.acc == sum(result.correct) / 20
    assert result.acc_norm == sum(result.correct_norm) / 20


def test_hand_built_item_where_acc_and_acc_norm_disagree(tiny_lm, tokenizer):
    # Twenty tokens of " the" cost far more in total than one "x", but far less per character.
    long_choice = " ".join(["the"] * 20)
    item = MultipleChoiceItem("Pick one:", ("x", long_choice), answer=0)
    result = score_multiple_choice(tiny_lm, tokenizer, [item])
    short_score, long_score = result.loglikelihoods[0]
    assert short_score > long_score
    assert short_score / 1 < long_score / len(long_choice)
    assert result.correct == [True] and result.correct_norm == [False]
    assert (result.acc, result.acc_norm) == (1.0, 0.0)


def test_stderr_is_sample_std_over_sqrt_n(tiny_lm, tokenizer):
    # Hand-computed: values 1, 0, 0, 1 have sample variance 1/3, so stderr = sqrt(1/3) / 2.
    assert accuracy_stderr([1, 0, 0, 1]) == pytest.approx(math.sqrt(1 / 3) / 2)
    # For 0/1 scores the sample variance is n p (1 - p) / (n - 1), so stderr = sqrt(p (1 - p) / (n - 1)).
    result = score_multiple_choice(tiny_lm, tokenizer, random_items(10, seed=2))
    for acc, stderr in ((result.acc, result.acc_stderr), (result.acc_norm, result.acc_norm_stderr)):
        assert stderr == pytest.approx(math.sqrt(acc * (1 - acc) / 9))


def test_batch_budget_does_not_change_scores(tiny_lm, tokenizer):
    items = random_items(8, seed=3)
    one_by_one = score_multiple_choice(tiny_lm, tokenizer, items, max_batch_tokens=1)
    all_at_once = score_multiple_choice(tiny_lm, tokenizer, items, max_batch_tokens=100_000)
    for first, second in zip(one_by_one.loglikelihoods, all_at_once.loglikelihoods):
        assert first == pytest.approx(second, abs=2e-4)


def test_train_mode_is_restored_per_module(tiny_lm, tokenizer):
    tiny_lm.train()
    tiny_lm.model.layers[0].eval()  # a module that was in eval mode must stay so
    score_multiple_choice(tiny_lm, tokenizer, random_items(2))
    assert tiny_lm.training and tiny_lm.model.layers[1].training
    assert not tiny_lm.model.layers[0].training


def test_peft_wrapped_model_matches_direct_forward(tiny_lm, tokenizer):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(tiny_lm, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:  # zero at init; make the adapter change the outputs
                parameter.normal_(std=0.5)
    items = random_items(3, seed=4)
    result = score_multiple_choice(peft_model, tokenizer, items)
    expected = [direct_loglikelihood(peft_model, tokenizer, items[0].question, " " + c) for c in items[0].choices]
    assert result.loglikelihoods[0] == pytest.approx(expected, abs=2e-4)


def test_progress_bar_accepts_a_description(tiny_lm, tokenizer, capsys):
    score_multiple_choice(tiny_lm, tokenizer, random_items(2), progress="capitals")
    assert "capitals" in capsys.readouterr().err


@pytest.mark.parametrize(
    "item, message",
    [
        (MultipleChoiceItem("Q?", ("a", "b"), 2), "answer 2"),
        (MultipleChoiceItem("Q?", (), 0), "no choices"),
        (MultipleChoiceItem("Q?", ("a", ""), 0), "empty string"),
    ],
)
def test_bad_items_are_reported(tiny_lm, tokenizer, item, message):
    with pytest.raises(ForgetlessError, match=message):
        score_multiple_choice(tiny_lm, tokenizer, [item])


def test_attention_without_custom_masks_is_refused(tiny_lm, tokenizer):
    tiny_lm.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ForgetlessError, match="sdpa"):
        score_multiple_choice(tiny_lm, tokenizer, random_items(1))


@pytest.mark.parametrize("choices, message", [
    (["Paris", " "], r"quiz\.jsonl:2: choice 1 is empty"),
    (["Paris", "Rome", "Paris"], r"quiz\.jsonl:2: choices repeat \(\['Paris'\]\)"),
])
def test_an_eval_file_with_an_empty_or_repeated_choice_names_the_line(tmp_path, choices, message):
    import json

    from forgetless.evaluation.suites import load_eval_file

    quiz = tmp_path / "quiz.jsonl"
    good = {"question": "Capital of Italy?", "choices": ["Rome", "Paris"], "answer": 0}
    quiz.write_text(json.dumps(good) + "\n" + json.dumps({**good, "choices": choices}) + "\n")
    with pytest.raises(ForgetlessError, match=message):
        load_eval_file("quiz", quiz)


@pytest.mark.parametrize("answer", [5, 2, -1, 1.5, "0", True, None])
def test_an_eval_file_with_an_out_of_range_answer_names_the_line(tmp_path, answer):
    import json

    from forgetless.evaluation.suites import load_eval_file

    quiz = tmp_path / "quiz.jsonl"
    good = {"question": "Capital of Italy?", "choices": ["Rome", "Paris"], "answer": 0}
    quiz.write_text(json.dumps(good) + "\n" + json.dumps({**good, "answer": answer}) + "\n")
    with pytest.raises(ForgetlessError) as info:
        load_eval_file("quiz", quiz)
    assert str(info.value) == f"{quiz}:2: expected 'answer', an index into choices (0..1), got {json.dumps(answer)}"


def test_questions_cut_to_fit_the_model_are_warned_once_per_task_with_their_count(tiny_lm, tokenizer, caplog):
    from forgetless.evaluation.suites import MultipleChoiceTask

    tiny_lm.config.max_position_embeddings = 48  # the length the scorer fits items into (model_max_length)
    long_question = "Question: " + "the capital of France is Paris and " * 12 + "?\nAnswer:"
    items = [MultipleChoiceItem(long_question, ("yes", "no"), 0)] * 2 + [MultipleChoiceItem("Q: 2 + 2 =", ("4", "5"), 0)]
    task = MultipleChoiceTask("long", items)
    with caplog.at_level("WARNING", logger="forgetless"):
        task.evaluate(tiny_lm, tokenizer)
        task.evaluate(tiny_lm, tokenizer)  # a run scores the same task many times: still one warning
        task.subset([0, 2]).evaluate(tiny_lm, tokenizer)  # and the probe's subsets of it
    assert [r.getMessage() for r in caplog.records if r.name.startswith("forgetless")] == [
        "task 'long': 2 of 3 multiple-choice items do not fit the model's 48 tokens (question and choice); their questions "
        "are cut from the left to fit, which can change their scores"
    ]
    assert score_multiple_choice(tiny_lm, tokenizer, items[2:]).truncated == 0
