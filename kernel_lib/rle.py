"""Run-length codec in the competition's format.

A mask of a (H, W) frame is written as space-separated ``start length`` pairs over the
frame flattened in ROW-MAJOR (C) order, starts 1-indexed: pixel (y, x) has start
``y * W + x + 1``. Runs are maximal (two touching runs are one run), sorted, and may
continue from the end of one row onto the next, exactly as ``mask.flatten()`` gives
them. An empty mask is the empty string.

Encoders work on whole images at once: :func:`rle_encode_labels` and
:func:`rle_encode_crops` find the runs of every instance in one vectorised pass and
format all strings together, so encoding ~1,000 instances costs a few milliseconds.
Decoders validate what they read (:func:`rle_problems`) and raise ``ValueError``
naming the first problem.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kernel_lib.config import IMAGE_SHAPE
from kernel_lib.masks import CropMasks

__all__ = [
    "crop_runs",
    "crops_from_indices",
    "parse_runs",
    "rle_decode",
    "rle_decode_crops",
    "rle_encode",
    "rle_encode_crops",
    "rle_encode_labels",
    "rle_encode_stack",
    "rle_problems",
    "rle_to_indices",
    "runs_to_indices",
]


# --------------------------------------------------------------------------- formatting


def _decimal_text(tokens: np.ndarray) -> tuple[str, np.ndarray]:
    """``" ".join(map(str, tokens)) + " "`` for positive ints, built as one char array.

    Returns the text and each token's number of digits."""
    width = len(str(int(tokens.max())))
    digits = np.ones(tokens.size, np.int64)
    for p in range(1, width):
        digits += tokens >= 10**p
    chars = np.empty((tokens.size, width + 1), np.uint8)
    chars[:, width] = ord(" ")
    # peel digits from the right; division by a scalar is fast for unsigned ints
    rest = tokens.astype(np.uint32 if width <= 9 else np.uint64)
    for j in range(width - 1, -1, -1):
        quotient = rest // 10
        chars[:, j] = rest - quotient * 10 + ord("0")
        rest = quotient
    keep = np.ones((tokens.size, width + 1), bool)
    keep[:, :width] = np.arange(width) >= (width - digits)[:, None]  # drop leading zeros
    return chars[keep].tobytes().decode("ascii"), digits


def _format_runs(inst: np.ndarray, starts: np.ndarray, lengths: np.ndarray, n: int) -> list[str]:
    """Strings for ``n`` instances from runs grouped by instance (``inst`` ascending).

    ``starts`` are 0-based flat indices; written 1-based. All numbers are converted in
    one ``join`` and each instance's string is a slice of it (offsets from digit counts).
    """
    out = [""] * n
    if inst.size == 0:
        return out
    tokens = np.empty(2 * inst.size, np.int64)
    tokens[0::2] = starts + 1
    tokens[1::2] = lengths
    text, digits = _decimal_text(tokens)
    ends = np.cumsum(digits + 1)  # position just after each token's trailing separator
    begins = ends - digits - 1
    # first and last token of each instance
    bounds = np.flatnonzero(np.diff(inst)) + 1
    first_run = np.concatenate(([0], bounds))
    last_run = np.concatenate((bounds, [inst.size])) - 1
    char_begin = begins[2 * first_run].tolist()
    char_end = (ends[2 * last_run + 1] - 1).tolist()
    for k, a, b in zip(inst[first_run].tolist(), char_begin, char_end):
        out[k] = text[a:b]
    return out


def _merge_touching(inst: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, ...]:
    """Merge runs of one instance where one ends exactly where the next starts.

    Input sorted by (inst, start) with no overlaps; output maximal runs."""
    if inst.size < 2:
        return inst, starts, lengths
    joins = (inst[1:] == inst[:-1]) & (starts[1:] == starts[:-1] + lengths[:-1])
    if not joins.any():
        return inst, starts, lengths
    new_run = np.concatenate(([True], ~joins))
    heads = np.flatnonzero(new_run)
    ends = starts + lengths
    tails = np.concatenate((heads[1:], [inst.size])) - 1
    return inst[heads], starts[heads], ends[tails] - starts[heads]


