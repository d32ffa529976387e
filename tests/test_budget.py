"""The forgetting budget: when a check counts as exceeded, and what stop, rollback and strengthen do."""

from __future__ import annotations

import json

import pytest
import torch

from forgetless.budget import BudgetGuard
from forgetless.config import BudgetConfig
from forgetless.errors import ForgetlessError
from forgetless.evaluation.evaluator import EvaluationLog
from forgetless.metrics import ScoreSamples
from forgetless.strategies import StrategyStack, build_strategy
from forgetless.training import run_continual

from .conftest import make_tiny_lm, tiny_config


def _log(after_wrong: int, items: int = 400, task_score: float = 0.5) -> EvaluationLog:
    """A general task all right before training, `after_wrong` of its `items` wrong now."""
    before = ScoreSamples(kind="mean", values=[1.0] * items)
    after = ScoreSamples(kind="mean", values=[0.0] * after_wrong + [1.0] * (items - after_wrong))
    records = [{"stage": "before", "task": None, "step": 0}, {"stage": "step", "task": "t", "step": 1}]
    return EvaluationLog(
        general=records,
        task_evals=[{**r, "scores": {"t": {"score": task_score}}} for r in records],
        general_samples=[{"g": before}, {"g": after}],
        task_samples=[{}, {}],
    )


def test_noise_alone_does_not_exceed_the_budget():
    guard = BudgetGuard(BudgetConfig(max_general_drop=0.01))
    # 8 of 400 flipped: a drop of 0.02, twice the limit, but its s.e. is sqrt(0.02 * 0.98 / 400) = 0.0070,
    # so the upper bound -0.02 + 1.96 * 0.0070 = -0.0063 is above -0.01: not exceeded.
    within = guard.assess(_log(8))
    assert within["general_change"] == pytest.approx(-0.02)
    assert within["se"] == pytest.approx(0.0070, abs=0.0008)
    assert not within["exceeded"]
    # 30 of 400: -0.075 with s.e. 0.013, upper -0.049: beyond the limit whatever the noise.
    assert guard.assess(_log(30))["exceeded"]
    # Relative: 2 % of the starting score 1.0 is 0.02, so 30 flips (-0.075) exceed and 8 do not.
    relative = BudgetGuard(BudgetConfig(max_general_drop=0.02, relative=True))
    assert relative.assess(_log(30))["limit"] == pytest.approx(-0.02)
    assert relative.assess(_log(30))["exceeded"] and not relative.assess(_log(8))["exceeded"]


def test_strengthen_moves_each_knob_the_protecting_way_within_its_bound():
    ewc, wise, replay = build_strategy({"name": "ewc", "lam": 3}), build_strategy("wise"), build_strategy(
        {"name": "replay", "ratio": 0.3})
    assert ewc.strengthen(2) == (3, 6) and ewc.lam == 6 and ewc.params.lam == 6
    assert wise.strengthen(2) == (0.5, 0.25) and wise.alpha == 0.25
    assert replay.strengthen(2) == (0.3, 0.5)  # capped at half the batch
    assert replay.strengthen(2) is None  # already at its bound
    assert build_strategy({"name": "wise", "alpha": "auto"}).strengthen(2) is None
    assert build_strategy("naive").strengthen(2) is None
    assert build_strategy({"name": "lwf", "weight": 0}).strengthen(2) is None  # 0 x 2 is still 0
    l2sp = build_strategy("l2sp")  # its default cap: strengthening lowers the target and adds no price
    assert l2sp.strengthen(2) == (0.01, 0.005) and (l2sp.target, l2sp.lam) == (0.005, 0.0)


def test_strengthen_without_a_knob_is_refused_before_training():
    with pytest.raises(ForgetlessError, match="strength knob"):
        BudgetGuard(BudgetConfig(max_general_drop=0.01, on_exceed="strengthen"), StrategyStack.from_specs(["naive"]))


