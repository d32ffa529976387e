"""Fingerprint a 2-task run per strategy and adapter on a tiny model: a hash of the final weights and the strategy logs.

Run it on two commits and compare the JSON lines: a refactor that claims to change no result must print the
same fingerprints (bit-identical weights, identical logs). With an older checkout in OLD:

    PYTHONPATH=OLD/src .venv/bin/python benchmarks/tiny_fingerprint.py > old.json
    .venv/bin/python benchmarks/tiny_fingerprint.py > new.json

The package imported is whichever `forgetless` comes first on the path; the tiny model and task files are
this checkout's test fixtures (tests/conftest.py), so both runs train the same thing.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.conftest

from tests.conftest import make_tiny_lm, tiny_config, write_jsonl  # noqa: E402

from forgetless.adapters import base_model_of  # noqa: E402
from forgetless.models import load_tokenizer  # noqa: E402
from forgetless.training import ContinualRun  # noqa: E402

# ewc at lam 100 and l2sp at lam 0.01, their defaults until 2026-12-02, so that fingerprints compare with older commits.
SPECS = [{"name": "ewc", "lam": 100.0}, "wise", "fip", "lwf", {"name": "l2sp", "lam": 0.01}, "fapm", "layerwise",
         {"name": "stm", "mode": "percentile", "percentile": 0.2}]
LORA = {"adapter": "lora", "lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]}}


def main() -> None:
    tokenizer = load_tokenizer("default")
    tmp = Path(tempfile.mkdtemp())
    chat = [{"prompt": f"Ticket {i}: my router is broken", "response": "Please restart the router and wait."} for i in range(24)]
    text = [{"text": f"We the people of the union number {i} ordain this constitution."} for i in range(24)]
    files = {"chat": write_jsonl(tmp / "chat.jsonl", chat), "text": write_jsonl(tmp / "text.jsonl", text)}
    train = {"steps": 3, "batch_size": 2, "lr": 1e-2, "max_length": 48, "seed": 0}
    fingerprints = {}
    for spec in SPECS:
        for mode, adapter in (("full", {}), ("lora-merge", LORA)):
            model = make_tiny_lm(len(tokenizer))
            model.config.pad_token_id = tokenizer.pad_token_id
            run = ContinualRun(tiny_config(files, strategies=[spec], train=train, **adapter), tmp / mode, model=model,
                               tokenizer=tokenizer, progress=False)
            results = run.execute()
            training = results["training"] if isinstance(results, dict) else results.training  # before/after typed results
            digest = hashlib.sha256()
            for name, parameter in sorted(base_model_of(run.model).named_parameters()):
                digest.update(name.encode())
                digest.update(parameter.detach().float().numpy().tobytes())
            # timings, and where a resumed task began (added 2026-12-07; 0 in every run here): not the run's numbers
            logs = [{k: v for k, v in task.items() if not k.endswith("seconds") and k != "resumed_at_step"} for task in training]
            name = spec if isinstance(spec, str) else spec["name"]
            fingerprints[f"{name}/{mode}"] = {"weights_sha256": digest.hexdigest()[:16], "logs": logs}
    print(json.dumps(fingerprints, sort_keys=True, default=str))


if __name__ == "__main__":
    main()
