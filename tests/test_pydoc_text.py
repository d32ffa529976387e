"""Python's documentation as a training domain, and the paragraph chunker behind it."""

from __future__ import annotations

from pydoc_data.topics import topics

import pytest

from forgetless.data.pydoc_text import pydoc_passages, split_into_passages


def test_whole_paragraphs_are_packed_while_they_fit():
    assert split_into_passages("aaa\n\nbbb", max_chars=8) == ["aaa\n\nbbb"]
    assert split_into_passages("aaa\n\nbbb", max_chars=7) == ["aaa", "bbb"]


def test_long_paragraph_is_cut_at_sentences():
    text = "One two. Three four. Five six."
    assert split_into_passages(text, max_chars=12) == ["One two.", "Three four.", "Five six."]
    assert split_into_passages(text, max_chars=20) == ["One two. Three four.", "Five six."]


def test_indentation_of_code_is_kept_and_words_are_cut_last():
    assert split_into_passages("intro:\n\n    x = 1\n    y = 2\n", max_chars=100) == ["intro:\n\n    x = 1\n    y = 2"]
    assert split_into_passages("abcdefghij", max_chars=4) == ["abcd", "efgh", "ij"]
    with pytest.raises(ValueError):
        split_into_passages("text", max_chars=0)


@pytest.mark.parametrize("max_chars", [300, 800])
def test_pydoc_passages_respect_the_limit_and_lose_no_text(max_chars):
    passages = pydoc_passages(max_chars)
    assert len(passages) > 100
    assert all(0 < len(p) <= max_chars and p.strip() for p in passages)
    # Chunking only moves whitespace: the words, in order, are those of the sorted topics.
    assert " ".join(" ".join(p.split()) for p in passages) == " ".join(" ".join(topics[name].split()) for name in sorted(topics))


def test_pydoc_passages_are_deterministic_and_mostly_full():
    passages = pydoc_passages()
    assert passages == pydoc_passages()
    assert sum(len(p) >= 400 for p in passages) >= 0.8 * len(passages)
