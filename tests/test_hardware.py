"""`precision: auto` follows what the CPU computes natively (pipeline/hardware.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.config import ParamsError, TrainerConfig, from_dict
from pipeline.hardware import bf16_is_fast, cpu_has_bf16, resolve_precision

CPUINFO = Path("/proc/cpuinfo")


@pytest.mark.skipif(not CPUINFO.is_file(), reason="reads the CPU's flags from Linux's /proc/cpuinfo")
def test_bf16_is_native_exactly_where_the_cpu_flags_say_so() -> None:
    flags = set(CPUINFO.read_text().split())
    assert cpu_has_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})
    assert bf16_is_fast("cpu") == cpu_has_bf16()


def test_auto_is_bf16_where_native_and_fp32_elsewhere_and_a_named_precision_is_kept() -> None:
    assert resolve_precision("auto", "cpu") == ("bf16-mixed" if cpu_has_bf16() else "32-true")
    for named in ("32-true", "bf16-mixed", "16-mixed"):
        assert resolve_precision(named, "cpu") == named
    if not torch.cuda.is_available():
        assert resolve_precision("auto", "auto") == resolve_precision("auto", "cpu")
        assert not bf16_is_fast("cuda")


def test_auto_is_the_default_and_a_valid_param() -> None:
    assert TrainerConfig().precision == "auto"
    assert from_dict(TrainerConfig, {"precision": "auto"}, "trainer").precision == "auto"
    with pytest.raises(ParamsError, match=r"`trainer\.precision` = 'fast'.*auto"):
        from_dict(TrainerConfig, {"precision": "fast"}, "trainer")
