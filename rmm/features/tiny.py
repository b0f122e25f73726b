"""Tiny randomly initialised LVLMs built offline, so tests and quickstarts exercise the real hub code path.

``tiny:<arch>`` in a config names one of these. It is built from config objects (no download), saved with
``save_pretrained`` and then loaded exactly like a hub checkpoint: ``AutoProcessor`` +
``AutoModelForImageTextToText``. Builds are deterministic (fixed vocabulary, seeded weights in a forked RNG)
so two machines, or two test runs, get byte-identical tokenizers and identical weights; they are cached under
``$RMM_CACHE/tiny/<arch>-v<version>`` and built at most once per cache (temp dir + atomic rename).

Adding an architecture is one builder function registered with :func:`tiny_builder`.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

TINY_PREFIX = "tiny:"
CACHE_ENV = "RMM_CACHE"
_SEED = 1234

# The chat template shipped with Qwen/Qwen2-VL-*-Instruct: the tiny model must format prompts like the hub one.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN2_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)


@dataclass(frozen=True)
class TinyBuilder:
    """How to build one tiny architecture; bump ``version`` whenever the built files would change."""

    arch: str
    version: int
    build: Callable[[Path], None]


TINY_BUILDERS: dict[str, TinyBuilder] = {}


def tiny_builder(arch: str, version: int) -> Callable[[Callable[[Path], None]], Callable[[Path], None]]:
    """Register ``build(target_dir)`` as the builder of ``tiny:<arch>``."""

    def register(build: Callable[[Path], None]) -> Callable[[Path], None]:
        if arch in TINY_BUILDERS:
            raise KeyError(f"tiny architecture {arch!r} is registered twice")
        TINY_BUILDERS[arch] = TinyBuilder(arch, version, build)
        return build

    return register


def cache_root() -> Path:
    """``$RMM_CACHE`` or ``~/.cache/rmm``: where built tiny models live."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/rmm").expanduser()


def resolve_model_id(model: str, cache_dir: str | Path | None = None) -> str:
    """Map ``tiny:<arch>`` to the local path of its (built on demand) model; return anything else unchanged.

    Args:
        model: a hub id, a local path, or ``tiny:<arch>``.
        cache_dir: cache root for tiny models; default :func:`cache_root`. Passed explicitly to Ray actors,
            whose environment may not carry the driver's ``RMM_CACHE``.
    """
    if not model.startswith(TINY_PREFIX):
        return model
    return str(tiny_model_path(model[len(TINY_PREFIX):], cache_dir))


def tiny_model_path(arch: str, cache_dir: str | Path | None = None) -> Path:
    """The cached directory of ``tiny:<arch>``, building it first if absent.

    Concurrent callers (several Ray actors on one node) each build into a private temp dir and rename it into
    place; the first rename wins and the others discard their copy, so a reader never sees a partial model.
    """
    builder = _builder(arch)
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    target = root / "tiny" / f"{arch}-v{builder.version}"
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        log.info("building tiny:%s into %s", arch, target)
        builder.build(staging)
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():
                raise
            log.info("tiny:%s was built concurrently; using %s", arch, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target


def build_tiny(arch: str, target_dir: str | Path) -> Path:
    """Build ``tiny:<arch>`` into ``target_dir`` (no caching); used for determinism checks."""
    target = Path(target_dir)
    target.mkdir(parents=True, exist_ok=True)
    _builder(arch).build(target)
    return target


def _builder(arch: str) -> TinyBuilder:
    if arch not in TINY_BUILDERS:
        raise KeyError(f"Unknown tiny architecture {arch!r}. Available: "
                       f"{sorted(TINY_PREFIX + a for a in TINY_BUILDERS)}")
    return TINY_BUILDERS[arch]


def byte_level_vocab(special_tokens: tuple[str, ...]) -> dict[str, int]:
    """A merge-free byte-level BPE vocabulary: the 256 byte symbols (sorted) then the special tokens.

    Untrained, hence identical on every machine (trained BPE merges are not stable across runs), and it still
    encodes any UTF-8 text, one token per byte.
    """
    from tokenizers import pre_tokenizers

    vocab = {symbol: i for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for token in special_tokens:
        vocab[token] = len(vocab)
    return vocab


@tiny_builder("qwen2-vl", version=1)
def build_qwen2_vl(target: Path) -> None:
    """Qwen2-VL with a 64-d, 2-layer text model and a 1-block 32-d vision tower (~0.18M parameters).

    Real processor pieces (``Qwen2VLImageProcessor`` with patch 14 / merge 2, the hub chat template, the Qwen2
    special tokens), so a 224 px image becomes at most 64 image tokens as in the full model.
    """
    import torch
    from transformers import (
        Qwen2Tokenizer,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = Qwen2Tokenizer(vocab=byte_level_vocab(QWEN2_SPECIAL_TOKENS), merges=[],
                               extra_special_tokens=list(QWEN2_SPECIAL_TOKENS[1:]), model_max_length=4096)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN2_SPECIAL_TOKENS}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(size={"shortest_edge": 56 * 56, "longest_edge": 224 * 224}),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
            # head_dim 16: M-RoPE sections (temporal, height, width) must sum to head_dim / 2.
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={"depth": 1, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2,
                       "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        model = Qwen2VLForConditionalGeneration(config)
    model.save_pretrained(target)
    processor.save_pretrained(target)
