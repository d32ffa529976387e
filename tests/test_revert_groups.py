"""benchmarks/revert_groups.py: its tensor groups, per-tensor moves and put-back scores, against hand-computed values."""

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
    # A --match pattern: the v and o projections of the first two layers only (not layers 10 or 11), a group of its own.
    pattern = r"layers\.[0-1]\.self_attn\.(v|o)_proj"
    deeper = [f"model.layers.{i}.self_attn.{p}_proj.weight" for i in (10, 11) for p in "vo"]
    assert _script().groups(names + deeper, (pattern,))[f"matching {pattern}"] == [
        f"model.layers.{i}.self_attn.{p}_proj.weight" for i in (0, 1) for p in "vo"]
    with pytest.raises(SystemExit, match="not a regular expression"):
        _script().check_patterns(["layers.(0"], names)
    with pytest.raises(SystemExit, match="no tensor of the model"):
        _script().check_patterns([pattern, r"layers\.7\."], names)  # seven layers: 0 to 6
    _script().check_patterns([pattern], names)
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


def test_reverted_scores_put_back_one_group_at_a_time():
    from forgetless.metrics import ScoreSamples

    names = ["model.embed_tokens.weight"] + [f"model.layers.{i}.self_attn.v_proj.weight" for i in range(3)]
    before = {k: torch.zeros(2) for k in names}
    end = {k: torch.ones(2) for k in names}
    seen = []

    def samples_of(state):  # ten items; each tensor still at its end value gets one more of them right
        seen.append({k for k in names if torch.equal(state[k], before[k])})
        right = sum(torch.equal(state[k], end[k]) for k in names)
        return ScoreSamples("mean", [1.0] * right + [0.0] * (10 - right))

    at_end = ScoreSamples("mean", [1.0] * 4 + [0.0] * 6)
    rows = {group: (members, row) for group, members, row in
            _script().reverted_scores(samples_of, at_end, before, end, names)}
    # The v projections put back: three tensors no longer at their end values, so 0.1 right against 0.4 at the end.
    members, row = rows["attention v,o"]
    assert sorted(members) == names[1:] and seen[list(rows).index("attention v,o")] == set(names[1:])
    assert row["score"] == pytest.approx(0.1) and row["change"] == pytest.approx(-0.3)
    # Three items flip 1 -> 0 together: a resample of n = 10 items holds Binomial(10, 0.3) of them, so the change's
    # s.e. is sqrt(0.3 * 0.7 / 10) = 0.145 (1000 resamples: within 10 %).
    assert row["se"] == pytest.approx((0.3 * 0.7 / 10) ** 0.5, rel=0.1)
    assert rows["embeddings and head"][1]["change"] == pytest.approx(-0.1)
    assert rows["norms"][1]["change"] == pytest.approx(0.0) and rows["norms"][1]["se"] == 0.0  # empty group
    assert rows["layers 0-0"][1]["change"] == pytest.approx(-0.1)  # one layer per third
