"""STM: masks match directly computed perplexities; scores are cached; percentile and random-control modes."""

import math

import pytest
import torch

import forgetless.strategies.stm as stm
from forgetless.config import parse_config
from forgetless.data.encoding import IGNORE_INDEX, encode_rows
from forgetless.data.tasks import TrainingTask
from forgetless.errors import ForgetlessError
from forgetless.strategies import build_strategy
from forgetless.training import context_for, run_continual

from .conftest import make_tiny_lm, tiny_config

ROWS = [
    {"prompt": "My router keeps dropping the connection.", "response": "Please restart it and check the cable."},
    {"prompt": "How do I reset my password?", "response": "Use the link on the login page."},
    {"prompt": "Refund?", "response": "Refunds take five business days to appear on your statement."},
    {"text": "The quick brown fox jumps over the lazy dog near the river bank."},
]


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(stm, "stm_cache_dir", lambda: tmp_path / "stm-cache")
    return tmp_path / "stm-cache"


def make_context(model, tokenizer, adapter="full", run_seed=0):
    config = parse_config({"tasks": [{"name": "t", "builtin": "support"}], "adapter": adapter, "train": {"seed": run_seed}})
    task = TrainingTask("t", "chat", ROWS, ROWS)
    return context_for(config, model, tokenizer, [task], 0)


def direct_nlls(model, example):
    """-log p(x_t | x_<t) at every trained position t >= 1, from one plain unpadded forward."""
    ids = torch.tensor([example["input_ids"]])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)  # (T, V)
    return {
        t: -log_probs[t - 1, example["input_ids"][t]].item()
        for t, label in enumerate(example["labels"])
        if t > 0 and label != IGNORE_INDEX
    }


def masked(before, after):
    """(example, position) pairs whose label changed."""
    pairs = enumerate(zip(before, after))
    return {(i, t) for i, (b, a) in pairs for t, (x, y) in enumerate(zip(b["labels"], a["labels"])) if x != y}


def test_threshold_masks_exactly_the_tokens_above_tau_and_never_a_prompt_token(tiny_lm, tokenizer, cache_dir):
    examples = encode_rows(tokenizer, ROWS, 64)
    direct = [direct_nlls(tiny_lm, e) for e in examples]
    all_nll = sorted(v for d in direct for v in d.values())
    # The random tiny model is far more perplexed than a real one; put tau between two middle scores.
    middle = len(all_nll) // 2
    log_tau = (all_nll[middle - 1] + all_nll[middle]) / 2
    assert min(abs(v - log_tau) for v in all_nll) > 1e-4  # no token sits on the threshold
    strategy = build_strategy({"name": "stm", "tau": math.exp(log_tau)})
    ctx = make_context(tiny_lm, tokenizer)
    result = strategy.prepare_examples(ctx, [dict(e) for e in examples])

    expected = {(i, t) for i, d in enumerate(direct) for t, v in d.items() if math.exp(v) > math.exp(log_tau)}
    assert masked(examples, result) == expected
    assert all(label == IGNORE_INDEX for i, t in expected for label in [result[i]["labels"][t]])
    for before, after in zip(examples, result):  # prompt tokens stay untrained, ids unchanged
        assert after["input_ids"] == before["input_ids"]
        assert all(a == IGNORE_INDEX for b, a in zip(before["labels"], after["labels"]) if b == IGNORE_INDEX)
    trained = sum(len(d) for d in direct)
    assert ctx.log["stm_masked_fraction"] == pytest.approx(len(expected) / trained)
    assert 0.3 < ctx.log["stm_masked_fraction"] < 0.7


def test_scores_are_cached_and_a_changed_model_scores_again(tiny_lm, tokenizer, cache_dir, monkeypatch):
    calls = []
    real = stm.token_nlls
    monkeypatch.setattr(stm, "token_nlls", lambda *a, **k: calls.append(1) or real(*a, **k))
    examples = encode_rows(tokenizer, ROWS, 64)
    strategy = build_strategy({"name": "stm", "mode": "percentile", "percentile": 0.4})
    first = strategy.prepare_examples(make_context(tiny_lm, tokenizer), [dict(e) for e in examples])
    second = strategy.prepare_examples(make_context(tiny_lm, tokenizer), [dict(e) for e in examples])
    assert len(calls) == 1 and first == second
    assert len(list(cache_dir.glob("*.safetensors"))) == 1

    with torch.no_grad():
        tiny_lm.model.layers[1].self_attn.o_proj.weight.mul_(1.5)  # a different model: new scores
    strategy.prepare_examples(make_context(tiny_lm, tokenizer), [dict(e) for e in examples])
    assert len(calls) == 2
    other_examples = encode_rows(tokenizer, ROWS[:2], 64)  # different data: new scores
    strategy.prepare_examples(make_context(tiny_lm, tokenizer), other_examples)
    assert len(calls) == 3


def test_percentile_mode_masks_the_top_fraction(tiny_lm, tokenizer, cache_dir):
    examples = encode_rows(tokenizer, ROWS, 64)
    direct = [direct_nlls(tiny_lm, e) for e in examples]
    trained = sum(len(d) for d in direct)
    ctx = make_context(tiny_lm, tokenizer)
    result = build_strategy({"name": "stm", "mode": "percentile", "percentile": 0.3}).prepare_examples(ctx, examples)
    chosen = masked(examples, result)
    assert len(chosen) == round(0.3 * trained)
    kept = {(i, t) for i, d in enumerate(direct) for t in d} - chosen
    assert min(direct[i][t] for i, t in chosen) >= max(direct[i][t] for i, t in kept) - 1e-4