def test_stop_and_rollback_need_step_evaluations(task_files):
    with pytest.raises(ForgetlessError, match="every_steps"):
        tiny_config(task_files, eval={"suites": [], "tasks": [{"name": "mc", "file": task_files["mc"]}]},
                    budget={"max_general_drop": 0.01, "on_exceed": "stop"})
    with pytest.raises(ForgetlessError, match="general evaluation"):
        tiny_config(task_files, budget={"max_general_drop": 0.01, "on_exceed": "strengthen"})


def test_stop_restores_the_last_state_within_budget():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    guard = BudgetGuard(BudgetConfig(max_general_drop=0.01))
    guard.start_task(model, step=0)
    with torch.no_grad():
        model.weight.add_(1.0)
    assert not guard.check(model, _log(0), "t", step=1)  # within: this state is kept
    kept = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(5.0)
    assert guard.check(model, _log(40), "t", step=2)  # exceeded: stop, back to step 1
    assert torch.equal(model.weight, kept)
    assert guard.decisions()[0]["detail"] == "weights restored to step 1, in-domain 0.5000"


def test_backoff_restores_the_last_state_within_budget_and_divides_the_learning_rate():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / 10)
    guard = BudgetGuard(BudgetConfig(max_general_drop=0.01, on_exceed="backoff", factor=4))
    guard.start_task(model, step=0)

    def train_step():
        optimizer.zero_grad()
        model(torch.ones(1, 3)).sum().backward()
        optimizer.step()
        scheduler.step()

    train_step()
    assert not guard.check(model, _log(0), "t", step=1, optimizer=optimizer, scheduler=scheduler)
    kept = model.weight.detach().clone()
    train_step()
    assert not guard.check(model, _log(40), "t", step=2, optimizer=optimizer, scheduler=scheduler)  # trains on
    assert torch.equal(model.weight, kept) and optimizer.state == {}
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * (1 - 2 / 10) / 4)
    train_step()  # the schedule goes on from the divided rate, not back to the old one
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * (1 - 3 / 10) / 4)
    assert guard.decisions()[0]["action"] == "backoff"
    assert guard.decisions()[0]["detail"] == ("weights restored to step 1, in-domain 0.5000, lr now 0.025 (/4), "
                                              "optimizer moments reset")
    moved = model.weight.detach().clone()
    with pytest.raises(ForgetlessError, match="LambdaLR"):  # refused before any weight moves
        guard.check(model, _log(40), "t", step=3, optimizer=optimizer, scheduler=None)
    assert torch.equal(model.weight, moved) and not torch.equal(moved, kept)
    # At the task's end there is nothing left to train at a lower rate: the last state within budget is kept.
    guard.check(model, _log(40), "t", step=10, final=True, optimizer=optimizer, scheduler=scheduler)
    assert torch.equal(model.weight, kept) and guard.decisions()[-1]["action"] == "restore at the task's end"


def _patched_assess(monkeypatch, exceeded_at: set[tuple[str, int]]):
    """Exceed exactly at the given (stage, step) checks: the runner's wiring, not the statistics, is under test."""
    real = BudgetGuard.assess

    def assess(self, log):
        numbers = real(self, log)
        record = log.general[-1]
        return {**numbers, "exceeded": (record["stage"], record["step"]) in exceeded_at}

    monkeypatch.setattr(BudgetGuard, "assess", assess)


def _one_task_config(task_files, steps, budget=None, strategies=("naive",)):
    return tiny_config(
        task_files, tasks=[{"name": "chat", "file": task_files["chat"]}],
        eval={"suites": [], "tasks": [{"name": "mc", "file": task_files["mc"]}], "every_steps": 1},
        train={"steps": steps, "batch_size": 4, "lr": 1e-2, "max_length": 64, "seed": 0},
        strategies=list(strategies), **({"budget": budget} if budget else {}),
    )


