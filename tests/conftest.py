"""Shared fixtures: tiny randomly initialised causal LMs that use the real default tokenizer.

The tokenizer comes from the bundled default model (converted once into FORGETLESS_HOME), so tests
exercise the real chat template and vocabulary while the network stays tiny and fast.
"""

from __future__ import annotations

import importlib.util
import json
import signal
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml

from forgetless.config import parse_config
from forgetless.models import load_tokenizer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer("default")


def load_script(folder: str, name: str):
    """A script beside the package (benchmarks/, scripts/) as a module: they are not installed."""
    spec = importlib.util.spec_from_file_location(name, ROOT / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_tiny_lm(vocab_size: int, seed: int = 0, hidden_size: int = 32, layers: int = 2):
    """A 2-layer Llama with the given vocabulary, random weights fixed by `seed`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.eval()
    return model


@pytest.fixture
def tiny_lm(tokenizer):
    model = make_tiny_lm(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


@pytest.fixture
def tiny_model_folder(tmp_path, tokenizer):
    """`tiny_lm` saved as a plain transformers model folder (for code that loads a model by path)."""
    folder = tmp_path / "tiny-model"
    model = make_tiny_lm(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture
def task_files(tmp_path):
    """Two small training tasks (chat, text) and a small multiple-choice evaluation file."""
    chat = [{"prompt": f"Ticket {i}: my router is broken", "response": "Please restart the router and wait."} for i in range(24)]
    text = [{"text": f"We the people of the union number {i} ordain this constitution."} for i in range(24)]
    mc = [{"question": f"Question: {i} plus one?\nAnswer:", "choices": [str(i + 1), str(i + 7)], "answer": 0} for i in range(6)]
    return {
        "chat": write_jsonl(tmp_path / "chat.jsonl", chat),
        "text": write_jsonl(tmp_path / "text.jsonl", text),
        "mc": write_jsonl(tmp_path / "mc.jsonl", mc),
    }


def tiny_config(task_files, **overrides):
    """A fast two-task run config for a tiny model: 4 steps per task, no evaluation suites, no checkpoints."""
    data = {
        "model": "tiny-test-model",
        "tasks": [{"name": "chat", "file": task_files["chat"]}, {"name": "text", "file": task_files["text"]}],
        "eval": {"suites": []},
        "train": {"steps": 4, "batch_size": 4, "lr": 1e-2, "max_length": 64, "seed": 0},
        "checkpoints": "none",
    }
    data.update(overrides)
    return parse_config(data)


def perturb(model, scale=0.05, seed=1):
    """Add seeded Gaussian noise to every trainable parameter, in place."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)


TICKET_ROWS = [{"text": f"Ticket {i}: my router is broken. Please restart the router and wait."} for i in range(16)]


def train_tiny_on_tickets(tmp_path, tokenizer, strategy, name):
    """Train a fresh tiny model 4 steps on TICKET_ROWS with `strategy`; returns (start copy, model, results)."""
    import copy

    from forgetless.training import run_continual

    path = tmp_path / "tickets.jsonl"
    if not path.exists():
        write_jsonl(path, TICKET_ROWS)
    model = make_tiny_lm(len(tokenizer))
    start = copy.deepcopy(model)
    config = parse_config({
        "model": "tiny", "tasks": [{"name": "tickets", "file": str(path)}], "strategies": [strategy],
        "eval": {"suites": []}, "train": {"steps": 4, "batch_size": 2, "lr": 3e-3, "max_length": 32},
        "checkpoints": "none",
    })
    results = run_continual(config, tmp_path / name, model=model, tokenizer=tokenizer, progress=False)
    return start, model, results


def mean_token_nll(logits, labels):
    """Mean next-token NLL over labels that are not -100: the plain loss, computed directly for tests."""
    logits, targets = logits[:, :-1], labels[:, 1:]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-100)


@pytest.fixture
def compare_config(tmp_path, task_files, tiny_model_folder):
    text = [{"text": f"Plain text line number {i} about rivers and hills."} for i in range(12)]
    config = {
        "model": str(tiny_model_folder),
        "tasks": [{"name": "chat", "file": task_files["chat"]}, {"name": "text", "file": task_files["text"]}],
        "eval": {"suites": [], "tasks": [{"name": "mc", "file": task_files["mc"]},
                                         {"name": "prose", "file": write_jsonl(tmp_path / "prose.jsonl", text)}]},
        "train": {"steps": 3, "batch_size": 4, "lr": 1e-2, "max_length": 64, "seed": 0},
        "checkpoints": "none",
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def evaluated_stages(monkeypatch):
    """The stage of every Evaluator.evaluate call ("before", "after_task", ...), in order, while the test runs."""
    from forgetless.evaluation.evaluator import Evaluator

    stages = []
    evaluate = Evaluator.evaluate
    monkeypatch.setattr(Evaluator, "evaluate",
                        lambda self, model, stage, task, step: stages.append(stage) or evaluate(self, model, stage, task, step))
    return stages


@contextmanager
def ctrl_c_when(when):
    """A Ctrl-C right after the training step for which `when(callback, trainer_state)` holds (the callback has `.run`
    and `.task_index`; the trainer state's `global_step` counts within the task): the run saves its state and stops."""
    from forgetless.training import _ResumeCallback

    step_end = _ResumeCallback.on_step_end

    def stopping(self, args, state, control, **kwargs):
        if when(self, state) and self.run.stop_signal is None:
            self.run.stop_signal = signal.SIGINT
        return step_end(self, args, state, control, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_ResumeCallback, "on_step_end", stopping)
        yield
