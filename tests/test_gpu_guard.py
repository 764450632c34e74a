"""The CUDA capability check at model loading, on the CPU with torch.cuda patched."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from kernel_lib.config import EnsembleConfig, InferenceConfig  # noqa: E402
from kernel_lib.model import check_cuda_arch, load_models  # noqa: E402

CU128_ARCHS = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]
"""What a cu128 torch wheel reports (no sm_60: no P100)."""


def fake_gpu(monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], archs: list[str], name: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(archs))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)


def test_load_models_on_a_p100_stops_before_loading_with_the_gpu_capability_and_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake_gpu(monkeypatch, (6, 0), CU128_ARCHS, "Tesla P100-PCIE-16GB")
    # the folder does not even exist: the GPU is checked first
    with pytest.raises(ValueError) as info:
        load_models(tmp_path / "models", EnsembleConfig(), InferenceConfig(device="cuda"))
    message = str(info.value)
    assert "Tesla P100-PCIE-16GB" in message and "capability 6.0" in message
    assert "sm_75" in message and torch.__version__ in message
    assert '"machine_shape": "NvidiaTeslaT4"' in message and "--device cpu" in message


@pytest.mark.parametrize(
    ("capability", "archs"),
    [
        ((7, 5), CU128_ARCHS),  # T4: exact cubin
        ((8, 9), ["sm_80", "sm_86"]),  # L4 (8.9) runs sm_86 cubins (same major, lower minor)
        ((12, 1), ["sm_90", "compute_90"]),  # newer than every cubin: PTX compute_90 is compiled for it
        ((9, 0), ["sm_80", "sm_90a"]),  # arch-specific sm_90a runs on 9.0 exactly
    ],
)
def test_supported_capabilities_pass(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], archs: list[str]
) -> None:
    fake_gpu(monkeypatch, capability, archs, "some GPU")
    check_cuda_arch(torch.device("cuda:0"))


@pytest.mark.parametrize(
    ("capability", "archs"),
    [
        ((6, 0), ["sm_75", "sm_80", "compute_80"]),  # older than every cubin and the PTX
        ((8, 0), ["sm_86", "sm_90"]),  # cubins of a higher minor do not run
        ((12, 0), ["sm_80", "sm_90"]),  # another major without PTX
        ((10, 0), ["sm_90a"]),  # sm_90a is 9.0 only
    ],
)
def test_unsupported_capabilities_stop(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], archs: list[str]
) -> None:
    fake_gpu(monkeypatch, capability, archs, "some GPU")
    with pytest.raises(ValueError, match=rf"capability {capability[0]}\.{capability[1]}, but torch"):
        check_cuda_arch(torch.device("cuda:0"))


def test_cpu_is_never_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object) -> None:
        raise AssertionError("torch.cuda was queried for a CPU device")

    monkeypatch.setattr(torch.cuda, "get_device_capability", fail)
    monkeypatch.setattr(torch.cuda, "get_arch_list", fail)
    check_cuda_arch(torch.device("cpu"))
