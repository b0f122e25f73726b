"""Tiny randomly initialised models built offline, so tests and quickstarts exercise the real hub code path.

``tiny:<arch>`` in a config names one of these: the LVLM ``qwen2-vl`` (what the quickstart, the sweep config and
the benchmarks run) and the classic encoders ``vit`` and ``clip``. The tests register more LVLM families (Qwen2.5-VL,
LLaVA, LLaVA-NeXT, SmolVLM) from their own module, to check that every family loads through the same code path;
the product ships only what it runs. Each is built from config objects (no download), saved with
``save_pretrained`` and then loaded exactly like a hub checkpoint (``AutoProcessor`` +
``AutoModelForImageTextToText`` for the LVLMs, ``AutoModel``/``CLIPModel`` for the encoders). Builds are
deterministic (fixed vocabulary and merges, seeded weights in a forked RNG)
so two machines, or two test runs, get byte-identical tokenizers and identical weights; they are cached under
``$RMM_CACHE/tiny/<arch>-v<version>`` and built at most once per cache (temp dir + atomic rename).

Adding an architecture is one builder function registered with :func:`tiny_builder`; the building blocks
(:func:`byte_level_tokenizer`, :func:`build_qwen_vl`, :func:`seeded`, :func:`save_model`) are public for that.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from rmm.errors import UnknownNameError
from rmm.storage import cache_root

if TYPE_CHECKING:
    from tokenizers.pre_tokenizers import PreTokenizer
    from transformers import Qwen2Tokenizer

log = logging.getLogger(__name__)

TINY_PREFIX = "tiny:"
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
        raise UnknownNameError(f"Unknown tiny architecture {arch!r}. Available: "
                               f"{sorted(TINY_PREFIX + a for a in TINY_BUILDERS)}")
    return TINY_BUILDERS[arch]


# What the tiny tokenizers' merges are learnt from: fixed text, so every build gets the same merges. Catalogue-like
# English, so prompts tokenize to about as many tokens as with a real LVLM tokenizer (~4 characters per token)
# and a tiny model's cost per item is shaped like a real one's (a byte per token would make every prompt ~4x
# longer and attention-bound). Changing it changes every tiny LVLM: bump their versions.
MERGE_CORPUS = """
You describe catalogue items for a recommender system. You describe e-commerce products for a recommender system.
This item is shown in the image. This product is shown in the image. Title: Description: Summarize this item in
one word: Summarize this product (type, style, colour, use) in one word. Describe this product by filling in each
field below with a few words. Answer with exactly these lines and nothing else: Category: Age group: Purpose:
Material: Usage context: Type: Colour: Wear location: Style: Pet type: Pattern: Audience: what kind of item it is,
who it is for, what it is used for, what it is made of, its look or style, its main colour.
A soft cotton baby blanket with a classic stripe pattern, machine washable, a gift for newborns and toddlers.
This leather shoe has a vintage look. Minimalist design in wool: a hat for every day. A sporty shirt made of cotton.
Red, orange, yellow, green, blue, purple, black and white; solid, stripes, dots and checks; ceramic mug, metal lamp.
Easy to care for. Ships in recycled packaging. A customer favourite. Lightweight and durable. Comes with a one-year
warranty. Made in small batches. The stroller folds with one hand and fits in the car; the bottle is made of
silicone and plastic; the toy is safe for children; the dog bed is washable; the cat toy is made of rubber.
circle square drawn on a white background with the of and to in is for on that this with as by be are it from
""".strip()
_NUM_MERGES = 600
_MERGES: dict[str, list[tuple[str, str]]] = {}
_Built = TypeVar("_Built")


def train_merges(pre_tokenizer: PreTokenizer, corpus: str = MERGE_CORPUS, num_merges: int = _NUM_MERGES
                 ) -> list[tuple[str, str]]:
    """Byte-level BPE merges learnt from ``corpus``, deterministically: the most frequent adjacent pair first,
    ties broken by the pair itself (the ``tokenizers`` trainer breaks them differently from run to run)."""
    words = Counter(piece for piece, _ in pre_tokenizer.pre_tokenize_str(corpus))
    splits = {word: list(word) for word in words}
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            symbols = splits[word]
            for pair in pairwise(symbols):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        for word, symbols in splits.items():
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            splits[word] = merged
    return merges


def byte_level_vocab(special_tokens: tuple[str, ...], merges: Sequence[tuple[str, str]] = ()) -> dict[str, int]:
    """A byte-level BPE vocabulary: the 256 byte symbols (sorted), the merged symbols in merge order, then the
    special tokens. It encodes any UTF-8 text (at worst one token per byte)."""
    from tokenizers import pre_tokenizers

    vocab = {symbol: i for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    for token in special_tokens:
        vocab[token] = len(vocab)
    return vocab


def byte_level_tokenizer(special_tokens: tuple[str, ...], *, pad: str | None = None, eos: str | None = None,
                         bos: str | None = None, extra_special: tuple[str, ...] = ()) -> Qwen2Tokenizer:
    """A byte-level BPE tokenizer (``Qwen2Tokenizer`` class) with the deterministic :func:`train_merges` merges.

    ``special_tokens`` are in the vocabulary and never split; ``extra_special`` (default: all of them) are
    registered as additional special tokens (what processors look up by name). Used for every tiny LVLM: the
    tokenizer class of the hub checkpoint does not matter to the processor or the model, only the token ids do.
    """
    from transformers import Qwen2Tokenizer

    extra = list(extra_special or special_tokens)
    given = {"pad_token": pad, "eos_token": eos, "bos_token": bos}
    names = {key: value for key, value in given.items() if value is not None}
    untrained = Qwen2Tokenizer(vocab=byte_level_vocab(special_tokens), merges=[])
    key = str(untrained.backend_tokenizer.pre_tokenizer)
    if key not in _MERGES:  # ~1 s of pure Python: once per process and pre-tokenizer
        _MERGES[key] = train_merges(untrained.backend_tokenizer.pre_tokenizer)
    merges = _MERGES[key]
    # The annotations say merges are "a b" strings and unk_token a string; the tokenizer takes pairs and None too.
    return Qwen2Tokenizer(vocab=byte_level_vocab(special_tokens, merges), merges=merges,  # type: ignore[arg-type]
                          extra_special_tokens=extra, model_max_length=4096, unk_token=None,  # type: ignore[arg-type]
                          **names)


def seeded(factory: Callable[[], _Built]) -> _Built:
    """Build a model with weights from a fixed seed without touching the caller's RNG."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        return factory()


