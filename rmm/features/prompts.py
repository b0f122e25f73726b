"""Structured prompt templates that turn an item into LVLM chat messages (pure functions, no model).

The prompt is part of a feature's identity: the same model under two prompts gives two different
representations. So a template is a frozen value whose canonical text and sha256 go into the manifest.
Templates end with an instruction to condense the item into one word; with the assistant turn opened after
it, the hidden state of the last token is the model's summary of the item (PromptEOL-style), which is what
``last`` pooling reads.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class PromptTemplate:
    """One domain's prompt.

    Attributes:
        name: the key configs use (``ExtractorConfig.prompt``).
        system: the system message.
        item_kind: how the item is named in the user message ("product", "movie").
        instruction: what the model is asked to do after reading the item.
        max_text_chars: the description is cut here, so one long text cannot crowd out the image tokens.
    """

    name: str
    system: str
    item_kind: str
    instruction: str
    max_text_chars: int = 1000


TEMPLATES: dict[str, PromptTemplate] = {
    t.name: t
    for t in (
        PromptTemplate(
            name="default",
            system="You describe catalogue items for a recommender system.",
            item_kind="item",
            instruction="Summarize this item in one word:",
        ),
        PromptTemplate(
            name="product",
            system="You describe e-commerce products for a recommender system.",
            item_kind="product",
            instruction="Summarize this product (type, style, colour, use) in one word:",
        ),
        PromptTemplate(
            name="movie",
            system="You describe movies for a recommender system.",
            item_kind="movie",
            instruction="Summarize this movie (genre, mood, audience) in one word:",
        ),
    )
}


def get_template(name: str) -> PromptTemplate:
    """The template registered under ``name``.

    Raises:
        KeyError: unknown name; the message lists the available templates.
    """
    if name not in TEMPLATES:
        raise KeyError(f"Unknown prompt template {name!r}. Available: {sorted(TEMPLATES)}")
    return TEMPLATES[name]


def template_text(template: PromptTemplate) -> str:
    """Canonical JSON of a template: what the manifest stores and :func:`template_sha256` hashes."""
    return json.dumps(asdict(template), sort_keys=True)


def template_sha256(template: PromptTemplate) -> str:
    return hashlib.sha256(template_text(template).encode()).hexdigest()


def item_text(template: PromptTemplate, title: str, text: str) -> str:
    """The item's slots as labelled lines; empty slots are left out rather than shown blank."""
    lines = []
    if title.strip():
        lines.append(f"Title: {title.strip()}")
    if text.strip():
        lines.append(f"Description: {text.strip()[:template.max_text_chars]}")
    return "\n".join(lines)


def build_messages(template: PromptTemplate, title: str, text: str, has_image: bool) -> list[dict[str, Any]]:
    """Chat messages (the hub ``apply_chat_template`` format) for one item.

    The image placeholder comes first so the text tokens attend to it in a causal model; an item without an
    image gets no placeholder (text only), one with neither title nor text gets only the image.
    """
    body = item_text(template, title, text)
    intro = f"This {template.item_kind}" + (" is shown in the image." if has_image else ":")
    user_text = "\n".join(part for part in (intro, body, template.instruction) if part)
    content: list[dict[str, Any]] = [{"type": "image"}] if has_image else []
    content.append({"type": "text", "text": user_text})
    return [
        {"role": "system", "content": [{"type": "text", "text": template.system}]},
        {"role": "user", "content": content},
    ]