# ----------------------------------------------------------------------------- encoders


def rle_encode(mask: np.ndarray) -> str:
    """Encode one mask.

    Args:
        mask: (H, W) bool (any dtype; nonzero is foreground).

    Returns:
        ``"start length ..."`` row-major, 1-indexed; ``""`` for an empty mask.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"rle_encode: expected a (H, W) mask, got shape {mask.shape}")
    return rle_encode_stack(mask[None])[0]


def rle_encode_stack(masks: np.ndarray) -> list[str]:
    """Encode a (N, H, W) stack (bool; nonzero is foreground), all masks in one pass.

    Returns:
        N strings; ``""`` for an empty mask. A (0, H, W) stack gives ``[]``.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"rle_encode_stack: expected a (N, H, W) stack, got shape {masks.shape}")
    n = masks.shape[0]
    if n == 0:
        return []
    flat = masks.reshape(n, -1).astype(bool, copy=False)
    padded = np.zeros((n, flat.shape[1] + 2), bool)
    padded[:, 1:-1] = flat
    changes = padded[:, 1:] != padded[:, :-1]
    inst, pos = np.nonzero(changes)  # row-major: grouped by instance, positions ascending
    starts = pos[0::2]
    return _format_runs(inst[0::2], starts, pos[1::2] - starts, n)


def rle_encode_labels(labels: np.ndarray, n: int) -> list[str]:
    """Encode a label image: label k (1..n) becomes string k-1; 0 is background.

    Args:
        labels: (H, W) integer label image.
        n: number of instances; labels above ``n`` are an error.

    Returns:
        n strings (``""`` for a label that does not occur).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"rle_encode_labels: expected a (H, W) integer label image, got {labels.dtype} {labels.shape}")
    if n < 0:
        raise ValueError(f"rle_encode_labels: expected n >= 0, got {n}")
    flat = labels.ravel()
    if flat.size == 0 or n == 0:
        if flat.size and flat.any():
            raise ValueError(f"rle_encode_labels: n=0 but the label image has labels up to {int(flat.max())}")
        return [""] * n
    lo, hi = int(flat.min()), int(flat.max())
    if lo < 0 or hi > n:
        raise ValueError(f"rle_encode_labels: expected labels in 0..{n}, got values in {lo}..{hi}")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], change))
    lengths = np.diff(np.concatenate((starts, [flat.size])))
    run_label = flat[starts]
    fg = run_label > 0
    starts, lengths, run_label = starts[fg], lengths[fg], run_label[fg].astype(np.int64)
    order = np.argsort(run_label, kind="stable")  # keeps starts ascending within a label
    return _format_runs(run_label[order] - 1, starts[order].astype(np.int64), lengths[order], n)


def crop_runs(masks: CropMasks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximal runs of every crop in frame coordinates: (inst, start0, length), sorted."""
    n = len(masks)
    empty = np.zeros(0, np.int64)
    if n == 0:
        return empty, empty, empty
    width = masks.shape[1]
    hw = np.array([c.shape for c in masks.crops], np.int64).reshape(n, 2)
    h, w = hw[:, 0], hw[:, 1]
    sizes = h * w
    if sizes.sum() == 0:
        return empty, empty, empty
    flat = np.concatenate([c.ravel() for c in masks.crops])
    offsets = np.concatenate(([0], np.cumsum(sizes)))
    # runs stop at crop row ends: treat the pixel before a row start / after a row end as background
    prev = np.zeros(flat.size, bool)
    prev[1:] = flat[:-1]
    nxt = np.zeros(flat.size, bool)
    nxt[:-1] = flat[1:]
    row_inst = np.repeat(np.arange(n), h)
    row_in_crop = np.arange(row_inst.size) - np.repeat(np.cumsum(h) - h, h)
    row_w = w[row_inst]
    row_begin = (offsets[row_inst] + row_in_crop * row_w)[row_w > 0]
    prev[row_begin] = False
    nxt[row_begin + row_w[row_w > 0] - 1] = False
    run_start = np.flatnonzero(flat & ~prev)
    run_end = np.flatnonzero(flat & ~nxt) + 1
    inst = np.searchsorted(offsets, run_start, side="right") - 1
    local = run_start - offsets[inst]
    r, c = np.divmod(local, w[inst])
    frame = (masks.origins[inst, 0] + r) * width + masks.origins[inst, 1] + c
    inst, frame, length = _merge_touching(inst, frame, run_end - run_start)
    return inst, frame, length


