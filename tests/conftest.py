"""Shared fixtures: tiny randomly initialised causal LMs that use the real default tokenizer.

The tokenizer comes from the bundled default model (converted once into FORGETLESS_HOME), so tests
exercise the real chat template and vocabulary while the network stays tiny and fast.
"""

from __future__ import annotations

import pytest
import torch

from forgetless.models import load_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer("default")


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
