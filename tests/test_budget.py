"""The time-budget guard: degradation order, projection and step choice (no torch, fake clock)."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import pytest

from kernel_lib.budget import BudgetGuard, degradation_steps
from kernel_lib.config import EnsembleConfig, InferenceConfig, load_config

MODELS = [("fold0", 1.0), ("fold1", 0.5), ("fold2", 1.0)]


def test_steps_drop_scales_then_views_then_lightest_models() -> None:
    ens = EnsembleConfig(tta=("hflip", "identity", "vflip"), scales=(1.0, 1.25, 0.75))
    steps = degradation_steps(ens, MODELS)
    assert [s.label for s in steps] == [
        "full ensemble",
        "drop scale 1.25",
        "drop scale 0.75",
        "drop view vflip",
        "drop view hflip",
        "drop model fold1",  # lowest weight
        "drop model fold2",  # tie with fold0: the last listed goes first
    ]
    assert [s.index for s in steps] == list(range(len(steps)))
    assert steps[2].ensemble.scales == (1.0,) and steps[2].ensemble.tta == ens.tta
    assert steps[4].ensemble.tta == ("identity",)
    assert steps[-1].models == ("fold0",) and steps[-1].ensemble.tta == ("identity",)
    assert steps[0].work == pytest.approx(3 * 3 * (1 + 1.5625 + 0.5625))
    assert steps[-1].work == pytest.approx(1.0)
    assert all(a.work > b.work for a, b in itertools.pairwise(steps))
    # the other sections of the ensemble are untouched
    assert all(s.ensemble.method == ens.method and s.ensemble.box_nms_iou == ens.box_nms_iou for s in steps)


def test_per_type_scales_go_first_and_count_a_third_each() -> None:
    ens = EnsembleConfig(tta=("identity", "hflip"), scales=(1.0,), type_scale=(1.5, 1.0, 1.0))
    steps = degradation_steps(ens, MODELS[:1])
    assert [s.label for s in steps] == ["full ensemble", "drop per-type scales", "drop view hflip"]
    assert steps[1].ensemble.type_scale == (1.0, 1.0, 1.0) and steps[1].ensemble.tta == ens.tta
    # 1 model x 2 views x (1 + 1.5^2 / 3): shsy5y images (a third, taken alike) run again 2.25 times the pixels
    assert steps[0].work == pytest.approx(2 * (1 + 2.25 / 3))
    assert steps[1].work == pytest.approx(2.0) and steps[2].work == pytest.approx(1.0)


def test_steps_keep_the_only_scale_and_first_view_when_identity_is_absent() -> None:
    steps = degradation_steps(EnsembleConfig(tta=("hflip", "vflip"), scales=(1.25,)), [("a", 1.0)])
    assert [s.label for s in steps] == ["full ensemble", "drop view vflip"]
    assert steps[-1].ensemble.tta == ("hflip",) and steps[-1].ensemble.scales == (1.25,)
    with pytest.raises(ValueError, match="at least one"):
        degradation_steps(EnsembleConfig(), [])
    with pytest.raises(ValueError, match="unique"):
        degradation_steps(EnsembleConfig(), [("a", 1.0), ("a", 2.0)])


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _run(guard: BudgetGuard, clock: FakeClock, ids: list[str], seconds_per_work: float) -> None:
    """Images take ``seconds_per_work`` x the current step's work each, a batch at a time."""
    for image_id in ids:
        clock.now += seconds_per_work * guard.step.work
        guard.image_done(image_id)


def test_guard_without_budget_only_records() -> None:
    steps = degradation_steps(EnsembleConfig(tta=("identity", "hflip")), MODELS)
    clock = FakeClock()
    guard = BudgetGuard(None, steps, 5, 2, start=0.0, clock=clock)
    _run(guard, clock, [f"i{k}" for k in range(5)], 1.0)
    assert [r.step for r in guard.runs] == [0] * 5
    assert [r.id for r in guard.runs] == [f"i{k}" for k in range(5)]
    assert guard.runs[0].seconds == pytest.approx(6.0)  # 3 models x 2 views
    assert guard.seconds_per_step == {0: pytest.approx(30.0)}


def test_guard_jumps_to_the_first_step_projected_to_fit(caplog: pytest.LogCaptureFixture) -> None:
    ens = EnsembleConfig(tta=("identity", "hflip"), scales=(1.0,))
    steps = degradation_steps(ens, MODELS)  # works 6 (full), 3 (no hflip), 2 (no fold1), 1 (no fold2)
    assert [s.work for s in steps] == [6, 3, 2, 1]
    clock = FakeClock()
    ids = [f"i{k}" for k in range(10)]
    # first batch of 2: 12 s; 8 left: full 48 s more (60 > 40), 3-work 24 s (36 <= 40): step 1
    guard = BudgetGuard(40.0, steps, len(ids), 2, start=0.0, clock=clock, probe=False)
    with caplog.at_level(logging.WARNING, logger="kernel_lib.budget"):
        _run(guard, clock, ids, 1.0)
    assert [r.step for r in guard.runs] == [0, 0] + [1] * 8
    assert guard.runs[-1].tta == ("identity",) and guard.runs[-1].models == ("fold0", "fold1", "fold2")
    assert clock.now == pytest.approx(36.0)
    assert guard.n_degraded == 8
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "step 1: drop view hflip" in messages[0] and "remaining 8" in messages[0]


