"""benchmarks/revert_groups.py: its tensor groups and per-tensor moves, against hand-computed values."""

import math

import pytest
import torch

from .conftest import load_script


def _script():
    return load_script("benchmarks", "revert_groups")


def test_groups_split_by_kind_and_by_depth_third():
    parts = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
             "mlp.up_proj", "mlp.down_proj", "input_layernorm")
    names = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"] + [
        f"model.layers.{i}.{part}.weight" for i in range(7) for part in parts]
    groups = _script().groups(names)
    assert groups["embeddings and head"] == ["model.embed_tokens.weight", "lm_head.weight"]  # an untied head too
    assert len(groups["norms"]) == 8
    assert [len(groups[g]) for g in ("attention q,k", "attention v,o", "mlp gate,up", "mlp down")] == [14, 14, 14, 7]
    assert "model.layers.3.self_attn.k_proj.weight" in groups["attention q,k"]
    assert "model.layers.3.mlp.gate_proj.weight" in groups["mlp gate,up"]
    # Seven layers in thirds of 2, 2 and 3 (floor of i * 7 / 3); a layer's eight tensors in its third only.
    assert [len(groups[g]) for g in ("layers 0-1", "layers 2-3", "layers 4-6")] == [16, 16, 24]
    # Two layers: no thirds.
    assert not [g for g in _script().groups(names[:3] + names[3:19]) if g.startswith("layers")]


def test_moves_by_hand():
    start = {"w": torch.tensor([3.0, 4.0])}  # norm 5
    before = {"w": torch.tensor([4.0, 4.0])}  # moved (1, 0) from the start
    end = {"w": torch.tensor([3.0, 5.0])}  # moved (0, 1): orthogonal to the first move, 1.414 from `before`
    (row,) = _script().moves(start, before, end, ["w"])
    assert (row["before"], row["end"]) == (pytest.approx(0.2), pytest.approx(0.2))
    assert row["step"] == pytest.approx(2 ** 0.5 / 5) and row["cosine"] == pytest.approx(0.0, abs=1e-7)
    (row,) = _script().moves(start, before, {"w": torch.tensor([5.0, 4.0])}, ["w"])  # twice as far, same way
    assert row["step"] == pytest.approx(1 / 5) and row["cosine"] == pytest.approx(1.0)
    (row,) = _script().moves(start, start, end, ["w"])  # no move before the last task: no cosine
    assert math.isnan(row["cosine"]) and row["step"] == pytest.approx(0.2)
