"""bench/gpu.sh's CPU dry run (every part of the GPU script at toy size) and its FLOP count against the weights of
the Qwen2-VL-2B it describes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu  # noqa: E402  (bench/gpu.py)

PARTS = ("LVLM embed", "LVLM describe", "lightgcn epoch", "freedom epoch", "kNN item graph")


def table_rows(markdown: str) -> list[list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| part ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


@pytest.mark.slow  # runs the benchmark scripts' dry runs
def test_dry_run_writes_every_row_with_finite_positive_numbers(tmp_path: Path) -> None:
    out = tmp_path / "gpu.md"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run([str(ROOT / "bench" / "gpu.sh"), "--dry-run", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    written = out.read_text()
    assert "bench/gpu.sh on CPU" in written and "--dry-run" in written
    rows = table_rows(written)
    assert [r[0].split(" (")[0] for r in rows] == list(PARTS)
    for part, _size, seconds, rate, _unit, tflops, mfu in rows:
        assert math.isfinite(float(seconds)) and float(seconds) > 0, part
        assert math.isfinite(float(rate)) and float(rate) > 0, part
        if part.startswith("LVLM"):
            assert math.isfinite(float(tflops)) and float(tflops) > 0, part
            assert mfu == "unknown"  # no bf16 peak for a CPU


def test_dry_run_refuses_to_write_into_results(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        gpu.main(["--dry-run", "--out", str(gpu.RESULTS_FILE)])
    assert "other than bench/RESULTS.md" in capsys.readouterr().err


@pytest.mark.slow  # builds the 2B Qwen2-VL on the meta device
def test_flops_per_token_and_patch_are_twice_the_2b_weights() -> None:
    """One text token costs 2 FLOPs per language-model weight (+ its attention to itself), one patch 2 per vision
    block weight plus its share of the patch embedding and merger: checked against the real module shapes."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    config = Qwen2VLConfig.from_dict(json.loads(gpu.CONFIG_FILE.read_text()))
    with torch.device("meta"):
        model = Qwen2VLForConditionalGeneration(config)

    def linear_weights(module: torch.nn.Module) -> int:
        return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv3d))

    text = config.get_text_config()
    self_attention = 2 * text.num_hidden_layers * text.hidden_size  # QK^T and AV of a 1-token sequence
    assert gpu.lvlm_flops(config, 1, 0, 0) - self_attention == 2 * linear_weights(model.model.language_model)
    assert 2 * linear_weights(model.model.language_model) == pytest.approx(2 * 1.31e9, rel=0.01)  # Qwen2-1.5B

    vision = model.model.visual
    merge = config.vision_config.spatial_merge_size ** 2
    per_patch = 2 * (linear_weights(vision.patch_embed) + linear_weights(vision.blocks)
                     + linear_weights(vision.merger) / merge)
    patch_attention = config.vision_config.depth * 4 * config.vision_config.embed_dim
    assert gpu.lvlm_flops(config, 0, 1, 0) - patch_attention == pytest.approx(per_patch)
    assert gpu.lvlm_flops(config, 0, 0, 1) == 2 * model.lm_head.weight.numel()
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(2.21e9, rel=0.01)  # the 2B's size


def test_peak_table_matches_device_names_most_specific_first() -> None:
    assert gpu.peak_of("NVIDIA H200") == 989e12 and gpu.peak_of("NVIDIA H100 PCIe") == 756e12
    assert gpu.peak_of("NVIDIA A100-SXM4-80GB") == 312e12 and gpu.peak_of("NVIDIA A10G") == 70e12
    assert gpu.peak_of("NVIDIA L40S") == 362e12 and gpu.peak_of("Some future GPU") is None
