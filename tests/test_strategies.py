import pytest

from forgetless.config import parse_config
from forgetless.errors import ForgetlessError
from forgetless.strategies import Strategy, build_strategies, build_strategy, known_strategies, register_strategy

CONFIG = parse_config({"tasks": [{"name": "s", "builtin": "support"}]})


def test_naive_is_registered():
    assert "naive" in known_strategies()
    assert build_strategy("naive").name == "naive"


def test_unknown_strategy_lists_known_names():
    with pytest.raises(ForgetlessError) as info:
        build_strategy("ewwc")
    assert "ewwc" in str(info.value) and "naive" in str(info.value)


def test_unknown_parameter_lists_accepted_ones():
    with pytest.raises(ForgetlessError, match=r"no parameter\(s\) \['lam'\]"):
        build_strategy({"name": "naive", "lam": 3})
    with pytest.raises(ForgetlessError, match="needs a 'name'"):
        build_strategy({"lam": 3})


def test_duplicate_in_stack_rejected():
    with pytest.raises(ForgetlessError, match="more than once"):
        build_strategies(["naive", "naive"])


class _LoraOnly(Strategy):
    name = "_test_lora_only"
    adapters = ("lora",)

    def __init__(self, weight: float = 1.0):
        self.weight = weight


class _SingleProcess(Strategy):
    name = "_test_single"
    supports_multiprocess = False


for cls in (_LoraOnly, _SingleProcess):
    register_strategy(cls)


def test_parameters_reach_the_constructor():
    assert build_strategy({"name": "_test_lora_only", "weight": 2.5}).weight == 2.5


def test_runner_refuses_impossible_combinations_before_training():
    with pytest.raises(ForgetlessError, match="does not work with adapter 'full'"):
        build_strategies(["_test_lora_only"], CONFIG)
    with pytest.raises(ForgetlessError, match="several processes"):
        build_strategies(["_test_single"], CONFIG, world_size=2)
    assert [s.name for s in build_strategies(["naive", "_test_single"], CONFIG)] == ["naive", "_test_single"]


def test_auto_protection_data_is_general_first_then_half_earlier_tasks(tokenizer):
    """First task: general English only. Later tasks: half earlier tasks' rows, half general English."""
    from forgetless.config import parse_config
    from forgetless.data.tasks import TrainingTask
    from forgetless.strategies._common import protection_examples
    from forgetless.training import context_for

    config = parse_config({"model": "tiny", "tasks": [{"name": "a", "file": "a.jsonl"}, {"name": "b", "file": "b.jsonl"}]})
    rows = [{"prompt": f"Ticket {i} about billing?", "response": f"Refund number {i} issued."} for i in range(20)]
    tasks = [TrainingTask("a", "chat", rows, rows[:2]), TrainingTask("b", "chat", rows, rows[:2])]

    def texts(index: int) -> list[str]:
        ctx = context_for(config, None, tokenizer, tasks, index)
        return [tokenizer.decode(e["input_ids"]) for e in protection_examples(ctx, 8, "auto", seed=0)]

    first, second = texts(0), texts(1)
    assert len(first) == 8 and not any("Ticket" in t for t in first)
    assert len(second) == 8 and sum("Ticket" in t for t in second) == 4
