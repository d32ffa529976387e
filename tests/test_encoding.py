
from forgetless.data.encoding import IGNORE_INDEX, PaddingCollator, encode_chat, encode_rows, encode_text


def test_chat_labels_cover_exactly_the_response(tokenizer):
    feature = encode_chat(tokenizer, "Where is my parcel?", "It ships tomorrow.", max_length=512)
    ids, labels = feature["input_ids"], feature["labels"]
    assert len(ids) == len(labels)
    first = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    assert all(label == IGNORE_INDEX for label in labels[:first])
    assert labels[first:] == ids[first:]
    prompt_text = tokenizer.decode(ids[:first])
    assert "Where is my parcel?" in prompt_text and prompt_text.rstrip().endswith("assistant")
    assert tokenizer.decode(ids[first:]).startswith("It ships tomorrow.")


def test_chat_truncation_keeps_alignment(tokenizer):
    feature = encode_chat(tokenizer, "short", "word " * 200, max_length=40)
    assert len(feature["input_ids"]) == len(feature["labels"]) == 40


def test_text_windows_keep_every_token(tokenizer):
    text = "The quick brown fox jumps over the lazy dog. " * 20
    windows = encode_text(tokenizer, text, max_length=32)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert [t for w in windows for t in w["input_ids"]] == ids
    assert all(len(w["input_ids"]) <= 32 and w["labels"] == w["input_ids"] for w in windows)


def test_rows_without_trained_tokens_are_dropped(tokenizer):
    rows = [{"prompt": "x " * 300, "response": "y"}, {"prompt": "a", "response": "b"}]
    features = encode_rows(tokenizer, rows, max_length=64)
    assert len(features) == 1


def test_collator_pads_with_ignored_labels():
    collate = PaddingCollator(pad_token_id=0)
    batch = collate(
        [
            {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
            {"input_ids": [8], "labels": [8]},
        ]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
