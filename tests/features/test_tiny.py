from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rmm.features.tiny import TINY_BUILDERS, TinyBuilder, build_tiny, resolve_model_id, tiny_model_path
from tests.features.tiny_builders import TEST_ARCHS


def test_tiny_qwen2_vl_loads_through_auto_classes(tiny_qwen2_vl: str) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_qwen2_vl)
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen2_vl, dtype=torch.float32)
    assert type(processor).__name__ == "Qwen2VLProcessor"
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"
    assert sum(p.numel() for p in model.parameters()) < 300_000
    assert processor.tokenizer.convert_tokens_to_ids("<|image_pad|>") == model.config.image_token_id
    assert processor.chat_template


def test_every_tiny_arch_is_registered() -> None:
    """The product's three (what its configs and benchmarks run) and the LVLM families the tests add."""
    assert set(TINY_BUILDERS) == {"qwen2-vl", "vit", "clip", *TEST_ARCHS}


def test_resolve_model_id_builds_once_and_passes_other_ids_through(tiny_qwen2_vl: str) -> None:
    path = Path(tiny_qwen2_vl)
    assert path.name == f"qwen2-vl-v{TINY_BUILDERS['qwen2-vl'].version}"
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_id("tiny:qwen2-vl") == tiny_qwen2_vl
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no staging dirs left
    assert resolve_model_id("Qwen/Qwen2-VL-2B-Instruct") == "Qwen/Qwen2-VL-2B-Instruct"
    assert resolve_model_id("/models/local") == "/models/local"


def test_unknown_tiny_arch_lists_available(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="tiny:qwen2-vl"):
        tiny_model_path("no-such-arch", tmp_path)


@pytest.mark.slow  # builds every tiny model twice
@pytest.mark.parametrize("arch", sorted(TINY_BUILDERS))
def test_builds_are_identical_in_separate_dirs(tmp_path: Path, arch: str) -> None:
    first, second = build_tiny(arch, tmp_path / "a"), build_tiny(arch, tmp_path / "b")
    files = sorted(p.name for p in first.iterdir())
    assert files == sorted(p.name for p in second.iterdir()) and "config.json" in files
    for name in files:
        if name != "model.safetensors":
            assert (first / name).read_bytes() == (second / name).read_bytes(), name
    weights_a, weights_b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_a_build_in_another_process_is_identical(tmp_path: Path, tiny_qwen2_vl: str) -> None:
    """Trained BPE merges differ between runs; the tiny tokenizer and weights must not."""
    code = f"from rmm.features.tiny import build_tiny; build_tiny('qwen2-vl', {str(tmp_path)!r})"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert (tmp_path / "tokenizer.json").read_bytes() == (Path(tiny_qwen2_vl) / "tokenizer.json").read_bytes()
    assert (tmp_path / "model.safetensors").read_bytes() == (Path(tiny_qwen2_vl) / "model.safetensors").read_bytes()


def test_a_concurrent_build_wins_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process renaming its build into place first: ours is discarded, theirs is used."""
    target = tmp_path / "tiny" / "fake-v1"

    def build(staging: Path) -> None:
        (staging / "ours").write_text("ours")
        target.mkdir(parents=True)
        (target / "theirs").write_text("theirs")

    monkeypatch.setitem(TINY_BUILDERS, "fake", TinyBuilder("fake", 1, build))
    assert tiny_model_path("fake", tmp_path) == target
    assert sorted(p.name for p in target.iterdir()) == ["theirs"]
    assert [p.name for p in target.parent.iterdir()] == ["fake-v1"]