def _final_weights(config, tmp_path, tokenizer, name):
    model = make_tiny_lm(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    results = run_continual(config, tmp_path / name, model=model, tokenizer=tokenizer, progress=False)
    return {n: p.detach().clone() for n, p in model.named_parameters()}, results


def test_runner_stop_ends_the_task_at_the_last_state_within_budget(task_files, tmp_path, tokenizer, monkeypatch):
    _patched_assess(monkeypatch, {("step", 3)})
    stopped, results = _final_weights(
        _one_task_config(task_files, 5, {"max_general_drop": 0.01, "on_exceed": "stop"}), tmp_path, tokenizer, "stop")
    [decision] = [c for c in results.budget if c["action"] != "within"]
    assert decision["step"] == 3 and decision["action"] == "stop" and decision["detail"].startswith("weights restored to step 2")
    assert max(r.step for r in results.general) == 3  # no evaluation after the stop but the task's end
    two_steps, _ = _final_weights(_one_task_config(task_files, 2), tmp_path, tokenizer, "two")
    for name, value in two_steps.items():
        assert torch.equal(stopped[name], value), name
    report = (tmp_path / "stop" / "report.md").read_text()
    assert "## Forgetting budget" in report and "weights restored to step 2" in report


def test_runner_rollback_restores_the_best_in_domain_state_within_budget(task_files, tmp_path, tokenizer, monkeypatch):
    _patched_assess(monkeypatch, {("step", 2), ("step", 4)})
    rolled, results = _final_weights(
        _one_task_config(task_files, 4, {"max_general_drop": 0.01, "on_exceed": "rollback"}), tmp_path, tokenizer, "rb")
    checks = {c["step"]: c for c in results.budget if c["stage"] == "step"}
    assert checks[2]["action"] == "continue (rollback at the task's end)" and checks[4]["action"] == "rollback"
    # The best within budget: steps 1 and 3 (and the start); the later one on a tie.
    best = 3 if checks[3]["in_domain"] >= checks[1]["in_domain"] else 1
    assert checks[4]["detail"].startswith(f"weights restored to step {best}")
    reference, _ = _final_weights(_one_task_config(task_files, best), tmp_path, tokenizer, "ref")
    for name, value in reference.items():
        assert torch.equal(rolled[name], value), name


def test_runner_strengthen_raises_the_knob_and_trains_on(task_files, tmp_path, tokenizer, monkeypatch):
    _patched_assess(monkeypatch, {("step", 6)})
    config = tiny_config(
        task_files, eval={"suites": [], "tasks": [{"name": "mc", "file": task_files["mc"]}], "every_steps": 2},
        strategies=[{"name": "ewc", "lam": 5, "samples": 4}],
        budget={"max_general_drop": 0.01, "on_exceed": "strengthen", "factor": 3},
    )
    _, results = _final_weights(config, tmp_path, tokenizer, "str")
    [decision] = [c for c in results.budget if c["action"] != "within"]
    assert decision["task"] == "text" and decision["detail"] == "ewc.lam 5 -> 15"
    assert max(r.step for r in results.general) == 8  # both tasks trained to the end
    saved = json.loads((tmp_path / "str" / "results.json").read_text())
    assert saved["budget"][0]["stage"] == "step" and len(saved["budget"]) == len(results.budget)


def test_strengthen_at_the_tasks_last_check_applies_a_tightened_cap_at_once(task_files, tmp_path, tokenizer, monkeypatch):
    from forgetless.evaluation.probe import GeneralProbe, ProbePoint

    drop_at = {"step": None}

    def estimate(self, step):  # scripted probe: a clear drop at `drop_at` only
        return ProbePoint(step, -0.5 if step == drop_at["step"] else 0.0, 0.01, 4, 1)

    monkeypatch.setattr(GeneralProbe, "estimate", estimate)
    config = tiny_config(
        task_files, tasks=[{"name": "chat", "file": task_files["chat"]}],
        eval={"suites": [], "tasks": [{"name": "mc", "file": task_files["mc"]}], "probe": {"items_per_step": 1}},
        train={"steps": 3, "batch_size": 4, "lr": 1e-2, "max_length": 64, "seed": 0},
        strategies=[{"name": "l2sp", "target": 0.04}], budget={"max_general_drop": 0.01, "on_exceed": "strengthen"},
    )
    start = {n: p.detach().clone() for n, p in make_tiny_lm(len(tokenizer)).named_parameters()}
    plain, results = _final_weights(config, tmp_path, tokenizer, "within")  # never exceeded: ends on the 0.04 cap
    assert [c["action"] for c in results.budget] == ["within"] * len(results.budget)
    drop_at["step"] = 3  # the task's final step
    capped, results = _final_weights(config, tmp_path, tokenizer, "capped")
    [decision] = [c for c in results.budget if c["action"] != "within"]
    assert (decision["stage"], decision["step"], decision["action"]) == ("probe", 3, "strengthen")
    assert decision["detail"] == "l2sp.target 0.04 -> 0.02; weights projected onto l2sp's cap now (the task's last step)"
    # Steps 1-3 are the same in both runs; the exceeded one then projects each tensor onto the halved cap by hand.
    shrunk = 0
    for name, weight in plain.items():
        base, moved = start[name], weight - start[name]
        ratio = float(moved.norm() / base.norm()) if base.norm() > 0 else 0.0
        expected = base + moved * (0.02 / ratio) if ratio > 0.02 else weight
        shrunk += ratio > 0.02
        assert torch.allclose(capped[name], expected, atol=1e-6), name
    assert shrunk > 0  # the halved cap binds, so the check above could fail
    # With full evaluations instead of a probe, the final state is evaluated too (before the task's consolidation),
    # and the same projection follows; an evaluation changes no weight.
    _patched_assess(monkeypatch, {("step", 3)})
    evaluated = config.model_copy(update={"eval": config.eval.model_copy(update={"probe": None, "every_steps": 2})})
    by_evaluation, results = _final_weights(evaluated, tmp_path, tokenizer, "evaluated")
    assert [(c["stage"], c["step"]) for c in results.budget] == [("step", 2), ("step", 3), ("after_task", 3)]
    assert results.budget[1]["detail"] == decision["detail"] and results.budget[2]["action"] == "within"
    for name, weight in capped.items():
        assert torch.allclose(by_evaluation[name], weight, atol=1e-6), name
    # Without the final step's drop the cap moves only for a next task; at an earlier step the next step projects.
    drop_at["step"] = 2
    _, results = _final_weights(config, tmp_path, tokenizer, "earlier")
    [decision] = [c for c in results.budget if c["action"] != "within"]
    assert decision["detail"] == "l2sp.target 0.04 -> 0.02"


def _record_restores(monkeypatch) -> dict:
    """The weights right after the budget restores a kept state, in the returned dict under "restored"."""
    seen, real_restore = {}, BudgetGuard._restore

    def restore(self, model):
        detail = real_restore(self, model)
        seen["restored"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        return detail

    monkeypatch.setattr(BudgetGuard, "_restore", restore)
    return seen


def test_runner_strengthen_with_restore_goes_back_and_trains_on_stronger(task_files, tmp_path, tokenizer, monkeypatch):
    _patched_assess(monkeypatch, {("step", 3)})
    seen = _record_restores(monkeypatch)
    budget = {"max_general_drop": 0.01, "on_exceed": "strengthen", "restore": True}
    _, results = _final_weights(_one_task_config(task_files, 5, budget, [{"name": "l2sp", "lam": 0.5}]),
                                tmp_path, tokenizer, "sr")
    [decision] = [c for c in results.budget if c["action"] != "within"]
    assert decision["step"] == 3 and decision["action"] == "strengthen"
    assert decision["detail"].startswith("l2sp.lam 0.5 -> 1; weights restored to step 2, in-domain ")
    assert decision["detail"].endswith(", optimizer moments reset")
    assert max(r.step for r in results.general) == 5  # trained on to the task's end
    two_steps, _ = _final_weights(_one_task_config(task_files, 2, strategies=[{"name": "l2sp", "lam": 0.5}]),
                                  tmp_path, tokenizer, "two")
    for name, value in two_steps.items():
        assert torch.equal(seen["restored"][name], value), name
    with pytest.raises(ForgetlessError, match="strengthen with restore acts within a task"):
        tiny_config(task_files, eval={"suites": [], "tasks": [{"name": "mc", "file": task_files["mc"]}]}, budget=budget)
    with pytest.raises(ForgetlessError, match="restore: only for on_exceed strengthen"):
        _one_task_config(task_files, 5, {"max_general_drop": 0.01, "on_exceed": "backoff", "restore": True})


def test_runner_backoff_goes_back_and_trains_on_at_a_lower_rate(task_files, tmp_path, tokenizer, monkeypatch):
    import forgetless.budget as budget

    _patched_assess(monkeypatch, {("step", 3)})
    seen = _record_restores(monkeypatch)
    real_slow_down = budget._slow_down

    def slow_down(optimizer, scheduler, factor):
        before = optimizer.param_groups[0]["lr"]
        detail = real_slow_down(optimizer, scheduler, factor)
        seen["lr"] = (before, optimizer.param_groups[0]["lr"])
        return detail

    monkeypatch.setattr(budget, "_slow_down", slow_down)
    _, results = _final_weights(
        _one_task_config(task_files, 5, {"max_general_drop": 0.01, "on_exceed": "backoff"}), tmp_path, tokenizer, "bo")
    [decision] = [c for c in results.budget if c["action"] != "within"]
    assert decision["step"] == 3 and decision["action"] == "backoff"
    assert decision["detail"].startswith("weights restored to step 2") and "(/2)" in decision["detail"]
    assert max(r.step for r in results.general) == 5  # trained on to the task's end
    assert seen["lr"][1] == pytest.approx(seen["lr"][0] / 2)
    two_steps, _ = _final_weights(_one_task_config(task_files, 2), tmp_path, tokenizer, "two")
    for name, value in two_steps.items():
        assert torch.equal(seen["restored"][name], value), name


def _monitored_trainer(tmp_path, tokenizer, task_files, steps, monitor, strategies=()):
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    import forgetless

    model = make_tiny_lm(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    texts = [f"Ticket {i}: my router is broken. Please restart router {i}." for i in range(8)]
    args = TrainingArguments(output_dir=str(tmp_path / "hf"), max_steps=steps, per_device_train_batch_size=2, learning_rate=1e-2,
                             report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, lr_scheduler_type="constant")
    return forgetless.with_strategies(Trainer)(
        model=model, args=args, train_dataset=Dataset.from_list([{"input_ids": tokenizer(t)["input_ids"]} for t in texts]),
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False), processing_class=tokenizer,
        callbacks=[monitor] if monitor else [], strategies=list(strategies),
    )


def _budget_monitor(monkeypatch, task_files, on_exceed: str, exceeded_at_step: int):
    import forgetless

    _patched_assess(monkeypatch, {("step", exceeded_at_step)})
    return forgetless.ForgettingMonitor(tasks=[task_files["mc"]], every_steps=1, limit=3, progress=False,
                                        budget={"max_general_drop": 0.01, "on_exceed": on_exceed})


def test_monitor_budget_stops_the_users_trainer(tmp_path, tokenizer, task_files, monkeypatch):
    monitor = _budget_monitor(monkeypatch, task_files, "stop", exceeded_at_step=2)
    trainer = _monitored_trainer(tmp_path, tokenizer, task_files, 4, monitor)
    trainer.train()
    assert trainer.state.global_step == 2
    reference = _monitored_trainer(tmp_path, tokenizer, task_files, 1, None)
    reference.train()
    for (name, value), (_, expected) in zip(trainer.model.named_parameters(), reference.model.named_parameters()):
        assert torch.equal(value, expected), name
    assert [c["action"] for c in monitor.results().budget if c["action"] != "within"] == ["stop"]


def test_monitor_budget_strengthens_the_trainers_strategies(tmp_path, tokenizer, task_files, monkeypatch):
    import forgetless

    monitor = _budget_monitor(monkeypatch, task_files, "strengthen", exceeded_at_step=1)
    trainer = _monitored_trainer(tmp_path, tokenizer, task_files, 2, monitor, strategies=[{"name": "l2sp", "lam": 0.5}])
    trainer.train()
    assert trainer.state.global_step == 2 and trainer.strategy_stack.strategies[0].lam == 1.0
    with pytest.raises(ForgetlessError, match="every_steps"):
        forgetless.ForgettingMonitor(budget={"max_general_drop": 0.01, "on_exceed": "rollback"})
    with pytest.raises(ForgetlessError, match="max_general_drop"):
        forgetless.ForgettingMonitor(every_steps=1, budget={"max_general_drop": -1})


def test_monitor_budget_backs_off_the_users_trainer(tmp_path, tokenizer, task_files, monkeypatch):
    monitor = _budget_monitor(monkeypatch, task_files, "backoff", exceeded_at_step=2)
    trainer = _monitored_trainer(tmp_path, tokenizer, task_files, 4, monitor)
    trainer.train()
    assert trainer.state.global_step == 4
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 / 2)  # constant schedule, halved at step 2
    # The moments restarted after step 2: AdamW has counted steps 3 and 4 only.
    assert {int(s["step"]) for s in trainer.optimizer.state.values()} == {2}
    assert [c["action"] for c in monitor.results().budget if c["action"] != "within"] == ["backoff"]
    # Under FSDP or DeepSpeed the weights a restore would copy into are shards or not the optimizer's master copy.
    from types import SimpleNamespace

    sharded = _budget_monitor(monkeypatch, task_files, "backoff", exceeded_at_step=2)
    sharded.bind(SimpleNamespace(is_fsdp_enabled=True, is_deepspeed_enabled=False))
    with pytest.raises(ForgetlessError, match="DeepSpeed and FSDP"):
        sharded.on_train_begin(None, None, None, model=None, processing_class=tokenizer)


def test_the_budget_acts_on_per_step_probe_points(task_files, tmp_path, tokenizer, monkeypatch):
    from forgetless.evaluation.probe import GeneralProbe, ProbePoint

    def estimate(self, step):  # the probe's numbers are scripted: a clear drop at step 3 only
        return ProbePoint(step, -0.5 if step == 3 else 0.0, 0.01, 4, 1)

    monkeypatch.setattr(GeneralProbe, "estimate", estimate)
    config = tiny_config(
        task_files, tasks=[{"name": "chat", "file": task_files["chat"]}],
        eval={"suites": [], "tasks": [{"name": "mc", "file": task_files["mc"]}], "probe": {"items_per_step": 1}},
        train={"steps": 5, "batch_size": 4, "lr": 1e-2, "max_length": 64, "seed": 0},
        budget={"max_general_drop": 0.01, "on_exceed": "stop"},
    )
    stopped, results = _final_weights(config, tmp_path, tokenizer, "probe-stop")
    [decision] = [c for c in results.budget if c["action"] != "within"]
    assert (decision["stage"], decision["step"], decision["action"]) == ("probe", 3, "stop")
    assert decision["detail"] == "weights restored to step 2"
    two_steps, _ = _final_weights(_one_task_config(task_files, 2), tmp_path, tokenizer, "two")
    for name, value in two_steps.items():
        assert torch.equal(stopped[name], value), name
    # With a full evaluation at step 3 as well, it decides (it is within budget) and the probe's drop is ignored.
    config = config.model_copy(update={"eval": config.eval.model_copy(update={"every_steps": 3})})
    _, results = _final_weights(config, tmp_path, tokenizer, "probe-and-full")
    assert [c for c in results.budget if c["action"] != "within"] == []
    assert {(c["stage"], c["step"]) for c in results.budget} >= {("probe", 2), ("step", 3), ("probe", 4)}
