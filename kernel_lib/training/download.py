"""Initial weights from the network: ``train --init-weights URL`` or a model-zoo name (stdlib + tqdm).

A training notebook with internet on can start from the public baseline's COCO Mask
R-CNN weights; one with internet off (every code-competition run) cannot, and is told
at once how to attach the file as a dataset instead. What is accepted:

- ``https://.../model_final_f10217.pkl`` (or ``http://``), optionally with a pinned
  checksum as pip writes one: ``URL#sha256=<64 hex digits>``;
- a detectron2 model-zoo name, ``zoo:COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml``
  (its URL from :func:`kernel_lib.d2config.zoo_checkpoint_url`).

The file is downloaded once into a cache folder (``<name>.part`` renamed when complete),
its sha256 checked against the pin (a mismatch deletes the download and stops), and a
cached file with its pin is not fetched again. The run's meta.json records the URL and
the sha256 (:class:`Download`).
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ZOO_PREFIX = "zoo:"
"""``--init-weights zoo:<model-zoo config name>``."""

TIMEOUT_S = 30.0
"""Seconds a connection may stay silent before the download is given up."""

OFFLINE_FIX = (
    "with internet off (Kaggle code competitions), download the file where you have the network, "
    "add it to a Kaggle dataset attached to the notebook and pass its path: --init-weights "
    "/kaggle/input/<dataset>/<file>.pkl"
)


@dataclass(frozen=True)
class Download:
    """A fetched weights file: its local path, where it came from, its sha256."""

    path: Path
    url: str
    sha256: str


def is_remote(spec: str) -> bool:
    """Whether ``--init-weights`` names a URL or a model-zoo name (else a local path)."""
    return spec.startswith((ZOO_PREFIX, "http://", "https://"))


def parse_spec(spec: str) -> tuple[str, str]:
    """(URL, pinned sha256 or "") of a remote ``--init-weights``.

    Raises:
        ValueError: an unknown zoo name, a fragment other than ``sha256=<64 hex>``, or a
            URL without a file name.
    """
    if spec.startswith(ZOO_PREFIX):
        from kernel_lib.d2config import zoo_checkpoint_url

        return zoo_checkpoint_url(spec[len(ZOO_PREFIX) :]), ""
    url, _, fragment = spec.partition("#")
    pin = ""
    if fragment:
        match = re.fullmatch(r"sha256=([0-9a-fA-F]{64})", fragment)
        if not match:
            raise ValueError(f"--init-weights {spec}: expected URL#sha256=<64 hex digits>, got #{fragment}")
        pin = match.group(1).lower()
    if not Path(urllib.parse.urlparse(url).path).name:
        raise ValueError(f"--init-weights {spec}: the URL names no file")
    return url, pin


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_weights(spec: str, cache_dir: str | Path, progress: bool = True) -> Download:
    """Download the weights ``spec`` names into ``cache_dir`` (see the module docstring).

    Raises:
        ValueError: no network or the server refused (with :data:`OFFLINE_FIX`), a
            checksum mismatch (the download is deleted), a bad spec.
    """
    url, pin = parse_spec(spec)
    cache_dir = Path(cache_dir)
    target = cache_dir / Path(urllib.parse.urlparse(url).path).name
    if target.is_file() and pin and file_sha256(target) == pin:
        return Download(target, url, pin)
    cache_dir.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    try:
        _download(url, part, progress)
        digest = file_sha256(part)
        if pin and digest != pin:
            raise ValueError(
                f"--init-weights {spec}: the file downloaded has sha256 {digest}, not the pinned {pin}; "
                "check the URL (the download was deleted)"
            )
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)
    return Download(target, url, digest)


def _download(url: str, out: Path, progress: bool) -> None:
    from tqdm.auto import tqdm

    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, out.open("wb") as f:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=out.name[:-5], disable=not progress) as bar:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    f.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as err:
        raise ValueError(f"--init-weights {url}: the server answered {err.code} {err.reason}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        reason = getattr(err, "reason", err)
        raise ValueError(f"--init-weights {url}: cannot download ({reason}); {OFFLINE_FIX}") from None
