"""Structured prompt templates that turn an item into LVLM chat messages (pure functions, no model).

The prompt is part of a feature's identity: the same model under two prompts gives two different
representations. So a template is a frozen value whose canonical text and sha256 go into the manifest.

Two kinds:

- :class:`PromptTemplate` (``lvlm_embed``): ends with an instruction to condense the item into one word; with
  the assistant turn opened after it, the hidden state of the last token is the model's summary of the item
  (PromptEOL-style), which is what ``last`` pooling reads.
- :class:`DescribeTemplate` (``lvlm_describe``): per-domain, with named slots ("Category", "Age group", ...) the
  model fills in, one ``Slot: value`` line each; :mod:`rmm.features.describe` parses them back. They live in
  YAML (``rmm/features/templates/<name>.yaml``, or any YAML file a config names by path).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from rmm.errors import ConfigError, UnknownNameError

TEMPLATES_DIR = Path(__file__).parent / "templates"


@dataclass(frozen=True)
class PromptTemplate:
    """One domain's prompt.

    Attributes:
        name: the key configs use (``LVLMConfig.prompt`` of an ``lvlm_embed`` extractor).
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
        raise UnknownNameError(f"Unknown prompt template {name!r}. Available: {sorted(TEMPLATES)}")
    return TEMPLATES[name]


def template_text(template: PromptTemplate | DescribeTemplate) -> str:
    """Canonical JSON of a template: what the manifest stores and :func:`template_sha256` hashes."""
    return json.dumps(asdict(template), sort_keys=True)


def template_sha256(template: PromptTemplate | DescribeTemplate) -> str:
    return hashlib.sha256(template_text(template).encode()).hexdigest()


def item_text(template: PromptTemplate | DescribeTemplate, title: str, text: str) -> str:
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


# ---------------------------------------------------------------------------------------------- describe

@dataclass(frozen=True)
class Slot:
    """One field of a structured description: its label and a hint of the expected values."""

    name: str
    hint: str = ""


@dataclass(frozen=True)
class DescribeTemplate:
    """One domain's describe prompt: the item is shown, then the model is asked to fill in ``slots``.

    Attributes:
        name: the key configs use (``LVLMConfig.prompt`` of an ``lvlm_describe`` extractor).
        system, item_kind, instruction, max_text_chars: as in :class:`PromptTemplate`.
        slots: the fields, in the order the model is asked to write them.
    """

    name: str
    system: str
    item_kind: str
    instruction: str
    slots: tuple[Slot, ...]
    max_text_chars: int = 1000

    def __post_init__(self) -> None:
        names = [slot.name.lower() for slot in self.slots]
        if not names:
            raise ConfigError(f"describe template {self.name!r} has no slots")
        if len(set(names)) != len(names) or any(not n.strip() or ":" in n for n in names):
            raise ConfigError(f"describe template {self.name!r}: slot names must be unique, non-empty and free of "
                              f"':', got {[slot.name for slot in self.slots]}")

    @property
    def slot_names(self) -> tuple[str, ...]:
        return tuple(slot.name for slot in self.slots)


def describe_template_names() -> list[str]:
    """The built-in describe templates (``rmm/features/templates/*.yaml``)."""
    return sorted(path.stem for path in TEMPLATES_DIR.glob("*.yaml"))


def load_describe_template(name_or_path: str) -> DescribeTemplate:
    """A built-in describe template by name, or one from a YAML file (a path ending in .yaml/.yml).

    A path must be readable wherever the extractor runs (a shared filesystem on a cluster).

    Raises:
        KeyError: unknown name; the message lists the built-in templates.
        ValueError: the YAML lacks a key, has an unknown one, or its slots are malformed.
    """
    if name_or_path.endswith((".yaml", ".yml")):
        path = Path(name_or_path).expanduser()
    else:
        path = TEMPLATES_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise UnknownNameError(f"Unknown describe template {name_or_path!r}. "
                                   f"Available: {describe_template_names()} (or a path to a .yaml file)")
    raw = yaml.safe_load(path.read_text())
    known = {"name", "system", "item_kind", "instruction", "slots", "max_text_chars"}
    if not isinstance(raw, dict) or not {"system", "item_kind", "instruction", "slots"} <= set(raw) \
            or set(raw) - known:
        got = sorted(raw) if isinstance(raw, dict) else repr(raw)
        raise ConfigError(f"describe template {path} must be a mapping with keys system, item_kind, instruction, "
                          f"slots (optional: name, max_text_chars), got {got}")
    slots = []
    for entry in raw["slots"]:
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict) or "name" not in entry or set(entry) - {"name", "hint"}:
            raise ConfigError(f"describe template {path}: a slot must be a name or {{name, hint}}, got {entry!r}")
        slots.append(Slot(str(entry["name"]), str(entry.get("hint", ""))))
    return DescribeTemplate(name=str(raw.get("name", path.stem)), system=str(raw["system"]),
                            item_kind=str(raw["item_kind"]), instruction=str(raw["instruction"]).strip(),
                            slots=tuple(slots), max_text_chars=int(raw.get("max_text_chars", 1000)))


def describe_instruction(template: DescribeTemplate) -> str:
    """The instruction followed by one ``Slot: <hint>`` line per slot: the format the answer must follow."""
    lines = [f"{slot.name}: <{slot.hint or 'a few words'}>" for slot in template.slots]
    return "\n".join([template.instruction, *lines])


def build_describe_messages(template: DescribeTemplate, title: str, text: str,
                            has_image: bool) -> list[dict[str, Any]]:
    """Chat messages asking the model to fill in the template's slots for one item (image first, as in
    :func:`build_messages`)."""
    body = item_text(template, title, text)
    intro = f"This {template.item_kind}" + (" is shown in the image." if has_image else ":")
    user_text = "\n".join(part for part in (intro, body, describe_instruction(template)) if part)
    content: list[dict[str, Any]] = [{"type": "image"}] if has_image else []
    content.append({"type": "text", "text": user_text})
    return [
        {"role": "system", "content": [{"type": "text", "text": template.system}]},
        {"role": "user", "content": content},
    ]
