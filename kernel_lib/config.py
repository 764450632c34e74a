"""One typed configuration for every threshold of the pipeline.

All numbers that change what a submission contains live here, with defaults and the
range each accepts. Functions take the config (or one of its parts) as an argument;
nothing reads a global. A config round-trips through JSON (``Config.to_json`` /
``load_config``) so that ``tune`` can write one and the notebook can read it.

Cell types are always indexed in the order of :data:`CELL_TYPES`, which is also the
class index order of the detectron2 models (class 0 = shsy5y, 1 = astro, 2 = cort).
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

CELL_TYPES: tuple[str, str, str] = ("shsy5y", "astro", "cort")
"""Cell types in class-index order (the models' class ids)."""

CELL_CLASS = "cell"
"""The one class of class-agnostic training data (``train --coco-classes cell``: pretraining)."""

COCO_CLASSES: tuple[str, ...] = ("sartorius", "cell")
"""How COCO instances map to a model's classes (``train --coco-classes``): the three
:data:`CELL_TYPES`, or one class-agnostic :data:`CELL_CLASS`."""

IMAGE_HEIGHT = 520
IMAGE_WIDTH = 704
IMAGE_SHAPE: tuple[int, int] = (IMAGE_HEIGHT, IMAGE_WIDTH)
"""(height, width) of every competition image."""

NORMALIZATIONS: tuple[str, ...] = ("none", "per_image")
"""Input normalisations a fold can be trained with (``train --normalization``, meta.json
``input_normalization``): ``none`` (the pixels as read) or ``per_image``
(:func:`kernel_lib.images.normalize_image`)."""

IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
"""The metric's IoU thresholds 0.50, 0.55, ..., 0.95."""

PerType = tuple[float, float, float]


def _check_per_type(name: str, values: tuple[float, ...], lo: float, hi: float) -> None:
    if len(values) != len(CELL_TYPES):
        raise ValueError(
            f"{name}: expected {len(CELL_TYPES)} values (one per cell type "
            f"{', '.join(CELL_TYPES)}), got {len(values)}: {values!r}"
        )
    for cell_type, value in zip(CELL_TYPES, values):
        if not lo <= value <= hi:
            raise ValueError(f"{name}[{cell_type}]: expected a value in [{lo}, {hi}], got {value!r}")


def _check_range(name: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise ValueError(f"{name}: expected a value in [{lo}, {hi}], got {value!r}")


_HINTS: dict[type, dict[str, Any]] = {}

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 4, 80, 80


def _short_repr(value: Any) -> str:
    """``repr(value)`` for messages, shortened: a deeply nested or long value (a JSON
    list nested 900 deep) is cut, never a RecursionError or a page of brackets."""
    return _REPR.repr(value)


def _describe(hint: Any) -> str:
    """A type annotation in words, for messages."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return "true or false (a boolean)"
    if hint is int:
        return "a whole number (an integer, not a boolean or a decimal)"
    if hint is float:
        return "a finite number"
    if hint is str:
        return "a string"
    if hint is type(None):
        return "null (None)"
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_plural(args[0])}"
        return f"a list of {len(args)} {_plural(args[0])}" if len(set(args)) == 1 else f"a list {list(args)}"
    return getattr(hint, "__name__", str(hint))


def _plural(hint: Any) -> str:
    return {bool: "booleans", int: "whole numbers", float: "finite numbers", str: "strings"}.get(hint, _describe(hint))


def _typed(name: str, value: Any, hint: Any) -> Any:
    """``value`` checked against the annotation ``hint`` (numpy scalars become Python
    numbers, lists tuples); raises ValueError naming ``name``, the value and the type."""

    def wrong() -> ValueError:
        return ValueError(f"{name}: expected {_describe(hint)}, got {_short_repr(value)} ({type(value).__name__})")

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise wrong()
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise wrong()
        return value if type(value) is int else int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise wrong()
        if type(value) in (int, float):
            return value
        return int(value) if isinstance(value, numbers.Integral) else float(value)
    if hint is str:
        if not isinstance(value, str):
            raise wrong()
        return value
    if hint is type(None):
        if value is not None:
            raise wrong()
        return value
    if origin is Literal:
        if not any(type(value) is type(a) and value == a for a in args):
            raise wrong()
        return value
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _typed(name, value, option)
            except ValueError:
                continue
        raise wrong()
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            raise wrong()
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if not items:
            return tuple(value)
        # a fixed-length tuple of the wrong length is left to the range checks' message
        return tuple(_typed(f"{name}[{k}]", v, items[min(k, len(items) - 1)]) for k, v in enumerate(value))
    if isinstance(hint, type):
        if not isinstance(value, hint):
            raise wrong()
        return value
    return value  # an annotation this checker does not know: accepted as it is


def _check_types(obj: Any) -> None:
    """Check every field of the dataclass ``obj`` against its annotation: bool is bool,
    int is int (not bool, not float), floats are finite numbers, strings are strings,
    ``X | None`` allows None, tuples hold the annotated items; values are normalised in
    place (a list becomes a tuple, a numpy scalar a Python number).

    Raises:
        ValueError: ``<field>: expected <type>, got <value> (<its type>)``.
    """
    klass = type(obj)
    hints = _HINTS.get(klass)
    if hints is None:
        hints = _HINTS[klass] = typing.get_type_hints(klass)
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        checked = _typed(f.name, value, hints[f.name])
        if checked is not value:
            object.__setattr__(obj, f.name, checked)


@dataclass(frozen=True)
class PostprocessConfig:
    """Per-cell-type post-processing of one image's instances.

    Defaults are the public baseline's (Slawek Biel's detectron2 notebook): score
    thresholds (0.15, 0.35, 0.55) and minimum areas (75, 150, 75) pixels for
    (shsy5y, astro, cort); overlap removal keeps any non-empty remainder
    (``min_kept_fraction`` 0), as that notebook does.

    Attributes:
        score_threshold: per cell type, keep instances with score >= this; range [0, 1].
        min_area: per cell type, drop masks with fewer pixels (before and after overlap
            removal); range [0, 520*704].
        min_kept_fraction: per cell type, after overlap removal a mask is dropped when
            the pixels it keeps are fewer than this fraction of its own area; range [0, 1].
            0 keeps any remainder; 0.8 drops a mask with more than 20% already taken.
        mask_threshold: soft-mask probability at which a pixel belongs to the mask;
            range (0, 1).
        rescore: per cell type, the exponent ``a`` of the instance's mask confidence in
            its score before the thresholds: score * confidence ** a, the confidence
            being the mean mask probability inside the mask
            (:func:`kernel_lib.soft.mask_confidence`; 1st place's rescoring is a = 1);
            range [0, 4]; 0 (default) leaves the score as the models gave it.
    """

    score_threshold: PerType = (0.15, 0.35, 0.55)
    min_area: PerType = (75, 150, 75)
    min_kept_fraction: PerType = (0.0, 0.0, 0.0)
    mask_threshold: float = 0.5
    rescore: PerType = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        _check_types(self)
        _check_per_type("score_threshold", self.score_threshold, 0.0, 1.0)
        _check_per_type("min_area", self.min_area, 0, IMAGE_HEIGHT * IMAGE_WIDTH)
        _check_per_type("min_kept_fraction", self.min_kept_fraction, 0.0, 1.0)
        _check_per_type("rescore", self.rescore, 0.0, 4.0)
        if not 0.0 < self.mask_threshold < 1.0:
            raise ValueError(f"mask_threshold: expected a value in (0, 1), got {self.mask_threshold!r}")


EnsembleMethod = Literal["roi", "wmf", "mask_nms", "vote", "nmw"]
ENSEMBLE_METHODS: tuple[str, ...] = ("roi", "wmf", "mask_nms", "vote", "nmw")
"""``EnsembleConfig.method`` values: "roi" fuses inside the models' RoI heads
(``kernel_lib.model``); the others fuse finished instances (``kernel_lib.ensemble.FUSION_METHODS``)."""
TTA_NAMES: tuple[str, ...] = ("identity", "hflip", "vflip", "hvflip")


@dataclass(frozen=True)
class EnsembleConfig:
    """How K fold models and TTA views become one set of instances per image.

    Attributes:
        method: "roi" (union of every view's boxes, box NMS, every model's mask head on
            the merged boxes, soft masks averaged), "wmf" (instance-level weighted mask
            fusion of clusters matched by mask IoU), "mask_nms" (the simple baseline),
            "vote" (a cluster's best instance, kept as it is, when enough models agree on
            it: the top-1% seed's IoU screening) or "nmw" (non-maximum weighted, as
            ensemble_boxes defines it: box clusters, box and mask averaged with weights
            score x IoU with the best box, the best's score and class).
        tta: views to run, names from :data:`TTA_NAMES`; "identity" is the plain image.
        scales: extra rescale factors (1.0 = none), each in [0.5, 3.0].
        type_scale: per cell type, a factor on every scale of ``scales`` for the images
            of that type, in [0.5, 3.0] (each scaled scale too): an image's type is voted
            from a pass at ``scales`` (:func:`kernel_lib.postprocess.image_cell_type` on
            the fused instances); when its type's factor is not 1 the image runs again at
            the scaled scales and that pass's instances replace the first's. (1, 1, 1)
            runs one pass.
        box_nms_iou: IoU above which merged boxes are suppressed ("roi"); range (0, 1].
        cluster_iou: mask IoU above which two instances join a cluster ("wmf", "vote"),
            the lower-scored one is suppressed ("mask_nms"), or box IoU above which a box
            joins a cluster ("nmw"); range (0, 1].
        min_votes: "wmf": a cluster needs instances from at least this fraction of the
            views (models x TTA) to be kept; its score is multiplied by the fraction of
            views that agree (capped at 1). "vote": the fraction of the models (by
            weight) with an instance in the cluster, in any view; range [0, 1].
        candidate_score: detections below this score are not passed on by the models
            (detectron2 SCORE_THRESH_TEST); range [0, 1]. Keep it at or below the lowest
            per-type score threshold.
        detections_per_image: most detections a model returns per image (and the most
            instances the ensemble keeps); range [1, 5000].
    """

    method: EnsembleMethod = "roi"
    tta: tuple[str, ...] = ("identity", "hflip")
    scales: tuple[float, ...] = (1.0,)
    type_scale: PerType = (1.0, 1.0, 1.0)
    box_nms_iou: float = 0.7
    cluster_iou: float = 0.5
    min_votes: float = 0.5
    candidate_score: float = 0.05
    detections_per_image: int = 1000

    def __post_init__(self) -> None:
        _check_types(self)
        if self.method not in ENSEMBLE_METHODS:
            raise ValueError(f"method: expected one of {', '.join(ENSEMBLE_METHODS)}, got {self.method!r}")
        if not self.tta:
            raise ValueError("tta: expected at least one view, e.g. ('identity',), got none")
        for name in self.tta:
            if name not in TTA_NAMES:
                raise ValueError(f"tta: expected names from {TTA_NAMES}, got {name!r}")
        if not self.scales:
            raise ValueError("scales: expected at least one scale, e.g. (1.0,), got none")
        for scale in self.scales:
            _check_range("scales", scale, 0.5, 3.0)
        _check_per_type("type_scale", self.type_scale, 0.5, 3.0)
        for cell_type, factor in zip(CELL_TYPES, self.type_scale):
            scaled = [round(factor * s, 6) for s in self.scales]
            if not all(0.5 <= s <= 3.0 for s in scaled):
                raise ValueError(
                    f"type_scale[{cell_type}]: {factor!r} x scales {list(self.scales)} gives {scaled}; expected "
                    "every scaled scale in [0.5, 3.0]"
                )
        for name in ("tta", "scales"):
            values = getattr(self, name)
            twice = [v for k, v in enumerate(values) if v in values[:k]]
            if twice:
                raise ValueError(
                    f"{name}: {twice[0]!r} is listed more than once in {list(values)}; each runs once, so list it once"
                )
        for name in ("box_nms_iou", "cluster_iou"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name}: expected a value in (0, 1], got {value!r}")
        _check_range("min_votes", self.min_votes, 0.0, 1.0)
        _check_range("candidate_score", self.candidate_score, 0.0, 1.0)
        _check_range("detections_per_image", self.detections_per_image, 1, 5000)

    @property
    def type_scaled(self) -> bool:
        """Whether some cell type's ``type_scale`` factor is not 1 (a second pass runs)."""
        return any(f != 1.0 for f in self.type_scale)


@dataclass(frozen=True)
class InferenceConfig:
    """Where and how the models run.

    Attributes:
        device: "auto" (CUDA when available), "cpu" or "cuda".
        half: run in float16 on CUDA (ignored on the CPU).
        batch_size: images per model call per GPU; range [1, 64].
        num_workers: data-loader processes reading the next images; range [0, 32].
        cpu_bf16: on the CPU, run the models under bfloat16 autocast: True, False, or
            None (default, JSON null): on where the CPU runs bfloat16 natively (AMX or
            AVX512-BF16, e.g. Xeon Sapphire Rapids; ``kernel_lib.model.fast_cpu_bf16``),
            where it is several times faster, off elsewhere, where it is slower. Boxes
            and masks change slightly (bfloat16 keeps 8 mantissa bits; the held-out
            score difference is in docs/benchmarks.md). Ignored on CUDA (see ``half``).
        time_budget_s: wall-clock seconds ``run_inference`` may take from its first
            model call to the validated submission (model loading not counted), or None
            (default): no limit. When the projected finish would overrun, the remaining
            images run a lighter ensemble (``kernel_lib.budget.degradation_steps``:
            extra scales, then flip views, then the lowest-weight models); every image
            still gets predictions. Set it below the platform's limit (Kaggle: 9 hours
            for the whole notebook); range > 0.
    """

    device: Literal["auto", "cpu", "cuda"] = "auto"
    half: bool = True
    batch_size: int = 4
    num_workers: int = 2
    cpu_bf16: bool | None = None
    time_budget_s: float | None = None

    def __post_init__(self) -> None:
        _check_types(self)
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device: expected auto, cpu or cuda, got {self.device!r}")
        _check_range("batch_size", self.batch_size, 1, 64)
        _check_range("num_workers", self.num_workers, 0, 32)
        budget = self.time_budget_s
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0):
            raise ValueError(f"time_budget_s: expected a positive number of seconds or null, got {budget!r}")


INFERENCE_OPTIONS: dict[str, str] = {
    "device": "--device",
    "half": "--no-half",
    "batch_size": "--batch-size",
    "num_workers": "--workers",
}
"""The command-line option (``predict``, ``pseudo``) that sets each :class:`InferenceConfig`
field, for :meth:`Config.with_inference`'s messages."""


@dataclass(frozen=True)
class Config:
    """The whole pipeline's configuration: ``postprocess``, ``ensemble``, ``inference``."""

    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def __post_init__(self) -> None:
        _check_types(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, path: str | Path) -> None:
        """Write the config as JSON; ``path`` is replaced only when the file is complete."""
        from kernel_lib.outputs import atomic_output

        text = json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"
        with atomic_output(path) as tmp:
            tmp.write_text(text)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> Config:
        parts = {"postprocess": PostprocessConfig, "ensemble": EnsembleConfig, "inference": InferenceConfig}
        unknown = set(data) - set(parts)
        if unknown:
            raise ValueError(f"{source}: unknown section(s) {sorted(unknown)}; expected {sorted(parts)}")
        kwargs: dict[str, Any] = {}
        for name, klass in parts.items():
            section = data.get(name, {})
            if not isinstance(section, dict):
                raise ValueError(f"{source}: section {name!r} must be an object, got {type(section).__name__}")
            known = {f.name for f in dataclasses.fields(klass)}
            bad = set(section) - known
            if bad:
                raise ValueError(
                    f"{source}: unknown key(s) {sorted(bad)} in {name!r}; expected some of {sorted(known)}"
                )
            values = {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()}
            try:
                kwargs[name] = klass(**values)
            except (TypeError, ValueError) as err:
                raise ValueError(f"{source}: {name}.{err}") from None
        return cls(**kwargs)

    def replace(self, **sections: Any) -> Config:
        """A copy with whole sections replaced, e.g. ``cfg.replace(postprocess=pp)``."""
        return dataclasses.replace(self, **sections)

    def with_inference(self, **overrides: Any) -> Config:
        """A copy with ``inference`` fields replaced by command-line options, e.g.
        ``cfg.with_inference(batch_size=args.batch_size)``; a bad value is an error
        naming the option that gave it (:data:`INFERENCE_OPTIONS`: ``--batch-size``,
        not the field ``batch_size`` the user never typed).

        Raises:
            ValueError: ``<option>: expected ..., got <value>``.
        """
        for name, value in overrides.items():
            try:
                dataclasses.replace(self.inference, **{name: value})
            except ValueError as err:
                text = str(err)
                flag = INFERENCE_OPTIONS.get(name, f"inference.{name}")
                raise ValueError(f"{flag}{text[len(name) :] if text.startswith(name) else f': {text}'}") from None
        return self.replace(inference=dataclasses.replace(self.inference, **overrides))


def load_config(path: str | Path | None) -> Config:
    """Read a JSON config file (sections may be partial); ``None`` gives the defaults.

    The file is read strictly (:func:`read_json`): UTF-8, no key given twice (the last
    would win silently), nesting errors caught. A path that is not a regular file (a
    folder, a FIFO, a device, a broken link) is named for what it is and never opened.

    Raises:
        ValueError: the file is missing, not a regular file, unreadable, not UTF-8, not
            JSON, has a duplicated key, unknown keys or bad values; the message names the
            file and the key.
    """
    if path is None:
        return Config()
    path = Path(path)
    _check_config_file(path, "", "pass a JSON file written by `tune` or omit --config")
    data = read_json_object(path, f"config file {path}", "fix it or omit --config")
    return Config.from_dict(data, source=str(path))


def _check_config_file(path: Path, named_by: str, fix: str) -> None:
    """Refuse a config path that is not a regular file (never opened: a FIFO would block)."""
    from kernel_lib.outputs import file_kind

    kind = file_kind(path)
    if kind is None:
        return
    what = "does not exist" if kind == "missing" else f"is {kind}, not a file"
    raise ValueError(f"config file {path}{named_by} {what}; {fix}")


CONFIG_ENV = "KERNEL_LIB_CONFIG"
"""Environment variable naming the config JSON when none is passed (see :func:`config_for_models`)."""

TUNED_CONFIG = "best_config.json"
"""The config file a model-weights folder may ship beside its models (what ``tune`` writes)."""


def config_for_models(models_dir: str | Path, path: str | Path | None = None) -> tuple[Config, Path | None]:
    """The config to predict with from the models in ``models_dir``, and the file it came from.

    The first of: ``path`` when given; else the file named by the environment variable
    ``KERNEL_LIB_CONFIG`` (:data:`CONFIG_ENV`) when it is set and not empty; else
    ``models_dir/best_config.json`` (:data:`TUNED_CONFIG`) when it is there and not a
    folder (a FIFO, a device or a broken link of that name is an error); else the
    library defaults. The inference notebook and ``python -m kernel_lib predict``
    (without ``--config``) both choose this way, so that the same models give the same
    submission.

    Args:
        models_dir: the model folder (one sub-folder per fold model); it need not exist.
        path: an explicit config JSON (e.g. ``--config``); it must exist.

    Returns:
        ``(config, file)``: the config and the JSON file read, or ``None`` for the defaults.

    Raises:
        ValueError: the chosen file is missing, not JSON, or has unknown keys or bad
            values (as :func:`load_config`); a file named by the environment variable
            that is missing, a folder, a FIFO or a device says so (and is not opened),
            as does a ``best_config.json`` beside the models that is neither a regular
            file nor a folder.
    """
    from kernel_lib.outputs import file_kind

    if path is None:
        named = os.environ.get(CONFIG_ENV, "")
        tuned = Path(models_dir) / TUNED_CONFIG
        if named:
            path = Path(named)
            _check_config_file(
                path, f" (named by {CONFIG_ENV})", f"point {CONFIG_ENV} at a JSON file written by `tune` or unset it"
            )
        elif file_kind(tuned) not in ("missing", "a folder"):  # a folder of that name is no config
            path = tuned
            _check_config_file(
                path, " (beside the models)", "make it the JSON file `tune` writes, or remove it to use the defaults"
            )
    if path is None:
        return Config(), None
    return load_config(path), Path(path)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"key {key!r} appears twice")
        seen[key] = value
    return seen


def read_json(path: str | Path, fix: str = "", name: str | None = None, allow_nan: bool = False) -> Any:
    """The JSON in ``path``, strictly: UTF-8, no duplicated key (the last would win
    silently), no NaN or Infinity unless ``allow_nan``; a nesting too deep for the
    parser and an unreadable file are errors, not tracebacks. The one JSON reader of
    configs, ``models.json``/``meta.json`` (:func:`read_json_object`) and kaggle-push's
    metadata and notebook.

    Args:
        path: the file (a regular file: callers check what it is first).
        fix: what the user should do, appended to the messages ("" for nothing).
        name: how messages name the file (default: the path).
        allow_nan: accept ``NaN``/``Infinity`` (files this library wrote with
            ``json.dumps`` may hold them).

    Raises:
        ValueError: naming the file, what is wrong and ``fix``.
    """
    name = str(path) if name is None else name
    tail = f"; {fix}" if fix else ""

    def no_constant(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    try:
        text = Path(path).read_bytes().decode("utf-8")
        if allow_nan:
            return json.loads(text, object_pairs_hook=_unique_keys)
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=no_constant)
    except UnicodeDecodeError as err:
        raise ValueError(f"{name} is not UTF-8 text (byte {err.start}){tail}") from None
    except RecursionError:
        raise ValueError(f"{name}: JSON nested too deeply{tail}") from None
    except ValueError as err:  # JSONDecodeError, a duplicated key, NaN
        raise ValueError(f"{name} is not valid JSON ({err}){tail}") from None
    except OSError as err:
        raise ValueError(f"{name}: cannot read it ({err.strerror or err}){tail}") from None


def read_json_object(path: str | Path, name: str, fix: str = "") -> dict[str, Any]:
    """Parse a JSON file that must hold one object (configs, meta.json, models.json),
    strictly as :func:`read_json` (NaN allowed: the types checks refuse it where a
    number must be finite).

    Args:
        path: the file (it exists).
        name: how messages name it, e.g. "config file best.json".
        fix: what the user should do, appended to the messages ("" for nothing).

    Raises:
        ValueError: unreadable, not UTF-8, not valid JSON, a key given twice, too deeply
            nested, or not an object; the message names the file.
    """
    tail = f"; {fix}" if fix else ""
    data = read_json(path, fix, name=name, allow_nan=True)
    if not isinstance(data, dict):
        raise ValueError(f"{name}: expected a JSON object, got {type(data).__name__}{tail}")
    return data
