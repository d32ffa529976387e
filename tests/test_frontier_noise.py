"""The paired bootstrap behind the s.e. of a strategy's distance from naive's frontier."""

import numpy as np
import pytest

from forgetless.frontier import distances, pareto
from forgetless.frontier_noise import (
    RunItems,
    frontier_distance_replicates,
    frontier_distance_se,
    replicate_points,
    resampled_scores,
)
from forgetless.metrics import ScoreSamples, general_change


def mean(values) -> dict[str, ScoreSamples]:
    return {"t": ScoreSamples("mean", [float(v) for v in values])}


@pytest.fixture()
def naive() -> RunItems:
    """A naive run that gained about 0.3 in-domain and lost about 0.1 general score, on 200 noisy items each."""
    rng = np.random.default_rng(1)
    general = rng.uniform(0.3, 1.0, 200)
    held_out = rng.uniform(0.0, 0.6, 200)
    return RunItems(mean(general), mean(general - rng.uniform(0.0, 0.2, 200)), mean(held_out),
                    mean(held_out + rng.uniform(0.1, 0.5, 200)))


def test_resampled_scores_score_each_resample_as_the_task_does():
    ppl = ScoreSamples("perplexity", [3.0, 10.0, 0.0, 7.5], tokens=[2, 5, 0, 4], vocab_size=50)
    acc = ScoreSamples("mean", [1.0, 0.0, 1.0, 1.0])
    index = np.array([[0, 1, 2, 3], [1, 1, 3, 2]])
    picked = ScoreSamples("perplexity", [10.0, 10.0, 7.5, 0.0], tokens=[5, 5, 4, 0], vocab_size=50)
    assert resampled_scores(ppl, index) == pytest.approx([ppl.score(), picked.score()])
    assert resampled_scores(acc, index) == pytest.approx([0.75, 0.5])


def test_one_runs_replicates_have_the_spread_of_its_own_paired_bootstrap(naive):
    points = replicate_points([naive], n_boot=4000)
    change = general_change(naive.general_before, naive.general_after, n_boot=4000)
    assert points[0, :, 1].mean() == pytest.approx(change["delta_abs"], abs=0.002)
    assert points[0, :, 1].std(ddof=1) == pytest.approx(change["delta_se"], rel=0.1)


def test_the_distance_is_paired_across_runs(naive):
    # The strategy's items are naive's plus exactly 0.05 of in-domain score each: the same general change, so it sits
    # 0.05 right of naive's point in every resample. Each run's own gain is noisy; their distance is not.
    strategy = RunItems(naive.general_before, naive.general_after, naive.held_out_before,
                        mean(np.asarray(naive.held_out_after["t"].values) + 0.05))
    points = replicate_points([naive, strategy], n_boot=500)
    assert points[0, :, 0].std(ddof=1) > 0.005
    replicates = frontier_distance_replicates([naive], [strategy], n_boot=500)
    assert np.allclose(replicates[0, :, 1], 0.05)
    assert np.isnan(replicates[0, :, 0]).all()  # more gain than any naive point: no change at equal gain
    saved_se, added_se = frontier_distance_se([naive], [strategy], n_boot=500)[0]
    assert saved_se is None and added_se == pytest.approx(0.0, abs=1e-12)


def test_a_distance_undefined_in_some_resamples_gets_no_se(naive):
    # A strategy whose gain is naive's plus noise of mean 0.001: in some resamples it out-gains naive, in others not.
    rng = np.random.default_rng(2)
    noisy = np.asarray(naive.held_out_after["t"].values) + rng.normal(0.001, 0.05, 200)
    general_after = mean(np.asarray(naive.general_after["t"].values) + 0.02)
    strategy = RunItems(naive.general_before, general_after, naive.held_out_before, mean(noisy))
    replicates = frontier_distance_replicates([naive], [strategy], n_boot=300)
    assert 0 < np.isnan(replicates[0, :, 0]).sum() < 300
    saved_se, added_se = frontier_distance_se([naive], [strategy], n_boot=300)[0]
    assert saved_se is None
    assert added_se == pytest.approx(np.std(replicates[0, :, 1], ddof=1))
    # The first replicate's distances, rebuilt by hand from the rescored points.
    points = replicate_points([naive, strategy], n_boot=300)
    front = pareto([tuple(points[0, 0])] + [(0.0, 0.0)])
    saved, added = distances(front, tuple(points[1, 0]))
    assert np.isnan(replicates[0, 0, 0]) if saved is None else replicates[0, 0, 0] == pytest.approx(saved)
    assert replicates[0, 0, 1] == pytest.approx(added)


def test_runs_scored_on_other_items_are_refused(naive):
    short = RunItems(naive.general_before, naive.general_after, mean([0.1] * 10), mean([0.2] * 10))
    with pytest.raises(ValueError, match="held_out task 't' was not scored on the same items"):
        replicate_points([naive, short])
