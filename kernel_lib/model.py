"""Fold models: loading, batched multi-view inference and RoI-level ensembling (torch).

The only inference module that imports torch. Everything leaves it as numpy
:class:`~kernel_lib.soft.SoftInstances` in the original frame: boxes plus RoI-sized
soft masks, never full-frame masks.

Model folders (layout, readers, writers) are :mod:`kernel_lib.model_folder`'s.

Inference calls the detectron2 model's own parts on batches of
``{"image", "height", "width"}`` (resized here to each config's ``MIN_SIZE_TEST``):
``preprocess_image`` -> ``backbone`` -> ``proposal_generator`` ->
``roi_heads._forward_box``, and for masks ``roi_heads._forward_mask`` on given boxes,
as detectron2's ``GeneralizedRCNNWithTTA`` does, extended across models:

- ``roi`` method: every (model, view) detects boxes; the boxes, mapped back to the
  frame, are merged by class-agnostic box NMS; then every model's mask head runs on
  the merged boxes in every view (reusing that view's backbone features) and the
  un-flipped soft masks are averaged with the models' weights.
- ``wmf`` / ``mask_nms``: every (model, view) yields its own instances with masks,
  mapped back to the frame; :func:`kernel_lib.ensemble.fuse_views` combines them.

On CUDA, ``InferenceConfig.half`` runs under ``torch.autocast(float16)`` (box maths
stays float32); on the CPU ``cpu_bf16`` does the same in bfloat16 (fast with AMX).
RoIAlign always pools float32 features at float32 boxes (:class:`Float32ROIAlign`:
detectron2's casts the boxes to bfloat16, 4-pixel steps past x = 512). Convolution
weights are kept channels-last on the CPU and with float16 (:func:`prepare_model`, for
every caller). The mask head takes at most :data:`MASK_ROI_CHUNK` RoIs a call; a batch
that runs out of GPU memory is split and run again. With several GPUs every GPU holds a
replica of every model (copied once, :meth:`FoldModel.replica`) and takes whole batches
in turn. A ``DataLoader`` reads, converts and resizes the next images in worker
processes while the models run.
"""

from __future__ import annotations

import copy
import functools
import logging
import re
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from kernel_lib.config import CELL_TYPES, EnsembleConfig, InferenceConfig
from kernel_lib.images import normalize_image, read_image, to_model_input
from kernel_lib.model_folder import (
    CONFIG_FILE,
    MANIFEST_FILE,
    WEIGHTS_FILE,
    fold_of,
    input_normalization,
    read_manifest,
    read_meta,
)
from kernel_lib.soft import DEFAULT_MASK_SIZE, SoftInstances, ViewOutputs
from kernel_lib.tta import View, make_views
from kernel_lib.weights import nonfinite_tensors, read_state_dict

MASK_ROI_CHUNK = 4096
"""Most RoIs sent through one mask-head call (bounds activation memory)."""

MIN_MASK_ROI_CHUNK = 256
"""The mask-head chunk is halved on running out of memory down to this."""

OOM_ERRORS: tuple[type[BaseException], ...] = tuple(
    {getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), torch.cuda.OutOfMemoryError}
)
"""What torch raises out of (GPU) memory: ``torch.OutOfMemoryError`` (``torch.cuda.OutOfMemoryError``)."""

log = logging.getLogger(__name__)


