import dataclasses
import re

import pytest

from forgetless.config import parse_config
from forgetless.errors import ForgetlessError
from forgetless.strategies import Strategy, StrategyParams, build_strategies, build_strategy, known_strategies, register_strategy

CONFIG = parse_config({"tasks": [{"name": "s", "builtin": "support"}]})


def test_naive_is_registered():
    assert "naive" in known_strategies()
    assert build_strategy("naive").name == "naive"


def test_unknown_strategy_lists_known_names():
    with pytest.raises(ForgetlessError) as info:
        build_strategy("ewwc")
    assert "ewwc" in str(info.value) and "naive" in str(info.value)


def test_unknown_parameter_lists_accepted_ones():
    with pytest.raises(ForgetlessError, match=r"strategy.lam: strategy 'naive' has no such parameter; accepted: none"):
        build_strategy({"name": "naive", "lam": 3})
    with pytest.raises(ForgetlessError, match=r"strategies\[0\].lamda: .*accepted: lam, target, fisher"):
        build_strategies([{"name": "ewc", "lamda": 3}])
    with pytest.raises(ForgetlessError, match="needs a 'name'"):
        build_strategy({"lam": 3})


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"name": "ewc", "lam": -1}, r"strategies\[1\]\.lam: Input should be greater than or equal to 0 \(got -1\)"),
        ({"name": "fip", "distance": "l2"}, r"strategies\[1\]\.distance: Input should be 'bhattacharyya' or 'kl'"),
        ({"name": "wise", "alpha": True}, r"strategies\[1\]\.alpha: Input should be a valid number"),
        ({"name": "wise", "alpha": 1.5}, r"strategies\[1\]\.alpha: Input should be less than or equal to 1"),
        ({"name": "replay", "ratio": 0.6, "general_ratio": 0.5}, r"strategies\[1\] \(replay\): ratio \+ general_ratio"),
        ({"name": "stm", "tau": "high"}, r"strategies\[1\]\.tau: Input should be a valid number"),
    ],
)
def test_a_bad_value_is_refused_with_its_config_path(spec, message):
    """The runner builds its stack before loading anything: the error names the field, not a traceback."""
    from forgetless.training import ContinualRun

    config = parse_config({"tasks": [{"name": "s", "builtin": "support"}], "strategies": ["naive", spec]})
    with pytest.raises(ForgetlessError, match=message):
        ContinualRun(config, "unused-out-dir")


def test_every_knob_is_typed_documented_and_reaches_the_strategy():
    """Each registered strategy's Params: a description per knob; defaults and given values land on the instance."""
    from forgetless.strategies import parameter_table

    for name in [n for n in known_strategies() if not n.startswith("_test")]:
        strategy = build_strategy(name)
        for knob, kind, default, description in parameter_table(name):
            assert len(description) > 15, f"{name}.{knob} needs a one-line description"
            assert kind and default, (name, knob)
            if name == "ewc" and knob == "fisher":
                continue  # stored as fisher_flavour: `fisher` is the Fisher itself
            assert getattr(strategy, knob) == getattr(strategy.params, knob)
    assert build_strategy({"name": "ewc", "lam": 7, "online": True}).lam == 7.0
    assert build_strategy({"name": "ewc", "fisher": "true"}).fisher_flavour == "true"


def test_cli_prints_a_strategys_parameters(capsys):
    from forgetless.cli import main

    assert main(["strategies", "--params", "ewc"]) == 0
    out = capsys.readouterr().out
    assert "| lam " in out and "| 0.0 " in out and "Penalty weight" in out
    assert main(["strategies", "--params", "l2sp"]) == 0
    assert re.search(r"\| target_scale +\| \{str: float\} +\| \{\} +\|", capsys.readouterr().out)
    # ewc's default cap is set by a validator when neither knob is named; the table shows what a bare `ewc` gets.
    assert re.search(r"\| target +\| float \\\| null +\| 0\.004 +\|", out), out
    assert main(["strategies", "--params", "nope"]) == 2


def test_duplicate_in_stack_rejected():
    with pytest.raises(ForgetlessError, match="more than once"):
        build_strategies(["naive", "naive"])


class _LoraOnly(Strategy):
    name = "_test_lora_only"
    adapters = ("lora",)

    class Params(StrategyParams):
        weight: float = 1.0


for cls in (_LoraOnly,):
    register_strategy(cls)


def test_parameters_reach_the_constructor():
    assert build_strategy({"name": "_test_lora_only", "weight": 2.5}).weight == 2.5


def test_runner_refuses_impossible_combinations_before_training():
    with pytest.raises(ForgetlessError, match="does not work with adapter 'full'"):
        build_strategies(["_test_lora_only"], CONFIG)
    sharded = dataclasses.replace(CONFIG.training_setup(), sharding="fsdp")
    with pytest.raises(ForgetlessError, match=r"'ewc' does not work under FSDP: it reads or edits whole parameter tensors.*"
                                              r"train with DDP instead"):
        build_strategies(["ewc"], sharded)
    with pytest.raises(ForgetlessError, match="'ssr' does not work under DEEPSPEED: it generates rehearsal text"):
        build_strategies(["ssr"], dataclasses.replace(CONFIG.training_setup(), sharding="deepspeed"))
    for name in ("naive", "replay"):  # refused until a sharded run is verified (docs/scale.md)
        with pytest.raises(ForgetlessError, match=f"'{name}' does not work under FSDP: no run under FSDP has been verified yet"):
            build_strategies([name], sharded, world_size=2)
    assert [s.name for s in build_strategies(["naive", "replay"], CONFIG.training_setup(), world_size=2)] == ["naive", "replay"]


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