def test_guard_steps_down_to_the_lightest_and_still_runs_every_image(caplog: pytest.LogCaptureFixture) -> None:
    steps = degradation_steps(EnsembleConfig(tta=("identity", "hflip")), MODELS)
    clock = FakeClock()
    ids = [f"i{k}" for k in range(7)]
    guard = BudgetGuard(1.0, steps, len(ids), 3, start=0.0, clock=clock, probe=False)
    with caplog.at_level(logging.WARNING, logger="kernel_lib.budget"):
        _run(guard, clock, ids, 1.0)
    assert [r.step for r in guard.runs] == [0, 0, 0, 3, 3, 3, 3]
    assert guard.runs[-1].models == ("fold0",)  # fold1 (0.5) went first, then fold2 (tie, listed last)
    messages = [r.getMessage() for r in caplog.records]
    # each step logged once when it is taken, then once that even the lightest overruns
    assert sum("step 1: drop view hflip" in m for m in messages) == 1
    assert sum("step 2: drop model fold1" in m for m in messages) == 1
    assert sum("step 3: drop model fold2" in m for m in messages) == 1
    assert sum("even at the lightest" in m for m in messages) == 1
    assert set(guard.seconds_per_step) == {0, 3}


def test_guard_decides_after_whole_batches_only() -> None:
    steps = degradation_steps(EnsembleConfig(tta=("identity", "hflip")), MODELS)
    clock = FakeClock()
    guard = BudgetGuard(1.0, steps, 8, 4, start=0.0, clock=clock, probe=False)
    for k in range(3):  # mid-batch: no switch however late
        clock.now += 100.0
        guard.image_done(f"i{k}")
        assert guard.current == 0 and guard.runs == []
    clock.now += 100.0
    guard.image_done("i3")
    assert guard.current == len(steps) - 1
    assert [r.seconds for r in guard.runs] == [100.0] * 4


def test_the_probe_decides_after_the_first_image_alone(caplog: pytest.LogCaptureFixture) -> None:
    """A first batch of 4 at the full ensemble (work 6) would take 24 s of a 20 s budget
    by itself; the probe image takes 6 s, and 9 images at 3-work (drop hflip) then fit:
    6 + 9 x 3 = 33 > 20, at 2-work 6 + 18 = 24 > 20, at 1-work 6 + 9 = 15 <= 20: step 3."""
    steps = degradation_steps(EnsembleConfig(tta=("identity", "hflip")), MODELS)
    clock = FakeClock()
    ids = [f"i{k}" for k in range(10)]
    guard = BudgetGuard(20.0, steps, len(ids), 4, start=0.0, clock=clock)
    assert guard.probing
    clock.now += 6.0
    with caplog.at_level(logging.WARNING, logger="kernel_lib.budget"):
        guard.image_done("i0")
    assert not guard.probing and guard.current == 3 and [r.seconds for r in guard.runs] == [6.0]
    # after the probe, images are recorded (and decided on) in whole batches of 4 again
    recorded = []
    for image_id in ids[1:]:
        clock.now += guard.step.work
        guard.image_done(image_id)
        recorded.append(len(guard.runs))
    assert recorded == [1, 1, 1, 5, 5, 5, 5, 9, 10]
    assert [r.step for r in guard.runs] == [0] + [3] * 9
    assert clock.now == pytest.approx(15.0)


def test_no_probe_without_a_budget_a_single_image_or_batches_of_one() -> None:
    steps = degradation_steps(EnsembleConfig(), MODELS)
    assert not BudgetGuard(None, steps, 10, 4, start=0.0).probing
    assert not BudgetGuard(5.0, steps, 1, 4, start=0.0).probing
    assert not BudgetGuard(5.0, steps, 10, 1, start=0.0).probing
    assert not BudgetGuard(5.0, steps, 10, 4, start=0.0, probe=False).probing
    assert BudgetGuard(5.0, steps, 10, 4, start=0.0).probing


def test_time_budget_in_config_json(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"inference": {"time_budget_s": 30000}}))
    assert load_config(path).inference.time_budget_s == 30000
    assert InferenceConfig().time_budget_s is None
    for bad in (0, -5.0):
        with pytest.raises(ValueError, match="time_budget_s: expected a positive number of seconds"):
            InferenceConfig(time_budget_s=bad)
    for bad in ("1h", True):  # not numbers
        with pytest.raises(ValueError, match="time_budget_s: expected"):
            InferenceConfig(time_budget_s=bad)  # type: ignore[arg-type]
    path.write_text(json.dumps({"inference": {"time_budget_s": -1}}))
    with pytest.raises(ValueError, match=r"inference\.time_budget_s"):
        load_config(path)