def _free_cached_memory(device: torch.device) -> None:
    """Return the caching allocator's free blocks to the GPU (nothing on the CPU)."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------
# loading


@dataclass
class FoldModel:
    """One loaded detectron2 model of a model folder.

    Attributes:
        name: sub-folder name (e.g. ``fold0``).
        path: the sub-folder.
        fold: the fold it was trained for (meta.json "fold", else the number after
            "fold" in the name), or None.
        weight: its weight in the ensemble (models.json, default 1.0).
        cfg: its detectron2 config (as loaded, with the ensemble's score threshold
            and detection limit applied).
        model: the eval-mode ``GeneralizedRCNN`` on ``device``.
        device: where it runs.
        meta: meta.json contents ({} when absent).
        channels_last: weights stored NHWC (faster convolutions on the CPU and with
            float16 tensor cores); the inputs are converted to match.
    """

    name: str
    path: Path
    fold: int | None
    weight: float
    cfg: Any
    model: torch.nn.Module
    device: torch.device
    meta: dict[str, Any] = field(default_factory=dict)
    channels_last: bool = False
    replicas: dict[tuple[int, str], FoldModel] = field(default_factory=dict, repr=False, compare=False)

    @property
    def min_size(self) -> int:
        sizes = self.cfg.INPUT.MIN_SIZE_TEST
        return int(sizes[0] if isinstance(sizes, (list, tuple)) else sizes)

    @property
    def max_size(self) -> int:
        return int(self.cfg.INPUT.MAX_SIZE_TEST)

    @property
    def normalization(self) -> str:
        """The input normalisation it was trained with (meta.json; "none" when absent)."""
        return input_normalization(self.name, self.meta)

    @property
    def arch(self) -> str:
        """A short description, e.g. ``StandardROIHeads/build_resnet_fpn_backbone/R50``."""
        return (
            f"{self.cfg.MODEL.ROI_HEADS.NAME}/{self.cfg.MODEL.BACKBONE.NAME}/"
            f"R{self.cfg.MODEL.RESNETS.DEPTH}x{self.cfg.MODEL.RESNETS.NUM_GROUPS}"
        )

    def to(self, device: torch.device) -> FoldModel:
        """A new replica on another device (deep copy of the module)."""
        model = copy.deepcopy(self.model).to(device)
        return FoldModel(
            self.name, self.path, self.fold, self.weight, self.cfg, model, device, self.meta, self.channels_last
        )

    def replica(self, index: int, device: torch.device) -> FoldModel:
        """Replica number ``index`` (>= 1) on ``device``: copied on first use, then kept
        (:func:`predict` asks again on every call: one copy per model and GPU per
        process); its weight follows this model's."""
        key = (index, str(device))
        if key not in self.replicas:
            self.replicas[key] = self.to(device)
        replica = self.replicas[key]
        replica.weight = self.weight
        return replica


class Float32ROIAlign(torch.nn.Module):
    """detectron2's ``ROIAlign`` with float32 boxes and features whatever the autocast.

    detectron2's ``ROIAlign.forward`` casts the boxes to the features' dtype
    (``rois.to(dtype=input.dtype)``): under bfloat16 (8 significant bits) the box
    coordinates past x = 512 are rounded to 4-pixel steps (past 256 to 2) before any
    sampling. Here ``torchvision.ops.roi_align`` runs with autocast disabled on
    ``input.float()`` and ``rois.float()``; the output is cast back to the input's dtype
    (what ``ROIPooler`` allocates its output in).
    """

    def __init__(self, output_size: Any, spatial_scale: float, sampling_ratio: int, aligned: bool = True) -> None:
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        from torchvision.ops import roi_align

        if rois.dim() != 2 or rois.size(1) != 5:
            raise ValueError(
                f"Float32ROIAlign: expected (K, 5) boxes (batch index, x0, y0, x1, y1), got {tuple(rois.shape)}"
            )
        if input.is_quantized:
            input = input.dequantize()
        with torch.autocast(device_type=input.device.type, enabled=False):
            out = roi_align(
                input.float(), rois.float(), self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned
            )
        return out.to(input.dtype)

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )


def replace_pooler_levels(model: torch.nn.Module, replace: Callable[[torch.nn.Module], torch.nn.Module | None]) -> int:
    """Swap levels of every RoI pooler in ``model`` (detectron2's ``level_poolers``: box and
    mask heads, each FPN level, cascade stages) for what ``replace(level)`` returns; a level
    it returns None for stays. A DistributedDataParallel wrapper is looked through.

    Returns:
        how many levels were swapped.
    """
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    swapped = 0
    for module in model.modules():
        levels = getattr(module, "level_poolers", None)
        if not isinstance(levels, torch.nn.ModuleList):
            continue
        for k, level in enumerate(levels):
            new = replace(level)
            if new is not None:
                levels[k] = new
                swapped += 1
    return swapped


def use_float32_roi_align(model: torch.nn.Module) -> int:
    """Swap every detectron2 ``ROIAlign`` in ``model``'s poolers for a
    :class:`Float32ROIAlign` of the same settings (:func:`replace_pooler_levels`).

    Returns:
        how many were swapped.
    """
    from detectron2.layers import ROIAlign

    def replace(level: torch.nn.Module) -> torch.nn.Module | None:
        if type(level) is not ROIAlign:
            return None
        return Float32ROIAlign(level.output_size, level.spatial_scale, level.sampling_ratio, level.aligned)

    return replace_pooler_levels(model, replace)


def resolve_device(name: str) -> torch.device:
    """Device of a config name: "auto" -> cuda:0 when CUDA is available else cpu; "cuda" without CUDA -> ValueError."""
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but torch sees no CUDA device; use --device cpu or auto")
        return torch.device("cuda:0")
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"device: expected auto, cpu or cuda, got {name!r}")