def rle_encode_crops(masks: CropMasks) -> list[str]:
    """Encode every mask of a :class:`CropMasks` (masks may overlap each other).

    Returns:
        len(masks) strings in order; ``""`` for an empty mask.
    """
    inst, starts, lengths = crop_runs(masks)
    return _format_runs(inst, starts, lengths, len(masks))


# ----------------------------------------------------------------------------- decoders


def _tokens(rle: str) -> list[str]:
    if not isinstance(rle, str):
        raise ValueError(f"expected an RLE string, got {type(rle).__name__} {rle!r}")
    return rle.split()


def rle_problems(rle: str, shape: tuple[int, int] = IMAGE_SHAPE) -> list[str]:
    """What is wrong with one RLE string for a frame of ``shape``; ``[]`` when valid.

    Checks: integer tokens in ``start length`` pairs, starts >= 1, lengths >= 1, starts
    ascending, runs inside the H*W frame, no run overlapping the previous one.
    """
    if not isinstance(rle, str):
        return [f"not a string: {rle!r}"]
    tokens = rle.split()
    bad = [t for t in tokens if not (t.isascii() and t.isdigit())]
    if bad:
        shown = ", ".join(repr(t) for t in bad[:3])
        return [f"non-integer token(s) {shown}: expected space-separated whole numbers"]
    if len(tokens) % 2:
        return [f"odd number of numbers ({len(tokens)}): expected 'start length' pairs"]
    huge = [t for t in tokens if len(t.lstrip("0")) > 18]
    if huge:
        return [f"number {huge[0][:20]}... too large for a {shape[0]}x{shape[1]} frame"]
    values = np.array(tokens, dtype=np.int64).reshape(-1, 2)
    return _run_problems(values[:, 0], values[:, 1], shape)


def _run_problems(starts1: np.ndarray, lengths: np.ndarray, shape: tuple[int, int]) -> list[str]:
    """Problems of one string's runs (starts 1-based)."""
    problems: list[str] = []
    size = shape[0] * shape[1]
    if starts1.size == 0:
        return problems
    i = np.flatnonzero(starts1 < 1)
    if i.size:
        problems.append(f"run {i[0] + 1}: start {starts1[i[0]]} < 1 (starts are 1-indexed)")
    i = np.flatnonzero(lengths < 1)
    if i.size:
        problems.append(f"run {i[0] + 1}: length {lengths[i[0]]} < 1")
    i = np.flatnonzero(starts1 > size + 1 - lengths)
    if i.size:
        k = i[0]
        problems.append(
            f"run {k + 1}: {starts1[k]} {lengths[k]} ends at pixel {int(starts1[k]) + int(lengths[k]) - 1} "
            f"beyond the {shape[0]}x{shape[1]} frame ({size} pixels)"
        )
    if starts1.size > 1:
        i = np.flatnonzero(starts1[1:] <= starts1[:-1])
        if i.size:
            k = i[0] + 1
            problems.append(f"run {k + 1}: start {starts1[k]} not after the previous start {starts1[k - 1]} (unsorted)")
        else:
            i = np.flatnonzero(starts1[1:] < starts1[:-1] + lengths[:-1])
            if i.size:
                k = i[0] + 1
                problems.append(
                    f"run {k + 1}: start {starts1[k]} inside the previous run "
                    f"{starts1[k - 1]} {lengths[k - 1]} (duplicated pixels)"
                )
    return problems