class _Saveable(Protocol):
    """A transformers model, processor or image processor: what :func:`save_model` writes."""

    def save_pretrained(self, save_directory: str | Path) -> Any: ...


def save_model(target: Path, model: _Saveable, processor: _Saveable) -> None:
    """Save a built model and its processor as a hub checkpoint directory, the form every loader reads."""
    model.save_pretrained(target)
    processor.save_pretrained(target)


def _qwen_text_config(tokenizer: Qwen2Tokenizer, ids: dict[str, int]) -> dict[str, Any]:
    return {
        "vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
        # head_dim 16: M-RoPE sections (temporal, height, width) must sum to head_dim / 2.
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }


def _qwen_tokenizer() -> tuple[Qwen2Tokenizer, dict[str, int]]:
    tokenizer = byte_level_tokenizer(QWEN2_SPECIAL_TOKENS, extra_special=QWEN2_SPECIAL_TOKENS[1:])
    vocab = tokenizer.get_vocab()  # the special tokens are whole entries of it (byte_level_vocab)
    return tokenizer, {token: vocab[token] for token in QWEN2_SPECIAL_TOKENS}


def build_qwen_vl(target: Path, processor_class: type, config_class: type, model_class: type,
                  vision_config: dict[str, Any]) -> None:
    """A tiny model of the Qwen2-VL family: real processor pieces (``Qwen2VLImageProcessor`` with patch 14 /
    merge 2, the hub chat template, the Qwen2 special tokens), so a 224 px image becomes at most 64 image tokens
    as in the full model; the 64-d, 2-layer text model; the family's classes and ``vision_config``. Public so
    that another member of the family (the tests' Qwen2.5-VL) is one call with its own classes."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    tokenizer, ids = _qwen_tokenizer()
    processor = processor_class(
        image_processor=Qwen2VLImageProcessor(size={"shortest_edge": 56 * 56, "longest_edge": 224 * 224}),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    config = config_class(
        text_config=_qwen_text_config(tokenizer, ids),
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    save_model(target, seeded(lambda: model_class(config)), processor)


@tiny_builder("qwen2-vl", version=2)
def build_qwen2_vl(target: Path) -> None:
    """Qwen2-VL with a 1-block 32-d vision tower (~0.18M parameters in all)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    build_qwen_vl(target, Qwen2VLProcessor, Qwen2VLConfig, Qwen2VLForConditionalGeneration,
                  {"depth": 1, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2,
                   "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2})


# ------------------------------------------------------------------------------------- classic image/text models

@tiny_builder("vit", version=1)
def build_vit(target: Path) -> None:
    """ViT (``ViTModel`` + ``ViTImageProcessor``): 32 px input, patch 8, 2 layers of width 32."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=8)
    model = seeded(lambda: ViTModel(config))
    save_model(target, model, ViTImageProcessor(size={"height": 32, "width": 32}))


CLIP_SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


@tiny_builder("clip", version=1)
def build_clip(target: Path) -> None:
    """CLIP (``CLIPModel`` + ``CLIPProcessor``): 32 px / patch 8 vision tower and a 2-layer text tower of width 32,
    projected to 16-d; the real CLIP tokenizer class over a merge-free byte vocabulary (words end in ``</w>``)."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate([*alphabet, *(f"{s}</w>" for s in alphabet), *CLIP_SPECIAL_TOKENS])}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    eos = vocab["<|endoftext|>"]
    config = CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 77, "bos_token_id": vocab["<|startoftext|>"],
                     "eos_token_id": eos, "pad_token_id": eos},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    save_model(target, seeded(lambda: CLIPModel(config)), processor)
