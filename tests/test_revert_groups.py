"""benchmarks/revert_groups.py: its tensor groups and per-tensor moves, against hand-computed values."""

import pytest
import torch

from .conftest import load_script


def _script():
    return load_script("benchmarks", "revert_groups")


def test_groups_split_by_kind_and_by_depth_third():
    names = ["model.embed_tokens.weight", "model.norm.weight"] + [
        f"model.layers.{i}.{part}.weight" for i in range(6)
        for part in ("self_attn.q_proj", "self_attn.o_proj", "mlp.up_proj", "mlp.down_proj", "input_layernorm")]
    groups = _script().groups(names)
    assert groups["embeddings"] == ["model.embed_tokens.weight"]
    assert len(groups["norms"]) == 7 and len(groups["attention q,k"]) == 6 and len(groups["attention v,o"]) == 6
    assert len(groups["mlp gate,up"]) == 6 and len(groups["mlp down"]) == 6
    # Six layers in thirds of two; a layer's five tensors in its third only, the embeddings in none.
    assert [len(groups[g]) for g in ("layers 0-1", "layers 2-3", "layers 4-5")] == [10, 10, 10]
    assert "model.layers.2.mlp.down_proj.weight" in groups["layers 2-3"]


def test_moves_by_hand():
    start = {"w": torch.tensor([3.0, 4.0])}  # norm 5
    before = {"w": torch.tensor([4.0, 4.0])}  # moved (1, 0) from the start
    end = {"w": torch.tensor([3.0, 5.0])}  # moved (0, 1): orthogonal to the first move, 1.414 from `before`
    (name, step, cos), = _script().moves(start, before, end, ["w"])
    assert name == "w" and step == pytest.approx(2 ** 0.5 / 5) and cos == pytest.approx(0.0)
    end = {"w": torch.tensor([5.0, 4.0])}  # the same direction, twice as far
    (_, step, cos), = _script().moves(start, before, end, ["w"])
    assert step == pytest.approx(1 / 5) and cos == pytest.approx(1.0)
