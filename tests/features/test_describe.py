from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rmm.features.describe import (
    OTHER,
    PARSED,
    PARTIAL,
    UNPARSED,
    keyword_columns,
    keyword_matrix,
    keyword_vocabulary,
    normalise_value,
    parse_description,
)
from rmm.features.prompts import (
    build_describe_messages,
    describe_template_names,
    load_describe_template,
    template_sha256,
)

BABY = ("Category", "Age group", "Purpose", "Material", "Usage context")


def test_builtin_templates_have_the_domain_slots() -> None:
    assert {"default", "synthetic", "baby", "clothing", "pets"} <= set(describe_template_names())
    assert load_describe_template("baby").slot_names == BABY
    assert load_describe_template("clothing").slot_names == ("Type", "Colour", "Wear location", "Material", "Style")
    assert load_describe_template("pets").slot_names == ("Category", "Pet type", "Purpose", "Material",
                                                         "Usage context")
    hashes = {template_sha256(load_describe_template(name)) for name in describe_template_names()}
    assert len(hashes) == len(describe_template_names())
    with pytest.raises(KeyError, match="baby"):
        load_describe_template("toys")


def test_describe_messages_ask_for_every_slot() -> None:
    template = load_describe_template("baby")
    system, user = build_describe_messages(template, "Bottle", "BPA free.", has_image=True)
    assert user["content"][0] == {"type": "image"} and system["role"] == "system"
    text = user["content"][1]["text"]
    assert "Title: Bottle" in text and all(f"\n{slot}: <" in text for slot in BABY)


def test_template_from_a_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "books.yaml"
    path.write_text("system: You describe books.\nitem_kind: book\ninstruction: Fill in.\n"
                    "slots: [Genre, {name: Era}]\n")
    template = load_describe_template(str(path))
    assert template.name == "books" and template.slot_names == ("Genre", "Era")
    path.write_text("system: s\nitem_kind: k\ninstruction: i\nslots: [Genre, genre]\n")
    with pytest.raises(ValueError, match="unique"):
        load_describe_template(str(path))
    path.write_text("system: s\nitem_kind: k\nslots: [Genre]\n")
    with pytest.raises(ValueError, match="instruction"):
        load_describe_template(str(path))


@pytest.mark.parametrize(("text", "status", "fields"), [
    ("Category: Stroller\nAge group: 0-3 years\nPurpose: travel\nMaterial: aluminium, fabric\nUsage context: outdoors",
     PARSED, {"Category": "Stroller", "Age group": "0-3 years", "Purpose": "travel", "Material": "aluminium, fabric",
              "Usage context": "outdoors"}),
    # markdown, bullets, numbering, several fields on a line, '=' and odd spacing/case
    ("**Category:** Bottle; **Age group**: newborn | Purpose = feeding\n- Material: Silicone.\n2. usage  context: home",
     PARSED, {"Category": "Bottle", "Age group": "newborn", "Purpose": "feeding", "Material": "Silicone",
              "Usage context": "home"}),
    # chatter around the answer, a repeated slot (first wins), a placeholder copied from the prompt
    ("Sure! Here it is.\nCategory: teddy bear\nAge group: <e.g. newborn>\nCategory: blanket\nthanks",
     PARTIAL, {"Category": "teddy bear"}),
    ("The product is a stroller for toddlers.", UNPARSED, {}),
    ("", UNPARSED, {}),
    ("\x13�zg\x1e Category\x03: n/a", UNPARSED, {}),
])
def test_parse_description(text: str, status: str, fields: dict[str, str]) -> None:
    parsed = parse_description(text, BABY)
    assert parsed.status == status and parsed.fields == fields
    assert list(parsed.fields) == [slot for slot in BABY if slot in fields]  # template order


def test_normalise_value() -> None:
    assert normalise_value("  The Teddy Bear!! ") == "teddy bear"
    assert normalise_value("Cotton, polyester") == normalise_value("cotton and wool") == "cotton"
    assert normalise_value("0-6 months") == "0-6 months"
    assert normalise_value("**Ｓｉｌｉｃｏｎｅ**") == "silicone"  # NFKC, markdown
    assert normalise_value("") == ""


def test_keyword_vocabulary_and_one_hot_matrix() -> None:
    slots = ("Category", "Material")
    fields = [
        {"Category": "Toy", "Material": "plastic"},
        {"Category": "toy.", "Material": "Wood"},
        {"Category": "Bottle", "Material": "plastic"},
        {"Category": "bottle", "Material": "wood"},
        {"Category": "Stroller"},  # seen once: Other; material missing: Other
        {"Category": "The toy"},
        None,  # no description: zero row
    ]
    vocabulary = keyword_vocabulary(fields, slots, top_n=1)
    assert vocabulary == {"Category": ["toy", OTHER], "Material": ["plastic", OTHER]}  # ties: alphabetical
    vocabulary = keyword_vocabulary(fields, slots, top_n=5)
    assert vocabulary == {"Category": ["toy", "bottle", OTHER], "Material": ["plastic", "wood", OTHER]}
    assert keyword_columns(vocabulary)[:3] == ["Category=toy", "Category=bottle", "Category=Other"]
    matrix = keyword_matrix(fields, vocabulary)
    assert matrix.shape == (7, 6) and matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix[:6].sum(axis=1), 2.0)
    np.testing.assert_array_equal(matrix[4], [0, 0, 1, 0, 0, 1])
    np.testing.assert_array_equal(matrix[5], [1, 0, 0, 0, 0, 1])
    assert not matrix[6].any()
