"""Loading a model by spec: a missing folder, a hub id while offline and a pickle checkpoint are one-line errors."""

import json

import pytest

from forgetless.cli import main
from forgetless.errors import ForgetlessError
from forgetless.models import load_model, load_model_and_tokenizer


def run_config(tmp_path, task_files, model: str) -> str:
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({"model": model, "tasks": [{"name": "chat", "file": task_files["chat"]}],
                                  "eval": {"suites": []}, "train": {"steps": 2, "batch_size": 2}}))
    return str(config)


def test_a_model_folder_that_does_not_exist_names_the_field(tmp_path, task_files, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", run_config(tmp_path, task_files, "./nope"), "--out", "out"]) == 2
    err = capsys.readouterr().err
    assert f"forgetless: error: model: model folder ./nope not found (looked for {tmp_path / 'nope'})" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # refused before anything was written
    assert main(["eval", "--model", "./nope", "--task-file", task_files["mc"]]) == 2
    assert "forgetless: error: --model: model folder ./nope not found" in capsys.readouterr().err


def test_a_hub_id_while_offline_is_one_line_naming_the_field(tmp_path, task_files, monkeypatch, capsys):
    import huggingface_hub.constants

    # huggingface_hub reads HF_HUB_OFFLINE once, at import: set the variable and the value it was read into.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    message = "'someone/some-model' is neither a local folder nor reachable offline (HF_HUB_OFFLINE is set"
    assert main(["run", run_config(tmp_path, task_files, "someone/some-model"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"forgetless: error: model: {message}" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["eval", "--model", "someone/some-model", "--task-file", task_files["mc"]]) == 2
    assert f"forgetless: error: --model: {message}" in capsys.readouterr().err
    with pytest.raises(ForgetlessError) as info:  # the model's own load is wrapped the same way
        load_model("someone/some-model")
    assert str(info.value).startswith(f"model: {message}")


def test_a_pickle_checkpoint_is_refused_before_it_is_unpickled(tiny_model_folder, monkeypatch, capsys):
    import torch
    from safetensors.torch import load_file

    weights = tiny_model_folder / "model.safetensors"
    torch.save(load_file(weights), tiny_model_folder / "pytorch_model.bin")
    weights.unlink()
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("a pickle file was loaded"))
    message = f"{tiny_model_folder} holds only a pickle checkpoint (pytorch_model.bin), which can run code when loaded; " \
              "forgetless loads safetensors only"
    with pytest.raises(ForgetlessError) as info:
        load_model_and_tokenizer(str(tiny_model_folder))
    assert str(info.value).startswith(f"model: {message}")
    assert main(["eval", "--model", str(tiny_model_folder), "--suite", "general"]) == 2
    err = capsys.readouterr().err
    assert f"forgetless: error: --model: {message}" in err and len(err.strip().splitlines()) == 1
