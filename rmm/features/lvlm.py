"""LVLM item representations: embeddings (one forward pass over a chat prompt with the item's image, title and
text, pooled from a hidden layer) and structured descriptions (generation from a describe template).

The loading and preprocessing are those of any hub checkpoint (``AutoProcessor``, the model's own chat
template, ``AutoModelForImageTextToText``), so ``tiny:qwen2-vl`` in tests and ``Qwen/Qwen2-VL-2B-Instruct`` on a
GPU cluster run the same lines. No Ray here: the Ray actor wrapper is in :mod:`rmm.features.extractors`.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

import numpy as np
import torch
from PIL import Image

from rmm.errors import ConfigError
from rmm.features.prompts import DescribeTemplate, build_describe_messages, build_messages, get_template

if TYPE_CHECKING:
    from transformers import GenerationMixin, PreTrainedModel

    class ImageTextToTextModel(PreTrainedModel, GenerationMixin):
        """What ``AutoModelForImageTextToText`` loads: a hub model that also generates."""

log = logging.getLogger(__name__)

POOLINGS = ("mean", "image_mean", "text_mean", "last")
_SENTINEL = "\x00rmm-item-text\x00"


def check_pooling(pooling: str) -> None:
    if pooling not in POOLINGS:
        raise ConfigError(f"Unknown pooling {pooling!r}; valid poolings: {list(POOLINGS)}")


def pool_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor, image_mask: torch.Tensor,
                pooling: str) -> torch.Tensor:
    """Pool one hidden layer into one vector per sequence.

    ``mean`` averages all non-pad tokens, ``image_mean`` the image tokens, ``text_mean`` the other tokens, and
    ``last`` takes the last non-pad token (left or right padding). A row with no token of the chosen kind (an
    item without an image under ``image_mean``) falls back to all its non-pad tokens rather than a zero vector.

    Shapes:
        hidden: (B, T, H); attention_mask: (B, T) of 0/1; image_mask: (B, T) bool; returns (B, H) float32.
    """
    check_pooling(pooling)
    hidden = hidden.float()
    valid = attention_mask.bool()
    if pooling == "last":
        positions = torch.arange(valid.shape[1], device=valid.device).expand_as(valid)
        last = torch.where(valid, positions, -1).amax(dim=1)  # (B,)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    mask = {"mean": valid, "image_mean": valid & image_mask, "text_mean": valid & ~image_mask}[pooling]
    mask = torch.where(mask.any(dim=1, keepdim=True), mask, valid)
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class LVLMOptions(TypedDict, total=False):
    """How :class:`LVLM` loads a model, the keyword arguments its subclasses pass through."""

    dtype: str
    trust_remote_code: bool
    device: str
    attn_implementation: str


class GenerationOptions(TypedDict, total=False):
    """The keyword arguments of ``generate`` that :class:`LVLMDescriber` sets (None unsets a checkpoint's default)."""

    max_new_tokens: int
    do_sample: bool
    temperature: float | None
    top_p: float | None
    top_k: int | None
    pad_token_id: int


_LOADED: dict[tuple[str, str, bool, str, str], tuple[Any, ImageTextToTextModel]] = {}


def load_lvlm(model_path: str, dtype: str = "float32", trust_remote_code: bool = False, device: str = "cpu",
              attn_implementation: str = "sdpa") -> tuple[Any, ImageTextToTextModel]:
    """``AutoProcessor`` and ``AutoModelForImageTextToText`` (eval mode, on ``device``), loaded once per process.

    The processor is typed ``Any``: its class, and so its methods (a tokenizer alone, or one with an image
    processor), depend on the checkpoint's architecture.

    Extractors that share an actor (an embed and a describe extractor of the same model in one ``group``) get
    the same objects. ``attn_implementation`` falls back to the model's default, with a log line, when the
    architecture does not support it (or flash-attn is not installed).
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    key = (model_path, dtype, trust_remote_code, device, attn_implementation)
    if key in _LOADED:
        return _LOADED[key]
    if trust_remote_code:
        log.warning("trust_remote_code=True: running code shipped with %s; use only repositories you trust",
                    model_path)
    processor = AutoProcessor.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    kwargs = {"dtype": getattr(torch, dtype), "trust_remote_code": trust_remote_code}
    try:
        model = AutoModelForImageTextToText.from_pretrained(model_path, attn_implementation=attn_implementation,
                                                            **kwargs)
    except (ValueError, ImportError) as err:  # unsupported by the architecture, or flash-attn missing
        log.warning("%s: attn_implementation=%s unavailable (%s); using the model's default attention",
                    model_path, attn_implementation, err)
        model = AutoModelForImageTextToText.from_pretrained(model_path, **kwargs)
    _LOADED[key] = processor, model.eval().to(device)
    return _LOADED[key]


class LVLM:
    """A loaded LVLM with its processor: chat prompts, batched model inputs, input-length estimates.

    Args:
        model_path: hub id or local directory (resolve ``tiny:`` ids first with
            :func:`rmm.features.tiny.resolve_model_id`).
        dtype: torch dtype name of the weights; outputs are float32 regardless.
        attn_implementation: ``sdpa`` (default), ``eager``, ``flash_attention_2``.
    """

    def __init__(self, model_path: str, *, dtype: str = "float32", trust_remote_code: bool = False,
                 device: str = "cpu", attn_implementation: str = "sdpa") -> None:
        self.model_path = model_path
        self.device = device
        self.processor, self.model = load_lvlm(model_path, dtype, trust_remote_code, device, attn_implementation)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.image_token_id = _image_token_id(self.processor, self.model)
        self._shapes: dict[str, str | None] = {}  # conversation shape -> its rendering with _SENTINEL (see chat)

    def chat(self, messages: Sequence[list[dict[str, Any]]]) -> list[str]:
        """Chat-formatted prompt strings (the model's own template), ending with the opened assistant turn.

        ``apply_chat_template`` validates the messages and renders the Jinja template on every call, and every
        item's conversation has the same shape with only the last text differing. So each shape is rendered once
        with a sentinel in place of that text, and items substitute theirs; the first item of each shape is also
        rendered the slow way and must match, or that shape always takes the slow way (a template that transforms
        the text).
        """
        return [self._render(m) for m in messages]

    def _render(self, messages: list[dict[str, Any]]) -> str:
        slow = functools.partial(self.processor.apply_chat_template, tokenize=False, add_generation_prompt=True)
        content = messages[-1]["content"]
        if not content or content[-1].get("type") != "text":
            return slow(messages)
        text = content[-1]["text"]
        shaped = [*messages[:-1], {**messages[-1], "content": [*content[:-1], {"type": "text", "text": _SENTINEL}]}]
        key = json.dumps(shaped, sort_keys=True)
        if key not in self._shapes:
            rendered, exact = slow(shaped), slow(messages)
            ok = rendered.count(_SENTINEL) == 1 and rendered.replace(_SENTINEL, text) == exact
            self._shapes[key] = rendered if ok else None
            return exact
        rendered = self._shapes[key]
        return rendered.replace(_SENTINEL, text) if rendered is not None else slow(messages)

    def inputs(self, prompts: Sequence[str], images: Sequence[np.ndarray | None],
               padding_side: str = "right") -> dict[str, torch.Tensor]:
        """Processor outputs for a batch, on the model's device and dtype.

        Right padding for a forward pass (each item keeps positions 0..n-1, so its vector does not depend on the
        batch), left padding for generation (every row ends where decoding starts).
        """
        pictures = [Image.fromarray(image) for image in images if image is not None]
        self.tokenizer.padding_side = padding_side
        inputs = self.processor(text=list(prompts), images=pictures or None, padding=True, return_tensors="pt")
        return {key: value.to(self.device, dtype=self.model.dtype) if value.is_floating_point()
                else value.to(self.device) for key, value in inputs.items()}

    def input_lengths(self, texts: Sequence[str], images: Sequence[np.ndarray | None]) -> list[int]:
        """Tokens of each text (an item's part of the prompt: the template's are the same for every item) plus its
        image's expansion (when the processor can tell; 0 otherwise). The sort keys of length bucketing."""
        if not texts:
            return []
        lengths = [len(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
        sizes = [image.shape[:2] for image in images if image is not None]
        try:
            expansion = iter(self.processor._get_num_multimodal_tokens(image_sizes=sizes)["num_image_tokens"]
                             if sizes else [])
        except (AttributeError, TypeError, KeyError, NotImplementedError):
            expansion = iter([0] * len(sizes))
        return [length + (int(next(expansion)) if image is not None else 0)
                for length, image in zip(lengths, images, strict=True)]


class LVLMEmbedder(LVLM):
    """Embeds items with an LVLM: chat prompt -> padded batch -> one forward pass -> hidden layer ``layer`` ->
    every pooling in ``poolings`` (several features for the price of one forward pass).

    Args:
        poolings: names from :data:`POOLINGS`.
        layer: index into the hidden states (0 = embeddings, -1 = last layer).
        prompt: name of a template in :mod:`rmm.features.prompts`.
        **kwargs: see :class:`LVLM`.
    """

    def __init__(self, model_path: str, *, poolings: Sequence[str] = ("mean",), layer: int = -1,
                 prompt: str = "default", **kwargs: Unpack[LVLMOptions]) -> None:
        for pooling in poolings:
            check_pooling(pooling)
        super().__init__(model_path, **kwargs)
        self.poolings = tuple(poolings)
        self.layer = layer
        self.template = get_template(prompt)
        text_config = self.model.config.get_text_config()
        num_states = text_config.num_hidden_layers + 1
        if not -num_states <= layer < num_states:
            raise ConfigError(f"layer {layer} is out of range for {model_path}: it has {num_states} hidden states "
                              f"(0 = embeddings .. {num_states - 1} = last layer; negative counts from the end)")
        self.dim = int(text_config.hidden_size)

    def prompts(self, titles: Sequence[str], texts: Sequence[str], has_image: Sequence[bool]) -> list[str]:
        """The chat-formatted prompt strings, with the model's own image placeholder where there is an image.

        They end with the opened assistant turn, so the ``last`` token is the state about to answer the
        template's "in one word" instruction.
        """
        return self.chat([build_messages(self.template, title, text, image)
                          for title, text, image in zip(titles, texts, has_image, strict=True)])

    @torch.inference_mode()
    def embed(self, titles: Sequence[str], texts: Sequence[str],
              images: Sequence[np.ndarray | None]) -> dict[str, np.ndarray]:
        """One vector per item and pooling; an item whose image is None is embedded from its text alone.

        Shapes:
            images: each (H, W, 3) uint8 or None; returns pooling -> (N, hidden_size) float32.
        """
        prompts = self.prompts(titles, texts, [image is not None for image in images])
        inputs = self.inputs(prompts, images, padding_side="right")
        attention_mask = inputs.pop("attention_mask")
        # Right padding puts every pad after every real token, so in a causal model no real token attends to a pad
        # and no real token's position moves: the mask changes nothing we pool, and leaving it out lets SDPA run
        # its fused causal kernel instead of materialising a (T, T) mask per item.
        outputs = self.model(**inputs, output_hidden_states=True, use_cache=False, logits_to_keep=1)
        hidden = outputs.hidden_states[self.layer]  # (N, T, hidden_size)
        image_mask = inputs["input_ids"] == self.image_token_id
        return {pooling: pool_hidden(hidden, attention_mask, image_mask, pooling).cpu().numpy()
                for pooling in self.poolings}


class LVLMDescriber(LVLM):
    """Generates a structured description per item from a :class:`DescribeTemplate` (greedy by default).

    Args:
        template: the describe template (its slots are what the answer should contain).
        max_new_tokens: generation budget per item.
        do_sample, temperature, top_p: sampled decoding; ``seed`` seeds each batch's sampling.
        **kwargs: see :class:`LVLM`.
    """

    def __init__(self, model_path: str, *, template: DescribeTemplate, max_new_tokens: int = 48,
                 do_sample: bool = False, temperature: float = 0.7, top_p: float = 0.9, seed: int = 0,
                 **kwargs: Unpack[LVLMOptions]) -> None:
        super().__init__(model_path, **kwargs)
        self.template = template
        self.seed = seed
        self.generation: GenerationOptions = {"max_new_tokens": max_new_tokens, "do_sample": do_sample}
        if do_sample:
            self.generation.update({"temperature": temperature, "top_p": top_p, "top_k": 0})
        else:  # unset the checkpoint's sampling defaults so greedy decoding does not warn about them
            self.generation.update({"temperature": None, "top_p": None, "top_k": None})
        pad = self.tokenizer.pad_token_id
        self.generation["pad_token_id"] = pad if pad is not None else self.tokenizer.eos_token_id

    def prompts(self, titles: Sequence[str], texts: Sequence[str], has_image: Sequence[bool]) -> list[str]:
        return self.chat([build_describe_messages(self.template, title, text, image)
                          for title, text, image in zip(titles, texts, has_image, strict=True)])

    @torch.inference_mode()
    def describe(self, titles: Sequence[str], texts: Sequence[str],
                 images: Sequence[np.ndarray | None]) -> list[str]:
        """The generated answer of each item (special tokens removed, stripped)."""
        prompts = self.prompts(titles, texts, [image is not None for image in images])
        inputs = self.inputs(prompts, images, padding_side="left")
        if self.generation["do_sample"]:
            torch.manual_seed(self.seed)
        output = self.model.generate(**inputs, **self.generation)
        new_tokens = output[:, inputs["input_ids"].shape[1]:]  # (N, <= max_new_tokens)
        return [text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def _image_token_id(processor: object, model: torch.nn.Module) -> int:
    """The id of the placeholder token that the model replaces by image features."""
    for source in (processor, model.config):
        for name in ("image_token_id", "image_token_index"):
            value = getattr(source, name, None)
            if isinstance(value, int):
                return value
    raise ConfigError(f"cannot find the image token id of {type(model).__name__}: neither its processor nor its "
                      "config has image_token_id; image_mean/text_mean pooling need it")
