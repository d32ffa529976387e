"""Perplexity scorers against plain per-sequence forwards with transformers' own loss."""

from __future__ import annotations

import math

import pytest
import torch

from forgetless.errors import ForgetlessError
from forgetless.evaluation.perplexity import score_sequences_nll, score_text_perplexity, sliding_windows

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Forgetting is measured before and after every task. " * 6,
    "Short.",
]


def direct_nll(model, input_ids: list[int], labels: list[int]) -> tuple[float, int]:
    """Summed NLL and scored-token count from one unpadded forward (transformers shifts the labels)."""
    with torch.no_grad():
        loss = model(torch.tensor([input_ids]), labels=torch.tensor([labels])).loss.item()
    count = sum(1 for label in labels[1:] if label != -100)
    return loss * count, count


def chat_like_sequences(tokenizer) -> list[tuple[list[int], list[int]]]:
    """Prompt tokens masked with -100, reply tokens scored; lengths differ so padding is exercised."""
    sequences = []
    for prompt, reply in [("Hi, how do I reset it?", "Hold the button."), ("Why?", "Because " * 12), ("a", "b")]:
        prompt_ids = tokenizer(prompt)["input_ids"]
        reply_ids = tokenizer(" " + reply)["input_ids"]
        sequences.append((prompt_ids + reply_ids, [-100] * len(prompt_ids) + reply_ids))
    return sequences


def test_sequences_match_direct_forwards_and_ignore_masked_labels(tiny_lm, tokenizer):
    sequences = chat_like_sequences(tokenizer)
    result = score_sequences_nll(tiny_lm, sequences, pad_token_id=tokenizer.pad_token_id, max_batch_tokens=40)
    for (input_ids, labels), nll, count in zip(sequences, result.doc_nll, result.doc_tokens):
        expected_nll, expected_count = direct_nll(tiny_lm, input_ids, labels)
        assert count == expected_count == sum(1 for label in labels if label != -100)
        assert nll == pytest.approx(expected_nll, rel=1e-4)


def test_left_padded_rows_with_their_first_label_set_match_unpadded_forwards(tiny_lm, tokenizer):
    # Every label set (plain language modelling), rows of different lengths in one batch: the first label of
    # a padded row must not be scored from the pad position before it (the direct forward never scores it).
    sequences = [(ids, list(ids)) for ids in (tokenizer(text)["input_ids"] for text in TEXTS)]
    assert len({len(ids) for ids, _ in sequences}) == len(sequences)
    result = score_sequences_nll(tiny_lm, sequences, pad_token_id=tokenizer.pad_token_id, max_batch_tokens=10_000)
    for (input_ids, labels), nll, count in zip(sequences, result.doc_nll, result.doc_tokens):
        expected_nll, expected_count = direct_nll(tiny_lm, input_ids, labels)
        assert count == expected_count == len(input_ids) - 1
        assert nll == pytest.approx(expected_nll, rel=1e-4)


def test_masked_prompt_tokens_are_not_scored(tiny_lm, tokenizer):
    input_ids, labels = chat_like_sequences(tokenizer)[0]
    prompt_length = labels.count(-100)
    fully_masked = (input_ids, [-100] * len(input_ids))
    result = score_sequences_nll(
        tiny_lm, [(input_ids, labels), (input_ids, list(input_ids)), fully_masked], pad_token_id=0
    )
    masked_nll, unmasked_nll, _ = result.doc_nll
    # Unmasked, the prompt tokens after the first are scored too, adding their (positive) NLL.
    assert result.doc_tokens == [len(input_ids) - prompt_length, len(input_ids) - 1, 0]
    prompt_nll, _ = direct_nll(tiny_lm, input_ids[:prompt_length], input_ids[:prompt_length])
    assert unmasked_nll - masked_nll == pytest.approx(prompt_nll, rel=1e-4)


def test_perplexity_is_token_weighted_not_document_averaged(tiny_lm, tokenizer):
    result = score_sequences_nll(tiny_lm, chat_like_sequences(tokenizer), pad_token_id=tokenizer.pad_token_id)
    token_weighted = math.exp(sum(result.doc_nll) / sum(result.doc_tokens))
    document_averaged = sum(math.exp(n / t) for n, t in zip(result.doc_nll, result.doc_tokens)) / len(result.doc_nll)
    assert result.perplexity == pytest.approx(token_weighted)
    assert result.nll_per_token == pytest.approx(math.log(token_weighted))
    assert result.n_tokens == sum(result.doc_tokens)
    assert abs(result.perplexity - document_averaged) > 1e-3 * result.perplexity


def test_text_that_fits_is_one_pass_after_the_bos_token(tiny_lm, tokenizer):
    result = score_text_perplexity(tiny_lm, tokenizer, TEXTS, max_length=512, stride=256)
    for text, nll, count in zip(TEXTS, result.doc_nll, result.doc_tokens):
        ids = [tokenizer.bos_token_id] + tokenizer(text)["input_ids"]
        expected_nll, expected_count = direct_nll(tiny_lm, ids, ids)
        assert count == expected_count == len(ids) - 1  # every text token once, the BOS never
        assert nll == pytest.approx(expected_nll, rel=1e-4)


def test_sliding_window_matches_hugging_face_guide_loop(tiny_lm, tokenizer):
    text = TEXTS[1]
    max_length, stride = 16, 5
    ids = [tokenizer.bos_token_id] + tokenizer(text)["input_ids"]
    # The loop from the Hugging Face perplexity guide, one window at a time.
    expected_nll, expected_count, previous_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + max_length, len(ids))
        target_length = end - previous_end
        window = ids[begin:end]
        labels = [-100] * (len(window) - target_length) + window[len(window) - target_length :]
        nll, count = direct_nll(tiny_lm, window, labels)
        expected_nll, expected_count = expected_nll + nll, expected_count + count
        previous_end = end
        if end == len(ids):
            break
    result = score_text_perplexity(tiny_lm, tokenizer, [text], max_length=max_length, stride=stride)
    assert len(ids) > 3 * max_length  # several windows really ran
    assert result.doc_tokens == [expected_count] == [len(ids) - 1]
    assert result.doc_nll[0] == pytest.approx(expected_nll, rel=1e-4)


def test_windows_score_each_token_once():
    windows = sliding_windows(list(range(10)), max_length=4, stride=3)
    scored = [token for _, labels in windows for token in labels[1:] if token != -100]
    assert scored == list(range(1, 10))
    assert all(len(window) <= 4 for window, _ in windows)


def test_train_mode_is_restored(tiny_lm, tokenizer):
    tiny_lm.train()
    score_text_perplexity(tiny_lm, tokenizer, TEXTS[:1])
    assert tiny_lm.training
    tiny_lm.eval()
    score_sequences_nll(tiny_lm, chat_like_sequences(tokenizer), pad_token_id=0)
    assert not tiny_lm.training


@pytest.mark.parametrize("max_length, stride", [(16, 16), (16, 0), (1, 1)])
def test_bad_window_settings_are_reported(tiny_lm, tokenizer, max_length, stride):
    with pytest.raises(ForgetlessError):
        score_text_perplexity(tiny_lm, tokenizer, TEXTS, max_length=max_length, stride=stride)


def test_mismatched_labels_and_nothing_to_score_are_reported(tiny_lm):
    with pytest.raises(ForgetlessError, match="sequence 1"):
        score_sequences_nll(tiny_lm, [([1, 2, 3], [1, 2])], pad_token_id=0)
    with pytest.raises(ForgetlessError, match="no document has a scored token"):
        score_sequences_nll(tiny_lm, [([1, 2, 3], [-100, -100, -100])], pad_token_id=0)
