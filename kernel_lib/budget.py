"""The inference time-budget guard: project the finish time, degrade the ensemble in order.

A code competition re-runs the notebook on hidden images within a fixed time; a heavy
ensemble that overruns scores nothing. With ``InferenceConfig.time_budget_s`` set,
:func:`kernel_lib.pipeline.run_inference` asks a :class:`BudgetGuard` after each batch
whether the remaining images fit:

    projected finish = now + remaining images x seconds per image (measured since the
                       current ensemble started, its start-up included) x work ratio
                       + post-processing still queued

With a budget, the first image runs alone (a probe): a whole first batch of a heavy
ensemble can by itself outlast a short budget, and the guard can only act between
batches. When the projection is later than the deadline (the first model call +
``time_budget_s``), the
remaining images run the first lighter ensemble of :func:`degradation_steps` that is
projected to fit, or the lightest one when none is. The order, one removal per step:

1. the per-type scales' second pass (``EnsembleConfig.type_scale`` back to 1), when set;
2. extra scales, the largest first (the base scale, 1.0 when listed, stays);
3. flip views, the last listed first ("identity", else the first view, stays);
4. models, the lowest weight first (ties: the last listed first; one model stays).

A step's work is models x views x sum of squared scales (pixels through the backbone),
plus, with per-type scales, the second pass's work for each type whose factor is not 1
weighted by 1/3 (each type taken as equally likely), which scales the measured seconds
per image to the lighter ensembles. The guard never
steps back up. Every image still gets predictions: at the lightest step one model runs
one view, even when that still overruns. Each step is logged (warning) and each image's
step is recorded (:class:`ImageRun`).

Pure Python: no torch here.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kernel_lib.config import EnsembleConfig

logger = logging.getLogger("kernel_lib.budget")

__all__ = ["BudgetGuard", "DegradationStep", "ImageRun", "degradation_steps"]


@dataclass(frozen=True)
class DegradationStep:
    """One ensemble the guard may run.

    Attributes:
        index: 0 for the full ensemble, k for the k-th degradation.
        label: what this step removed ("full ensemble", "drop scale 1.25",
            "drop view hflip", "drop model fold4").
        ensemble: the ensemble config of this step (scales and views reduced).
        models: names of the models that run, in the original order.
        work: relative cost per image: models x views x sum of squared scales.
    """

    index: int
    label: str
    ensemble: EnsembleConfig
    models: tuple[str, ...]
    work: float


@dataclass(frozen=True)
class ImageRun:
    """What ran for one image.

    Attributes:
        id: the image id.
        step: index of its :class:`DegradationStep` (0: the full ensemble).
        label: that step's label.
        models: model names that ran on it.
        tta: views that ran.
        scales: scales that ran.
        seconds: wall seconds of its batch divided by the batch's images.
    """

    id: str
    step: int
    label: str
    models: tuple[str, ...]
    tta: tuple[str, ...]
    scales: tuple[float, ...]
    seconds: float


def _work(n_models: int, ensemble: EnsembleConfig) -> float:
    pixels = sum(s * s for s in ensemble.scales)
    again = sum(f * f * pixels for f in ensemble.type_scale if f != 1.0) / len(ensemble.type_scale)
    return n_models * len(ensemble.tta) * (pixels + again)


def degradation_steps(ensemble: EnsembleConfig, models: Sequence[tuple[str, float]]) -> list[DegradationStep]:
    """The full ensemble, then one removal per step in the guard's order (module docstring).

    Args:
        ensemble: the configured ensemble.
        models: (name, weight) of each loaded model, in order.

    Raises:
        ValueError: no models, or a name given twice.
    """
    names = [name for name, _ in models]
    if not names:
        raise ValueError("degradation_steps: expected at least one (name, weight) model, got none")
    if len(set(names)) != len(names):
        raise ValueError(f"degradation_steps: expected unique model names, got {names}")
    steps = [DegradationStep(0, "full ensemble", ensemble, tuple(names), _work(len(names), ensemble))]

    def add(label: str, ens: EnsembleConfig, kept: Sequence[str]) -> None:
        steps.append(DegradationStep(len(steps), label, ens, tuple(kept), _work(len(kept), ens)))

    if ensemble.type_scaled:
        add("drop per-type scales", dataclasses.replace(ensemble, type_scale=(1.0, 1.0, 1.0)), names)

    base = 1.0 if 1.0 in ensemble.scales else ensemble.scales[0]
    scales = list(ensemble.scales)
    for extra in sorted((s for s in ensemble.scales if s != base), reverse=True):
        scales.remove(extra)
        add(f"drop scale {extra:g}", dataclasses.replace(steps[-1].ensemble, scales=tuple(scales)), names)

    kept_view = "identity" if "identity" in ensemble.tta else ensemble.tta[0]
    views = list(ensemble.tta)
    for view in reversed(ensemble.tta):
        if view != kept_view:
            views.remove(view)
            add(f"drop view {view}", dataclasses.replace(steps[-1].ensemble, tta=tuple(views)), names)

    kept = list(names)
    by_weight = sorted(range(len(models)), key=lambda k: (models[k][1], -k))
    for k in by_weight[:-1]:
        kept.remove(names[k])
        add(f"drop model {names[k]}", steps[-1].ensemble, kept)
    return steps


class BudgetGuard:
    """Chooses the ensemble step of the remaining images from the measured speed.

    Args:
        budget_s: seconds from ``start`` to the end; None: never degrade (the guard only
            records what ran).
        steps: from :func:`degradation_steps`.
        n_images: images to predict.
        batch_size: images per model batch (the guard decides after each batch).
        start: the clock's value at the first model call.
        clock: the clock (``time.perf_counter``; tests pass a fake one).
        probe: with a budget, run the first image alone and decide after it (see
            :attr:`probing`); False: the first decision comes after a whole batch.
    """

    def __init__(
        self,
        budget_s: float | None,
        steps: Sequence[DegradationStep],
        n_images: int,
        batch_size: int,
        start: float,
        clock: Callable[[], float] = time.perf_counter,
        probe: bool = True,
    ) -> None:
        if not steps:
            raise ValueError("BudgetGuard: expected at least one step (the full ensemble), got none")
        if batch_size < 1:
            raise ValueError(f"BudgetGuard: batch_size must be >= 1, got {batch_size}")
        self.budget_s = budget_s
        self.steps = list(steps)
        self.n_images = n_images
        self.batch_size = batch_size
        self.clock = clock
        self.start = start
        self.current = 0
        self.runs: list[ImageRun] = []
        self.seconds_per_step: dict[int, float] = {}
        self._step_start = start
        self._at_step = 0  # images done at the current step
        self._batch_start = start
        self._batch: list[str] = []
        self._warned_lightest = False
        self._probe = probe and budget_s is not None and batch_size > 1 and n_images > 1

    @property
    def step(self) -> DegradationStep:
        return self.steps[self.current]

    @property
    def probing(self) -> bool:
        """True while the first image, run alone, is still to come (a budget is set, the
        batches hold more than one image, and there is more than one image): the caller
        sends that image as a batch of its own, then the rest in full batches."""
        return self._probe and not self.runs and not self._batch

    @property
    def n_degraded(self) -> int:
        """Images that ran a lighter ensemble than the full one."""
        return sum(run.step > 0 for run in self.runs)

    def image_done(self, image_id: str, tail_s: float = 0.0) -> None:
        """Record one image of the current step; after a whole batch (or the last image),
        time it and, with a budget, switch steps when the projection overruns.

        Args:
            image_id: the image that came out of the models.
            tail_s: seconds of work still queued behind the models (post-processing).
        """
        probe_batch = self._probe and not self.runs
        self._batch.append(image_id)
        self._at_step += 1
        done = len(self.runs) + len(self._batch)
        if len(self._batch) < (1 if probe_batch else self.batch_size) and done < self.n_images:
            return
        now = self.clock()
        self._close_batch(now)
        remaining = self.n_images - done
        if self.budget_s is not None and remaining > 0:
            self._choose_step(now, remaining, tail_s)

    def _close_batch(self, now: float) -> None:
        step = self.step
        per_image = (now - self._batch_start) / len(self._batch)
        ens = step.ensemble
        self.runs.extend(
            ImageRun(i, step.index, step.label, step.models, ens.tta, ens.scales, per_image) for i in self._batch
        )
        self.seconds_per_step[step.index] = self.seconds_per_step.get(step.index, 0.0) + (now - self._batch_start)
        self._batch = []
        self._batch_start = now

    def projected_finish(self, now: float, remaining: int, tail_s: float, index: int) -> float:
        """Seconds from ``start`` at which the remaining images would be done at step ``index``."""
        per_image = (now - self._step_start) / max(self._at_step, 1)
        ratio = self.steps[index].work / self.step.work
        return now - self.start + remaining * per_image * ratio + tail_s

    def _choose_step(self, now: float, remaining: int, tail_s: float) -> None:
        assert self.budget_s is not None
        budget = self.budget_s
        projected = self.projected_finish(now, remaining, tail_s, self.current)
        if projected <= budget:
            return
        last = len(self.steps) - 1
        if self.current == last:
            if not self._warned_lightest:
                logger.warning(
                    "time budget %.0f s: projected finish %.0f s even at the lightest ensemble (%s); "
                    "running it on the remaining %d image(s)",
                    budget, projected, self._describe(self.step), remaining,
                )  # fmt: skip
                self._warned_lightest = True
            return
        later = range(self.current + 1, len(self.steps))
        target = next((k for k in later if self.projected_finish(now, remaining, tail_s, k) <= budget), last)
        for k in range(self.current + 1, target + 1):
            logger.warning(
                "time budget %.0f s: projected finish %.0f s at step %d; step %d: %s (%s) "
                "for the remaining %d image(s)",
                budget, projected, self.current, k, self.steps[k].label, self._describe(self.steps[k]), remaining,
            )  # fmt: skip
        self.current = target
        self._step_start = now
        self._at_step = 0

    @staticmethod
    def _describe(step: DegradationStep) -> str:
        ens = step.ensemble
        scales = ",".join(f"{s:g}" for s in ens.scales)
        return f"{len(step.models)} model(s) {','.join(step.models)}; views {','.join(ens.tta)}; scales {scales}"