def test_random_control_masks_as_many_trained_tokens_at_random(tiny_lm, tokenizer, cache_dir):
    examples = encode_rows(tokenizer, ROWS, 64)
    spec = {"name": "stm", "mode": "percentile", "percentile": 0.5}
    by_ppl = masked(examples, build_strategy(spec).prepare_examples(make_context(tiny_lm, tokenizer), examples))
    runs = [
        masked(examples, build_strategy({**spec, "control": "random", "seed": seed}).prepare_examples(
            make_context(tiny_lm, tokenizer), examples))
        for seed in (0, 0, 1)
    ]
    per_example = lambda chosen: [sum(1 for i, _ in chosen if i == n) for n in range(len(examples))]  # noqa: E731
    assert per_example(runs[0]) == per_example(by_ppl)  # same count in every example
    assert runs[0] == runs[1] and runs[0] != runs[2]  # deterministic per seed
    assert runs[0] != by_ppl
    assert all(examples[i]["labels"][t] != IGNORE_INDEX and t > 0 for i, t in runs[2])  # never a prompt token


def test_random_control_draws_at_the_runs_training_seed_unless_given_one(tiny_lm, tokenizer, cache_dir):
    """`compare --seeds` must draw the random control anew at each training seed (as replay, ssr and layerwise do);
    `seed: 0` pins it, and at training seed 0 the default is seed 0, so earlier runs reproduce there."""
    examples = encode_rows(tokenizer, ROWS, 64)
    spec = {"name": "stm", "mode": "percentile", "percentile": 0.5, "control": "random"}

    def chosen(extra, run_seed):
        strategy = build_strategy({**spec, **extra})
        return masked(examples, strategy.prepare_examples(make_context(tiny_lm, tokenizer, run_seed=run_seed), examples))

    at_0 = chosen({"seed": 0}, 0)
    assert chosen({}, 0) == at_0 and chosen({"seed": 0}, 3) == at_0
    assert chosen({}, 3) == chosen({"seed": 3}, 0) != at_0


def test_under_lora_scores_are_the_base_models_and_the_fresh_adapter_is_not_in_the_key(tokenizer, cache_dir):
    from peft import LoraConfig, get_peft_model

    examples = encode_rows(tokenizer, ROWS, 64)
    plain = stm.token_nlls(make_tiny_lm(len(tokenizer)), examples, tokenizer.pad_token_id)
    keys = []
    for adapter_seed in (1, 2):  # two fresh adapters with different random A (B = 0)
        base = make_tiny_lm(len(tokenizer))
        torch.manual_seed(adapter_seed)
        wrapped = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
        for a, b in zip(plain, stm.token_nlls(wrapped, examples, tokenizer.pad_token_id)):
            assert torch.allclose(a, b, equal_nan=True, atol=1e-5)
        keys.append((stm.model_fingerprint(wrapped, skip_trainable=True), stm.model_fingerprint(wrapped, skip_trainable=False)))
    assert keys[0][0] == keys[1][0]  # same function, same key
    assert keys[0][1] != keys[1][1]  # the adapters' A differ


def test_knobs_are_validated():
    for bad in ({"tau": 0.5}, {"mode": "top"}, {"percentile": 1.5}, {"control": "shuffle"}):
        with pytest.raises(ForgetlessError, match=rf"^strategy\.{list(bad)[-1]}:"):
            build_strategy({"name": "stm", **bad})
    with pytest.raises(ForgetlessError, match="tau and percentile both given"):
        build_strategy({"name": "stm", "tau": 3.0, "percentile": 0.1})


def test_the_default_masks_a_share_and_naming_tau_selects_the_threshold():
    bare, by_tau = build_strategy("stm"), build_strategy({"name": "stm", "tau": 3.0})
    assert (bare.mode, bare.percentile) == ("percentile", 0.2)
    assert (by_tau.mode, by_tau.tau) == ("threshold", 3.0)
    # The knobs results.json records for a bare stm build the same strategy again.
    assert build_strategy({"name": "stm", **bare.params.model_dump()}).params == bare.params


def test_masking_everything_is_a_clear_error(tiny_lm, tokenizer, cache_dir):
    with pytest.raises(ForgetlessError, match="raise tau"):
        paper_tau = build_strategy({"name": "stm", "tau": 2.5})
        paper_tau.prepare_examples(make_context(tiny_lm, tokenizer), encode_rows(tokenizer, ROWS, 64))


def test_end_to_end_stm_changes_what_is_trained(tmp_path, tokenizer, task_files, cache_dir):
    def run(strategies, name):
        train = {"steps": 2, "batch_size": 4, "lr": 1e-2, "max_length": 64, "seed": 0}
        config = tiny_config(task_files, strategies=strategies, train=train)
        model = make_tiny_lm(len(tokenizer), hidden_size=16)
        return run_continual(config, tmp_path / name, model=model, tokenizer=tokenizer, progress=False)

    naive = run(["naive"], "naive")
    masked_run = run([{"name": "stm", "mode": "percentile", "percentile": 0.5}], "stm")
    fractions = [task["stm_masked_fraction"] for task in masked_run.training]
    assert fractions == [pytest.approx(0.5, abs=0.02)] * 2
    assert list(cache_dir.glob("*.safetensors"))  # scores were written for reuse
    # Same seed and data order: only the masks differ, so the training losses differ.
    assert masked_run.training[0]["train_loss"] != pytest.approx(naive.training[0]["train_loss"], rel=1e-4)
