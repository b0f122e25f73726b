from __future__ import annotations

import copy

import pytest

from rmm.features.prompts import TEMPLATES, build_messages, get_template, item_text, template_sha256


def test_build_messages_is_pure_and_places_the_image_first() -> None:
    template = get_template("product")
    before = copy.deepcopy(template)
    first = build_messages(template, "Red shoe", "Leather.", has_image=True)
    assert first == build_messages(template, "Red shoe", "Leather.", has_image=True)
    assert template == before
    system, user = first
    assert system["role"] == "system" and user["role"] == "user"
    assert user["content"][0] == {"type": "image"}
    text = user["content"][1]["text"]
    assert "Title: Red shoe" in text and "Description: Leather." in text and template.instruction in text


def test_text_only_and_image_only_items() -> None:
    template = get_template("default")
    text_only = build_messages(template, "Hat", "", has_image=False)[1]["content"]
    assert [c["type"] for c in text_only] == ["text"]
    assert "Description" not in text_only[0]["text"]
    image_only = build_messages(template, "", "  ", has_image=True)[1]["content"]
    assert image_only[0] == {"type": "image"} and "Title" not in image_only[1]["text"]


def test_item_text_truncates_long_descriptions() -> None:
    template = get_template("default")
    assert len(item_text(template, "", "x" * 5000)) == len("Description: ") + template.max_text_chars


def test_template_hashes_are_stable_and_distinct() -> None:
    hashes = {name: template_sha256(t) for name, t in TEMPLATES.items()}
    assert len(set(hashes.values())) == len(hashes)
    assert hashes["default"] == template_sha256(get_template("default"))


def test_unknown_template_lists_available() -> None:
    with pytest.raises(KeyError, match="product"):
        get_template("nope")
