"""LVLM item embeddings: one forward pass over a chat prompt with the item's image, title and text, pooled
from a hidden layer.

The loading and preprocessing are those of any hub checkpoint (``AutoProcessor``, the model's own chat
template, ``AutoModelForImageTextToText``), so ``tiny:qwen2-vl`` in tests and ``Qwen/Qwen2-VL-2B-Instruct`` on a
GPU cluster run the same lines. No Ray here: the Ray actor wrapper is in :mod:`rmm.features.extractors`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from rmm.features.prompts import build_messages, get_template

log = logging.getLogger(__name__)

POOLINGS = ("mean", "image_mean", "text_mean", "last")


def check_pooling(pooling: str) -> None:
    if pooling not in POOLINGS:
        raise ValueError(f"Unknown pooling {pooling!r}; valid poolings: {list(POOLINGS)}")


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


def load_lvlm(model_path: str, dtype: str = "float32", trust_remote_code: bool = False,
              device: str = "cpu") -> tuple[object, torch.nn.Module]:
    """``AutoProcessor`` and ``AutoModelForImageTextToText`` (eval mode, on ``device``), SDPA attention when the
    architecture supports it."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if trust_remote_code:
        log.warning("trust_remote_code=True: running code shipped with %s; use only repositories you trust",
                    model_path)
    processor = AutoProcessor.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    kwargs = {"dtype": getattr(torch, dtype), "trust_remote_code": trust_remote_code}
    try:
        model = AutoModelForImageTextToText.from_pretrained(model_path, attn_implementation="sdpa", **kwargs)
    except ValueError as err:  # transformers raises ValueError for an architecture without SDPA
        log.info("%s: SDPA attention unavailable (%s); using the model's default attention", model_path, err)
        model = AutoModelForImageTextToText.from_pretrained(model_path, **kwargs)
    return processor, model.eval().to(device)


class LVLMEmbedder:
    """Embeds items with an LVLM: chat prompt -> padded batch -> hidden layer ``layer`` -> pooling.

    Args:
        model_path: hub id or local directory (resolve ``tiny:`` ids first with
            :func:`rmm.features.tiny.resolve_model_id`).
        pooling: one of :data:`POOLINGS`.
        layer: index into the hidden states (0 = embeddings, -1 = last layer).
        dtype: torch dtype name of the weights; vectors are returned as float32 regardless.
        prompt: name of a template in :mod:`rmm.features.prompts`.
    """

    def __init__(self, model_path: str, *, pooling: str = "mean", layer: int = -1, dtype: str = "float32",
                 prompt: str = "default", trust_remote_code: bool = False, device: str = "cpu") -> None:
        check_pooling(pooling)
        self.pooling = pooling
        self.layer = layer
        self.template = get_template(prompt)
        self.device = device
        self.processor, self.model = load_lvlm(model_path, dtype, trust_remote_code, device)
        text_config = self.model.config.get_text_config()
        num_states = text_config.num_hidden_layers + 1
        if not -num_states <= layer < num_states:
            raise ValueError(f"layer {layer} is out of range for {model_path}: it has {num_states} hidden states "
                             f"(0 = embeddings .. {num_states - 1} = last layer; negative counts from the end)")
        self.dim = int(text_config.hidden_size)
        self.image_token_id = _image_token_id(self.processor, self.model)

    def prompts(self, titles: Sequence[str], texts: Sequence[str], has_image: Sequence[bool]) -> list[str]:
        """The chat-formatted prompt strings, with the model's own image placeholder where there is an image.

        They end with the opened assistant turn, so the ``last`` token is the state about to answer the
        template's "in one word" instruction.
        """
        return [self.processor.apply_chat_template(build_messages(self.template, title, text, image),
                                                   tokenize=False, add_generation_prompt=True)
                for title, text, image in zip(titles, texts, has_image)]

    @torch.inference_mode()
    def embed(self, titles: Sequence[str], texts: Sequence[str],
              images: Sequence[np.ndarray | None]) -> np.ndarray:
        """One vector per item; an item whose image is None is embedded from its text alone.

        Shapes:
            images: each (H, W, 3) uint8 or None; returns (N, hidden_size) float32.
        """
        pictures = [Image.fromarray(image) for image in images if image is not None]
        texts_in = self.prompts(titles, texts, [image is not None for image in images])
        inputs = self.processor(text=texts_in, images=pictures or None, padding=True, return_tensors="pt")
        inputs = {key: value.to(self.device, dtype=self.model.dtype) if value.is_floating_point()
                  else value.to(self.device) for key, value in inputs.items()}
        outputs = self.model(**inputs, output_hidden_states=True, use_cache=False, logits_to_keep=1)
        hidden = outputs.hidden_states[self.layer]  # (N, T, hidden_size)
        image_mask = inputs["input_ids"] == self.image_token_id
        return pool_hidden(hidden, inputs["attention_mask"], image_mask, self.pooling).cpu().numpy()


def _image_token_id(processor: object, model: torch.nn.Module) -> int:
    """The id of the placeholder token that the model replaces by image features."""
    for source in (processor, model.config):
        for name in ("image_token_id", "image_token_index"):
            value = getattr(source, name, None)
            if isinstance(value, int):
                return value
    raise ValueError(f"cannot find the image token id of {type(model).__name__}: neither its processor nor its "
                     "config has image_token_id; image_mean/text_mean pooling need it")