def _read_state_dict(path: Path, name: str) -> dict[str, torch.Tensor]:
    """A fold's weights as a float32 state dict (plain or compact; :func:`kernel_lib.weights.read_state_dict`:
    ``weights_only=True`` only), refused when a floating tensor holds NaN or inf.

    Raises:
        ValueError: naming the model and the file.
    """
    state = read_state_dict(path, f"model {name}: {path}")
    bad = nonfinite_tensors(state)
    if bad:
        more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
        raise ValueError(
            f"model {name}: {path} holds NaN or inf weights ({', '.join(bad[:3])}{more}): a diverged training run; "
            f"retrain it, or leave {name} out of {MANIFEST_FILE}"
        )
    return state


def _check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], name: str, path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs config {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(state))
        if state[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if items:
                more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
                parts.append(f"{label}: {', '.join(items[:3])}{more}")
        raise ValueError(
            f"model {name}: {path} does not match its {CONFIG_FILE} ({'; '.join(parts)}); "
            f"was it trained with this config (architecture, NUM_CLASSES)?"
        )


def _check_test_sizes(cfg: Any, name: str, config_path: Path) -> None:
    """INPUT.MIN_SIZE_TEST (a size, or the first of a list) and MAX_SIZE_TEST must be positive integers."""
    sizes = cfg.INPUT.MIN_SIZE_TEST
    for key, value in (
        ("MIN_SIZE_TEST", sizes[0] if isinstance(sizes, (list, tuple)) and sizes else sizes),
        ("MAX_SIZE_TEST", cfg.INPUT.MAX_SIZE_TEST),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(
                f"model {name}: {config_path} has INPUT.{key}: {value!r}; expected a positive integer "
                "(the short edge, resp. the longest edge, images are resized to; e.g. 520 and 1000)"
            )


def load_fold_model(
    folder: Path, weight: float, device: torch.device, ensemble: EnsembleConfig, channels_last: bool = False
) -> FoldModel:
    """Build one model from ``folder/config.yaml`` and load ``folder/model_final.pth`` strictly.

    The ensemble's ``candidate_score`` and ``detections_per_image`` replace the config's
    ``SCORE_THRESH_TEST`` and ``DETECTIONS_PER_IMAGE``. ``channels_last`` stores the
    convolution weights NHWC (same results, faster kernels on the CPU / tensor cores;
    :func:`predict` sets it where it pays whatever is passed here). The poolers'
    RoIAligns become :class:`Float32ROIAlign`. On a GPU this torch cannot drive it stops
    first (:func:`check_cuda_arch`).

    Raises:
        ValueError: a missing file, an unreadable config or checkpoint, a model that is
            not a 3-class mask model, or weights that do not fit the config; the message
            names the model.
    """
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    folder = Path(folder)
    name = folder.name
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise ValueError(f"model {name}: {path} is missing; a model folder needs {CONFIG_FILE} and {WEIGHTS_FILE}")
    meta = read_meta(folder)
    input_normalization(name, meta)  # an unknown value stops loading here, naming the model
    cfg = get_cfg()
    cfg.set_new_allowed(True)
    try:
        cfg.merge_from_file(str(config_path))
    except Exception as err:
        raise ValueError(f"model {name}: {config_path} is not a readable detectron2 config ({err})") from None
    if cfg.MODEL.META_ARCHITECTURE != "GeneralizedRCNN" or not cfg.MODEL.MASK_ON:
        raise ValueError(
            f"model {name}: expected a GeneralizedRCNN with MASK_ON (Mask R-CNN / Cascade), got "
            f"{cfg.MODEL.META_ARCHITECTURE} with MASK_ON={cfg.MODEL.MASK_ON} in {config_path}"
        )
    if len(CELL_TYPES) != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
        raise ValueError(
            f"model {name}: {config_path} has ROI_HEADS.NUM_CLASSES={cfg.MODEL.ROI_HEADS.NUM_CLASSES}, "
            f"expected {len(CELL_TYPES)} ({', '.join(CELL_TYPES)})"
        )
    _check_test_sizes(cfg, name, config_path)
    check_cuda_arch(device)
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = str(device)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = ensemble.candidate_score
    cfg.TEST.DETECTIONS_PER_IMAGE = ensemble.detections_per_image
    cfg.freeze()
    try:
        model = build_model(cfg)
    except (KeyError, AssertionError, ValueError, TypeError) as err:
        # e.g. an unknown BACKBONE.NAME / ROI_HEADS.NAME (a registry KeyError), or sizes that do not fit
        reason = str(err).strip().strip('"') or type(err).__name__
        raise ValueError(
            f"model {name}: {config_path} does not build a model ({reason}); check the names and sizes "
            "in it against detectron2's (what `python -m kernel_lib train` writes builds)"
        ) from None
    if not hasattr(model.roi_heads, "_forward_mask") or model.roi_heads.mask_pooler is None:
        raise ValueError(f"model {name}: ROI heads {cfg.MODEL.ROI_HEADS.NAME} are not FPN mask heads; unsupported")
    state = _read_state_dict(weights_path, name)
    _check_state_dict(model, state, name, weights_path)
    model.load_state_dict(state, strict=True)
    model.eval()
    use_float32_roi_align(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return FoldModel(name, folder, fold_of(name, meta), float(weight), cfg, model, device, meta, channels_last)


def check_cuda_arch(device: torch.device) -> None:
    """Stop when torch has no kernels for the GPU ``device`` (a no-op on the CPU).

    ``torch.cuda.is_available()`` is True on a GPU this torch build cannot drive (e.g. a
    P100, capability 6.0, under a cu128 build), and the first real CUDA op then dies. A
    build runs on a capability ``X.Y`` when it ships ``sm_XZ`` with ``Z <= Y`` (same
    major), the arch-specific ``sm_XYa`` exactly, or PTX ``compute_AB`` with ``AB <= XY``.

    Raises:
        ValueError: naming the GPU, its capability, the build's archs and the fix.
    """
    if device.type != "cuda":
        return
    archs = list(torch.cuda.get_arch_list())
    if not archs:  # a build that does not say (nothing to check against)
        return
    major, minor = torch.cuda.get_device_capability(device)
    for arch in archs:
        match = re.fullmatch(r"(sm|compute)_(\d+)([a-z]?)", arch)
        if match is None:
            continue
        kind, number, suffix = match.group(1), int(match.group(2)), match.group(3)
        arch_major, arch_minor = divmod(number, 10)
        if suffix and (arch_major, arch_minor) != (major, minor):
            continue
        if kind == "sm" and arch_major == major and arch_minor <= minor:
            return
        if kind == "compute" and (arch_major, arch_minor) <= (major, minor):
            return
    raise ValueError(
        f"GPU {torch.cuda.get_device_name(device)} ({device}) has CUDA compute capability {major}.{minor}, but "
        f"torch {torch.__version__} was built for {', '.join(archs)} only: its CUDA kernels cannot run on this GPU. "
        f'Fix: run on a GPU this torch supports (on Kaggle: "machine_shape": "NvidiaTeslaT4" in '
        f"kernel-metadata.json, or `kaggle kernels push --accelerator NvidiaTeslaT4`; the retired P100 is 6.0), "
        f'or on the CPU (inference device "cpu" / --device cpu)'
    )


def load_models(models_dir: str | Path, ensemble: EnsembleConfig, inference: InferenceConfig) -> list[FoldModel]:
    """Load every model of a model folder once, on ``inference.device`` (first GPU).

    Weights are stored channels-last on the CPU and for float16 on CUDA.

    Raises:
        ValueError: see :func:`check_cuda_arch`, :func:`read_manifest` and :func:`load_fold_model`.
    """
    models_dir = Path(models_dir)
    device = resolve_device(inference.device)
    check_cuda_arch(device)
    channels_last = device.type == "cpu" or inference.half
    return [
        load_fold_model(models_dir / name, weight, device, ensemble, channels_last)
        for name, weight in read_manifest(models_dir)
    ]


# ---------------------------------------------------------------------------------
# data loading


InputKey = tuple[int, int, str]
"""What a model's input depends on: (MIN_SIZE_TEST, MAX_SIZE_TEST, input normalisation).
Models with one key share their inputs."""


def _input_key(fm: FoldModel) -> InputKey:
    return fm.min_size, fm.max_size, fm.normalization


def views_for(shape: tuple[int, int], key: InputKey, ensemble: EnsembleConfig) -> list[View]:
    """The TTA views of an image of ``shape`` for models of one input key (sizes, normalisation)."""
    return make_views(ensemble.tta, ensemble.scales, shape, key[0], key[1])


class ImageDataset(Dataset):
    """Reads image i and prepares every view's model input for every model input key.

    Items: ``{"id": str, "grey": (H, W) uint8, "inputs": {key: [(3, h, w) uint8 tensor
    per view]}}`` with key = :data:`InputKey`; ``grey`` is the image as read (what
    post-processing and overlays use), the inputs are normalised as their models were
    trained (:func:`kernel_lib.images.normalize_image`).
    """

    def __init__(self, paths: Sequence[Path], keys: Sequence[InputKey], ensemble: EnsembleConfig) -> None:
        self.paths = [Path(p) for p in paths]
        self.keys = list(dict.fromkeys(keys))
        self.ensemble = ensemble

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.paths[index]
        try:
            grey = read_image(path)
        except ValueError as err:  # raised again by the main process: one clear line, no worker traceback
            return {"id": path.stem, "error": str(err)}
        inputs: dict[InputKey, list[torch.Tensor]] = {}
        bgr_of: dict[str, np.ndarray] = {}  # one normalised copy per normalisation, whatever the sizes
        for key in self.keys:
            if key[2] not in bgr_of:
                bgr_of[key[2]] = to_model_input(normalize_image(grey, key[2]))
            bgr = bgr_of[key[2]]
            tensors = []
            for view in views_for(grey.shape, key, self.ensemble):
                tensors.append(torch.from_numpy(np.ascontiguousarray(view.apply_image(bgr).transpose(2, 0, 1))))
            inputs[key] = tensors
        return {"id": path.stem, "grey": grey, "inputs": inputs}


def _collate(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return batch


def _checked(loader: Iterator[list[dict[str, Any]]]) -> Iterator[list[dict[str, Any]]]:
    """The loader's batches; an image a worker could not read stops here with its message."""
    for batch in loader:
        for item in batch:
            if "error" in item:
                raise ValueError(item["error"])
        yield batch


# ---------------------------------------------------------------------------------
# inference


@functools.cache
def fast_cpu_bf16() -> bool:
    """Whether this CPU runs bfloat16 matrix maths natively (AMX or AVX512-BF16).

    There bfloat16 autocast made the R50-FPN backbone 2.1x and the mask head 4.8x
    faster (docs/benchmarks.md); elsewhere it is emulated and slower than float32.
    """
    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        check = getattr(cpu, probe, None)
        if check is not None:
            try:
                if check():
                    return True
            except RuntimeError:
                continue
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def _autocast(device: torch.device, inference: InferenceConfig) -> Any:
    """float16 autocast on CUDA with ``half``, bfloat16 on the CPU with ``cpu_bf16``."""
    if device.type == "cuda" and inference.half:
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    if device.type == "cpu" and (fast_cpu_bf16() if inference.cpu_bf16 is None else inference.cpu_bf16):
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    return nullcontext()


def _to_soft(
    boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, masks: torch.Tensor, shape
) -> SoftInstances:
    return SoftInstances(
        boxes.float().cpu().numpy(),
        scores.float().cpu().numpy(),
        classes.cpu().numpy(),
        masks.float().cpu().numpy(),
        shape,
    )


def _resize_masks(masks: torch.Tensor, size: int) -> torch.Tensor:
    """(N, m, m) -> (N, size, size); box-relative, so a plain half-pixel bilinear resize."""
    if masks.shape[-1] == size:
        return masks
    return F.interpolate(masks[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]


class EnsemblePredictor:
    """Runs a list of fold models (all on one device) on batches of loaded images.

    Args:
        models: the models (see :func:`load_models`), all on the same device.
        ensemble: method, TTA views, scales, merge NMS IoU, detection limit.
        inference: half precision flag.
        mask_min_score: "roi" only: merged boxes scoring below this get an all-zero
            mask instead of running the mask heads (they keep their score and class,
            so a later cell-type vote still sees them). 0 runs every box.
    """

    def __init__(
        self,
        models: Sequence[FoldModel],
        ensemble: EnsembleConfig,
        inference: InferenceConfig,
        mask_min_score: float = 0.0,
    ) -> None:
        if not models:
            raise ValueError("EnsemblePredictor: expected at least one model, got none")
        devices = {str(m.device) for m in models}
        if len(devices) != 1:
            raise ValueError(f"EnsemblePredictor: models must share one device, got {sorted(devices)}")
        self.models = list(models)
        self.device = models[0].device
        self.ensemble = ensemble
        self.inference = inference
        self.mask_min_score = mask_min_score
        self.max_batch = max(1, inference.batch_size)
        """Most images per model call: lowered when a batch ran out of memory."""
        self.mask_roi_chunk = MASK_ROI_CHUNK
        """Most RoIs per mask-head call: lowered when one image ran out of memory."""

    # one model, one input key: detection pass -------------------------------------
    def _detect(
        self, fm: FoldModel, images: list[torch.Tensor], views: list[View], with_masks: bool
    ) -> tuple[list[Any], dict[str, torch.Tensor] | None]:
        """Run one model on images (already transformed by their views)."""
        model = fm.model
        inputs = [
            {"image": img.to(self.device, non_blocking=True), "height": v.out_shape[0], "width": v.out_shape[1]}
            for img, v in zip(images, views)
        ]
        with _autocast(self.device, self.inference):
            batch = model.preprocess_image(inputs)
            tensor = batch.tensor.contiguous(memory_format=torch.channels_last) if fm.channels_last else batch.tensor
            features = model.backbone(tensor)
            proposals, _ = model.proposal_generator(batch, features, None)
            detections = model.roi_heads._forward_box(features, proposals)
            # boxes clipped to nothing at the image border carry no mask; detectron2's
            # detector_postprocess drops them too
            detections = [d[d.pred_boxes.nonempty()] for d in detections]
        keep = {f: features[f] for f in model.roi_heads.mask_in_features}
        if with_masks:
            return self._forward_mask_chunked(fm, keep, detections), None
        return detections, keep

    def _forward_mask_chunked(
        self, fm: FoldModel, features: dict[str, torch.Tensor], instances: list[Any]
    ) -> list[Any]:
        """``fm``'s mask head on each image's instances (``pred_boxes``, ``pred_classes``),
        at most ``mask_roi_chunk`` RoIs per call: consecutive images share a call while
        they fit, an image with more RoIs is split. Returns the instances with
        ``pred_masks``, one per image, in order."""
        from detectron2.structures import Instances

        limit = max(1, self.mask_roi_chunk)
        pieces = []  # (image, start, stop)
        for j, inst in enumerate(instances):
            pieces.extend((j, a, min(len(inst), a + limit)) for a in range(0, max(len(inst), 1), limit))
        chunks: list[list[tuple[int, int, int]]] = []
        rois = 0
        for piece in pieces:
            size = piece[2] - piece[1]
            if not chunks or rois + size > limit or chunks[-1][-1][0] == piece[0]:
                chunks.append([])
                rois = 0
            chunks[-1].append(piece)
            rois += size
        parts: list[list[Any]] = [[] for _ in instances]
        for chunk in chunks:
            first, last = chunk[0][0], chunk[-1][0]  # consecutive images, one piece each
            feats = {k: v[first : last + 1] for k, v in features.items()}
            with _autocast(self.device, self.inference):
                done = fm.model.roi_heads._forward_mask(feats, [instances[j][a:b] for j, a, b in chunk])
            for (j, _, _), inst in zip(chunk, done):
                parts[j].append(inst)
        return [p[0] if len(p) == 1 else Instances.cat(p) for p in parts]

    def _masks_on_boxes(
        self,
        fm: FoldModel,
        features: dict[str, torch.Tensor],
        boxes: list[torch.Tensor],
        classes: list[torch.Tensor],
        views: list[View],
    ) -> list[torch.Tensor]:
        """Soft masks (n_j, M, M) of ``fm`` for given boxes (view coordinates) per image j."""
        from detectron2.structures import Boxes, Instances

        instances = [
            Instances(view.out_shape, pred_boxes=Boxes(b), pred_classes=c) for b, c, view in zip(boxes, classes, views)
        ]
        return [inst.pred_masks[:, 0].float() for inst in self._forward_mask_chunked(fm, features, instances)]

    # a batch ------------------------------------------------------------------------
    @torch.inference_mode()
    def predict_batch(self, items: Sequence[dict[str, Any]]) -> list[ViewOutputs]:
        """Items from :class:`ImageDataset` -> one :class:`ViewOutputs` per item."""
        # on a second GPU (own thread), make it the current device for any tensor
        # created without an explicit device
        with torch.cuda.device(self.device) if self.device.type == "cuda" else nullcontext():
            return self._predict_split(list(items))

    def _predict_split(self, items: list[dict[str, Any]]) -> list[ViewOutputs]:
        """:meth:`_predict_batch` on at most ``max_batch`` items at a time. Out of memory,
        the cache is emptied and the batch split in halves (``max_batch`` follows, so the
        next batches start split); on one image, the mask-head chunk is halved down to
        :data:`MIN_MASK_ROI_CHUNK`.

        Raises:
            ValueError: out of memory on one image at the smallest chunk.
        """
        if len(items) > self.max_batch:
            outs: list[ViewOutputs] = []
            for k in range(0, len(items), self.max_batch):
                outs.extend(self._predict_split(items[k : k + self.max_batch]))
            return outs
        try:
            return self._predict_batch(items)
        except OOM_ERRORS as err:
            # leave the except block before retrying: the traceback holds the failed
            # call's tensors until then
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
        _free_cached_memory(self.device)
        if len(items) > 1:
            self.max_batch = (len(items) + 1) // 2
            log.warning(
                "%s: out of memory on a batch of %d images; retrying in batches of %d",
                self.device,
                len(items),
                self.max_batch,
            )
        elif self.mask_roi_chunk > MIN_MASK_ROI_CHUNK:
            self.mask_roi_chunk = max(MIN_MASK_ROI_CHUNK, self.mask_roi_chunk // 2)
            log.warning(
                "%s: out of memory on one image; mask head on %d RoIs at a time", self.device, self.mask_roi_chunk
            )
        else:
            raise ValueError(
                f"{self.device}: out of memory on one image ({items[0].get('id')}) with {len(self.models)} model(s), "
                f"{len(self.ensemble.tta)} view(s) x {len(self.ensemble.scales)} scale(s) and the mask head on "
                f"{self.mask_roi_chunk} RoIs at a time; expected the ensemble to fit one image: use fewer scales, "
                f"views or models, or the CPU ({message})"
            )
        return self._predict_split(items)

    def _predict_batch(self, items: Sequence[dict[str, Any]]) -> list[ViewOutputs]:
        roi = self.ensemble.method == "roi"
        shapes = [tuple(item["grey"].shape) for item in items]
        # per model: flat lists over (image, view), grouped into calls by view input shape
        per_model = []
        for fm in self.models:
            key = _input_key(fm)
            flat = []  # (image index, view, tensor)
            for i, item in enumerate(items):
                views = views_for(shapes[i], key, self.ensemble)
                flat.extend((i, v, t) for v, t in zip(views, item["inputs"][key]))
            groups: dict[tuple[int, int], list[tuple[int, View, torch.Tensor]]] = {}
            for entry in flat:
                groups.setdefault(entry[1].out_shape, []).append(entry)
            calls = []
            for group in groups.values():
                dets, feats = self._detect(fm, [e[2] for e in group], [e[1] for e in group], with_masks=not roi)
                calls.append((group, dets, feats))
            per_model.append(calls)
        if not roi:
            return self._collect_views(items, shapes, per_model)
        return self._fuse_roi(items, shapes, per_model)

    def _collect_views(self, items, shapes, per_model) -> list[ViewOutputs]:
        outs = [ViewOutputs(None, [], [], []) for _ in items]
        for fm, calls in zip(self.models, per_model):
            for group, dets, _ in calls:
                for (i, view, _), det in zip(group, dets):
                    boxes = view.invert_boxes(det.pred_boxes.tensor.float())
                    masks = view.invert_roi_masks(det.pred_masks[:, 0])
                    outs[i].views.append(_to_soft(boxes, det.scores, det.pred_classes, masks, shapes[i]))
                    outs[i].weights.append(fm.weight)
                    outs[i].names.append(f"{fm.name}/{view.key}")
        return outs

    def _fuse_roi(self, items, shapes, per_model) -> list[ViewOutputs]:
        """The "roi" method: merge every (model, view)'s boxes, run every model's mask
        head on the merged boxes in every view, average the soft masks."""
        merged = self._merged_boxes(len(items), per_model)
        selected = [scores >= self.mask_min_score for _, scores, _ in merged]
        parts = self._masks_on_merged(len(items), per_model, merged, selected)
        outs = []
        for i, (boxes, scores, classes) in enumerate(merged):
            size = max((m.shape[-1] for _, m in parts[i]), default=DEFAULT_MASK_SIZE)
            total = sum(w for w, _ in parts[i])
            masks = torch.zeros((len(boxes), size, size), device=boxes.device)
            if parts[i] and int(selected[i].sum()):
                masks[selected[i]] = sum(w * _resize_masks(m, size) for w, m in parts[i]) / total
            outs.append(ViewOutputs(_to_soft(boxes, scores, classes, masks, shapes[i]), [], [], []))
        return outs

    def _merged_boxes(self, n: int, per_model) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per image: (boxes, scores, classes) of every model and view, mapped back to the
        frame and merged by class-agnostic box NMS (one cell is one instance whatever
        class each model gave it), at most ``detections_per_image``."""
        from torchvision.ops import batched_nms

        found: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = [[] for _ in range(n)]
        for calls in per_model:
            for group, dets, _ in calls:
                for (i, view, _), det in zip(group, dets):
                    found[i].append(
                        (view.invert_boxes(det.pred_boxes.tensor.float()), det.scores.float(), det.pred_classes)
                    )
        merged = []
        for parts in found:
            boxes, scores, classes = (torch.cat(column) for column in zip(*parts))
            keep = batched_nms(boxes, scores, torch.zeros_like(classes), self.ensemble.box_nms_iou)
            keep = keep[: self.ensemble.detections_per_image]
            merged.append((boxes[keep], scores[keep], classes[keep]))
        return merged

    def _masks_on_merged(self, n: int, per_model, merged, selected) -> list[list[tuple[float, torch.Tensor]]]:
        """Per image: (model weight, soft masks in the frame's box coordinates) of every
        (model, view) mask head on the selected merged boxes; masks stay on the device,
        and each model's features are let go once used."""
        parts: list[list[tuple[float, torch.Tensor]]] = [[] for _ in range(n)]
        for k, fm in enumerate(self.models):
            calls, per_model[k] = per_model[k], None
            for group, _, feats in calls:
                view_boxes = [view.apply_boxes(merged[i][0][selected[i]]) for i, view, _ in group]
                view_classes = [merged[i][2][selected[i]] for i, _, _ in group]
                masks = self._masks_on_boxes(fm, feats, view_boxes, view_classes, [e[1] for e in group])
                for (i, view, _), m in zip(group, masks):
                    parts[i].append((fm.weight, view.invert_roi_masks(m)))
            del calls
        return parts


def cuda_devices(inference: InferenceConfig) -> list[torch.device]:
    """Every visible GPU when the device resolves to CUDA, else [cpu]."""
    device = resolve_device(inference.device)
    if device.type != "cuda":
        return [device]
    return [torch.device(f"cuda:{k}") for k in range(torch.cuda.device_count())]


def _devices(models: Sequence[FoldModel], inference: InferenceConfig) -> list[torch.device]:
    """The devices :func:`predict` runs on: every visible GPU when the models are on
    one, else the models' device."""
    return cuda_devices(inference) if models[0].device.type == "cuda" else [models[0].device]


def prepare_model(fm: FoldModel, inference: InferenceConfig) -> None:
    """What every inference path does to a loaded model, however it was loaded
    (:func:`load_models`, or :func:`load_fold_model` as ``evaluate`` does): stop on a
    GPU this torch cannot drive (:func:`check_cuda_arch`: a few microseconds), and store
    the weights channels-last on the CPU and for float16 on CUDA."""
    check_cuda_arch(fm.device)
    if not fm.channels_last and (fm.device.type == "cpu" or inference.half):
        fm.model.to(memory_format=torch.channels_last)
        fm.channels_last = True


def predict(
    image_paths: Sequence[str | Path],
    models: Sequence[FoldModel],
    ensemble: EnsembleConfig,
    inference: InferenceConfig,
    mask_min_score: float = 0.0,
    progress: bool = True,
) -> Iterator[tuple[str, np.ndarray, ViewOutputs]]:
    """Run the models on images, in order: yields (id, grey (H, W) uint8, ViewOutputs).

    Batches of ``inference.batch_size`` images are read by a ``DataLoader`` with
    ``inference.num_workers`` workers. With several GPUs, each GPU gets a replica of
    every model (copied on the first call, then reused) and whole batches in turn
    (results still come out in input order). Every model goes through
    :func:`prepare_model` first (GPU guard, channels-last).
    """
    if not models:
        raise ValueError("predict: expected at least one model, got none")
    paths = [Path(p) for p in image_paths]
    devices = _devices(models, inference)
    replicas = [list(models)]
    replicas.extend([fm.replica(k, device) for fm in models] for k, device in enumerate(devices[1:], start=1))
    for replica in replicas:
        for fm in replica:
            prepare_model(fm, inference)
    predictors = [EnsemblePredictor(r, ensemble, inference, mask_min_score) for r in replicas]
    dataset = ImageDataset(paths, [_input_key(fm) for fm in models], ensemble)
    loader = DataLoader(
        dataset,
        batch_size=inference.batch_size,
        shuffle=False,
        num_workers=inference.num_workers,
        collate_fn=_collate,
        pin_memory=devices[0].type == "cuda",
        persistent_workers=False,
    )
    batches = _on_one(predictors[0], loader) if len(predictors) == 1 else _on_replicas(predictors, loader)
    with tqdm(total=len(paths), desc="predict", unit="img", disable=not progress) as bar:
        try:
            for batch, outs in batches:
                for item, out in zip(batch, outs):
                    yield item["id"], item["grey"], out
                bar.update(len(batch))
        finally:
            batches.close()


Batches = Iterator[tuple[list[dict[str, Any]], list[ViewOutputs]]]
"""(loaded items, their outputs) a batch at a time, in input order."""


def _on_one(predictor: EnsemblePredictor, loader: DataLoader) -> Batches:
    """Every batch through one predictor (one device), in turn."""
    for batch in _checked(iter(loader)):
        yield batch, predictor.predict_batch(batch)


def _on_replicas(predictors: Sequence[EnsemblePredictor], loader: DataLoader) -> Batches:
    """Batches dealt to the predictors (one per GPU, each in its own thread) in turn; at
    most two batches in flight per GPU; results come back in input order."""
    executors = [ThreadPoolExecutor(max_workers=1) for _ in predictors]
    pending: deque[tuple[list[dict[str, Any]], Future]] = deque()
    try:
        for k, batch in enumerate(_checked(iter(loader))):
            predictor, executor = predictors[k % len(predictors)], executors[k % len(executors)]
            pending.append((batch, executor.submit(predictor.predict_batch, batch)))
            while len(pending) > 2 * len(executors) or (pending and pending[0][1].done()):
                done_batch, future = pending.popleft()
                yield done_batch, future.result()
        while pending:
            done_batch, future = pending.popleft()
            yield done_batch, future.result()
    finally:
        for executor in executors:
            executor.shutdown(wait=True, cancel_futures=True)
