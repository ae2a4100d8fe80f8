"""The step's numerics: ``train.amp`` resolution and the channels-last layout of 4-D and 5-D image batches."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from pipeline.config import load_config
from pipeline.training import step
from pipeline.training.step import autocast_dtype, to_device

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


def test_amp_defaults_to_auto() -> None:
    assert load_config(None).train.amp == "auto"


@pytest.mark.parametrize(
    ("amp", "device", "expected"),
    [
        ("auto", CUDA, torch.bfloat16),
        ("auto", CPU, None),
        ("auto", None, None),
        ("off", CUDA, None),
        ("bf16", CPU, torch.bfloat16),
        ("fp16", CUDA, torch.float16),
    ],
)
def test_autocast_dtype_resolves_auto_on_the_device(
    amp: str, device: torch.device | None, expected: torch.dtype | None
) -> None:
    # Resolving needs no GPU: only the device's type is read.
    assert autocast_dtype(amp, device) is expected


@pytest.mark.parametrize("native", [True, False])
def test_auto_stays_float32_on_a_cpu_even_with_bf16_units(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    monkeypatch.setattr(step, "cpu_has_native_bf16", lambda: native)
    assert autocast_dtype("auto", CPU) is None
    assert autocast_dtype("bf16", CPU) is torch.bfloat16


@pytest.mark.parametrize("written", ["train.amp=off", "train.amp='off'", "train.amp=false"])
def test_off_reads_as_off_although_yaml_reads_it_as_false(written: str) -> None:
    assert load_config(None, [written]).train.amp == "off"


@pytest.mark.skipif(sys.platform != "linux", reason="the CPU's flags are read from /proc/cpuinfo, which only Linux has")
def test_the_bf16_probe_agrees_with_the_cpu_flags() -> None:
    flags = Path("/proc/cpuinfo").read_text().split()
    assert step.cpu_has_native_bf16() == ("avx512_bf16" in flags or "amx_tile" in flags)


def test_image_groups_flatten_to_channels_last_views() -> None:
    grid = torch.randn(2, 9, 3, 8, 8)  # [B, G*G, 3, P, P]
    moved = to_device({"grid": grid, "image": grid[:, 0]}, CPU, channels_last=True)
    flat = moved["grid"].flatten(0, 1)
    assert flat.is_contiguous(memory_format=torch.channels_last)
    assert flat.data_ptr() == moved["grid"].data_ptr()  # a view: the backbone gets channels-last without a copy
    torch.testing.assert_close(flat, grid.flatten(0, 1), rtol=0, atol=0)
    assert moved["image"].is_contiguous(memory_format=torch.channels_last)
    plain = to_device({"grid": grid}, CPU, channels_last=False)["grid"]
    assert plain.is_contiguous() and plain.flatten(0, 1).is_contiguous()