def parse_runs(rles: Sequence[str], shape: tuple[int, int] = IMAGE_SHAPE) -> tuple[np.ndarray, ...]:
    """Parse and validate many RLE strings at once.

    Args:
        rles: N strings (``""`` is an empty mask).
        shape: (H, W) of the frame.

    Returns:
        ``(inst, starts, lengths)``: (R,) int64 arrays over all runs, grouped by string
        index ``inst`` in order; ``starts`` 0-based flat indices.

    Raises:
        ValueError: a string is malformed; names its index and the problem.
    """
    ok, inst, starts, lengths = scan_runs(rles, shape)
    if ok.all():
        return inst, starts, lengths
    return _parse_runs_one_by_one(rles, shape)  # words the first problem (or parses the rare forms)


def _parse_runs_one_by_one(rles: Sequence[str], shape: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """:func:`parse_runs` token by token: the path for strings :func:`scan_runs` refuses."""
    counts = np.zeros(len(rles), np.int64)
    pieces: list[list[str]] = []
    for k, rle in enumerate(rles):
        tokens = _tokens(rle)
        if len(tokens) % 2:
            raise ValueError(f"RLE {k}: odd number of numbers ({len(tokens)}): expected 'start length' pairs")
        counts[k] = len(tokens) // 2
        pieces.append(tokens)
    flat_tokens = [t for p in pieces for t in p]
    joined = "".join(flat_tokens)
    try:
        if not (joined.isascii() and (joined.isdigit() or not joined)):
            raise ValueError("non-digit characters")
        values = np.array(flat_tokens, dtype=np.int64).reshape(-1, 2)
    except (ValueError, OverflowError):
        for k, rle in enumerate(rles):
            problems = rle_problems(rle, shape)
            if problems:
                raise ValueError(f"RLE {k}: {problems[0]}") from None
        raise
    starts1, lengths = values[:, 0], values[:, 1]
    inst = np.repeat(np.arange(len(rles), dtype=np.int64), counts)
    # vectorised checks over all strings; detail from the per-string check
    size = shape[0] * shape[1]
    bad = (starts1 < 1) | (lengths < 1) | (starts1 > size + 1 - lengths)
    if starts1.size > 1:
        same = inst[1:] == inst[:-1]
        bad[1:] |= same & (starts1[1:] < starts1[:-1] + lengths[:-1])
    if bad.any():
        k = int(inst[np.flatnonzero(bad)[0]])
        problems = _run_problems(starts1[inst == k], lengths[inst == k], shape)
        raise ValueError(f"RLE {k}: {problems[0] if problems else 'invalid runs'}")
    return inst, starts1 - 1, lengths


_CHAR_KIND = np.array(
    [0 if chr(c).isspace() else 1 if chr(c).isdigit() else 2 for c in range(128)] + [2] * 128, np.uint8
)
"""Per byte of an ASCII text: 0 = whitespace (what ``str.split()`` splits on), 1 = digit,
2 = anything else (bytes >= 128 never occur: non-ASCII strings are left to
:func:`rle_problems`)."""

_MAX_DIGITS = 18
"""Longest token :func:`scan_runs` converts itself (10**18 - 1 fits int64 with room for
``start + length``); longer ones (leading zeros, or too large) go to :func:`rle_problems`."""

_POW10 = 10 ** np.arange(_MAX_DIGITS, dtype=np.int64)


def scan_runs(rles: Sequence[str], shape: tuple[int, int] = IMAGE_SHAPE) -> tuple[np.ndarray, ...]:
    """Parse and check many RLE strings at once, without raising.

    One pass over the bytes of all strings joined: token boundaries from a digit /
    whitespace table, numbers from their digits (``np.add.reduceat``), then the checks
    of :func:`rle_problems` (pairs, start >= 1, length >= 1, inside the frame, sorted,
    not overlapping) as array comparisons over all runs.

    Args:
        rles: N strings (``""`` is an empty mask).
        shape: (H, W) of the frame.

    Returns:
        ``(ok, inst, starts, lengths)``: ``ok`` (N,) bool; ``ok[k]`` implies
        ``rle_problems(rles[k], shape) == []``, and the runs of every ``ok`` string are in
        ``inst``, ``starts`` (0-based flat indices), ``lengths``: (R,) int64 arrays
        grouped by string index ``inst`` in order, runs in the string's order (exactly
        :func:`parse_runs`' arrays for those strings). ``ok[k]`` False: string k is
        malformed, or of a form left to the per-string :func:`rle_problems` (not a str,
        non-ASCII characters, a number written with more than 18 digits), which says
        what is wrong, if anything.
    """
    n = len(rles)
    ok = np.ones(n, bool)
    empty = np.zeros(0, np.int64)
    texts = list(rles)
    if n == 0:
        return ok, empty, empty, empty
    for k, text in enumerate(texts):  # the rare strings only this module's per-string check handles
        if not (isinstance(text, str) and text.isascii()):
            ok[k] = False
            texts[k] = ""
    joined = " ".join(texts)  # the separator keeps tokens of two strings apart
    sizes = np.fromiter(map(len, texts), np.int64, n) + 1
    string_begin = np.cumsum(sizes) - sizes  # offset of each string in `joined`
    chars = np.frombuffer(joined.encode("ascii"), np.uint8)
    kind = _CHAR_KIND[chars]
    other = np.flatnonzero(kind == 2)
    if other.size:  # a character neither digit nor whitespace: a non-integer token
        ok[np.searchsorted(string_begin, other, side="right") - 1] = False
    digit = np.concatenate(([False], kind == 1, [False]))
    edges = np.flatnonzero(digit[1:] != digit[:-1])  # token starts and ends (exclusive), alternating
    token_begin, token_end = edges[0::2], edges[1::2]
    token_len = token_end - token_begin
    token_of = np.searchsorted(string_begin, token_begin, side="right") - 1
    tokens_per_string = np.bincount(token_of, minlength=n)
    ok &= tokens_per_string % 2 == 0
    long = token_len > _MAX_DIGITS
    if long.any():
        ok[token_of[long]] = False
    # the value of each token kept: its digits times powers of ten, summed per token
    keep = ok[token_of]
    token_begin, token_end, token_len, token_of = token_begin[keep], token_end[keep], token_len[keep], token_of[keep]
    if token_begin.size == 0:
        return ok, empty, empty, empty
    position = np.repeat(token_begin - np.cumsum(token_len) + token_len, token_len) + np.arange(int(token_len.sum()))
    place = np.repeat(token_end, token_len) - position - 1  # 0 for the last digit of a token
    digits = (chars[position] - ord("0")).astype(np.int64)
    values = np.add.reduceat(digits * _POW10[place], np.cumsum(token_len) - token_len)
    starts1, lengths = values[0::2], values[1::2]
    inst = token_of[0::2]
    size = shape[0] * shape[1]
    bad = (starts1 < 1) | (lengths < 1) | (starts1 > size + 1 - lengths)
    # with lengths >= 1, "inside or before the previous run" is both unsorted and overlapping
    bad[1:] |= (inst[1:] == inst[:-1]) & (starts1[1:] < starts1[:-1] + lengths[:-1])
    if bad.any():
        ok[inst[bad]] = False
        good = ok[inst]
        inst, starts1, lengths = inst[good], starts1[good], lengths[good]
    return ok, inst.astype(np.int64), starts1 - 1, lengths


def runs_to_indices(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Expand runs (0-based starts) into the (sum(lengths),) int64 flat indices they cover."""
    total = int(lengths.sum()) if lengths.size else 0
    if total == 0:
        return np.zeros(0, np.int64)
    # index = start of its run + position within the run
    run_of = np.repeat(np.arange(lengths.size), lengths)
    first = np.cumsum(lengths) - lengths
    return starts[run_of] + (np.arange(total, dtype=np.int64) - first[run_of])


def rle_to_indices(rle: str, shape: tuple[int, int] = IMAGE_SHAPE) -> np.ndarray:
    """Flat 0-based row-major indices (int64, ascending) of the pixels of one RLE string.

    Raises:
        ValueError: the string is malformed (see :func:`rle_problems`).
    """
    problems = rle_problems(rle, shape)
    if problems:
        raise ValueError(f"malformed RLE: {problems[0]}")
    _, starts, lengths = parse_runs([rle], shape)
    return runs_to_indices(starts, lengths)


def rle_decode(rle: str, shape: tuple[int, int] = IMAGE_SHAPE) -> np.ndarray:
    """Decode one RLE string into a (H, W) bool mask (``""`` gives an empty mask).

    Raises:
        ValueError: the string is malformed (see :func:`rle_problems`).
    """
    mask = np.zeros(shape[0] * shape[1], bool)
    mask[rle_to_indices(rle, shape)] = True
    return mask.reshape(shape)


def rle_decode_crops(rles: Sequence[str], shape: tuple[int, int] = IMAGE_SHAPE) -> CropMasks:
    """Decode many RLE strings into a :class:`CropMasks` (one crop per string).

    Each crop is its mask's tight bounding box; ``""`` gives a (0, 0) crop at (0, 0).

    Raises:
        ValueError: a string is malformed; names its index and the problem.
    """
    n = len(rles)
    if n == 0:
        return CropMasks.empty(shape)
    inst_runs, starts, lengths = parse_runs(rles, shape)
    pix = runs_to_indices(starts, lengths)
    inst = np.repeat(inst_runs, lengths)
    return crops_from_indices(inst, pix, n, shape)


def crops_from_indices(inst: np.ndarray, pix: np.ndarray, n: int, shape: tuple[int, int]) -> CropMasks:
    """CropMasks from pixel lists: ``pix[j]`` (flat 0-based) belongs to mask ``inst[j]``.

    ``inst`` must be grouped (ascending); masks with no pixel get (0, 0) crops.
    """
    width = shape[1]
    origins = np.zeros((n, 2), np.int64)
    hw = np.zeros((n, 2), np.int64)
    if pix.size:
        ys, xs = np.divmod(pix, width)
        present = np.flatnonzero(np.bincount(inst, minlength=n))
        heads = np.searchsorted(inst, present)
        y0 = np.minimum.reduceat(ys, heads)
        y1 = np.maximum.reduceat(ys, heads) + 1
        x0 = np.minimum.reduceat(xs, heads)
        x1 = np.maximum.reduceat(xs, heads) + 1
        origins[present, 0], origins[present, 1] = y0, x0
        hw[present, 0], hw[present, 1] = y1 - y0, x1 - x0
        sizes = hw[:, 0] * hw[:, 1]
        offsets = np.concatenate(([0], np.cumsum(sizes)))
        buffer = np.zeros(int(offsets[-1]), bool)
        buffer[offsets[inst] + (ys - origins[inst, 0]) * hw[inst, 1] + (xs - origins[inst, 1])] = True
        crops = tuple(
            buffer[a:b].reshape(h, w)
            for a, b, h, w in zip(offsets[:-1].tolist(), offsets[1:].tolist(), hw[:, 0].tolist(), hw[:, 1].tolist())
        )
    else:
        crops = tuple(np.zeros((0, 0), bool) for _ in range(n))
    return CropMasks(crops, origins, shape)
