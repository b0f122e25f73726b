"""Structured LVLM descriptions: parse generated text into named slots, and turn slot values into keyword
one-hot features (pure functions: no model, no Ray).

A describe template (:class:`rmm.features.prompts.DescribeTemplate`) asks for one ``Slot: value`` line per slot.
Models follow that loosely (markdown bold, bullets, numbering, several slots on one line, extra chatter), so the
parser looks for each slot label anywhere a field could start and reads the value up to the next label or the
end of the line. An answer with every slot filled is ``parsed``; with some, ``partial``; with none,
``unparsed``. The raw text is always kept: a malformed answer still has its text embedded, and is counted as a
parse failure in the manifest.

Keywords: per slot, values are normalised (:func:`normalise_value`), the ``top_n`` most frequent values seen
at least :data:`MIN_KEYWORD_COUNT` times become columns, and one ``Other`` column takes everything else
(including a slot the answer left out), so each slot block of an item's row is one-hot.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

PARSED, PARTIAL, UNPARSED = "parsed", "partial", "unparsed"
OTHER = "Other"
#: A value seen once is noise for a recommender (and with a random model every value is unique).
MIN_KEYWORD_COUNT = 2
_MAX_VALUE_CHARS = 60
_ARTICLES = re.compile(r"^(?:a|an|the)\s+")


@dataclass(frozen=True)
class ParsedDescription:
    """The slots found in one generated description; ``status`` is parsed, partial or unparsed."""

    fields: dict[str, str]
    status: str

    @property
    def fields_json(self) -> str:
        return json.dumps(self.fields, ensure_ascii=False, sort_keys=False)


def _label_pattern(slots: Sequence[str]) -> re.Pattern[str]:
    """Matches a slot label where a field can start: line start or after ``;``/``|``/``,``, with optional
    bullets, numbering and markdown emphasis around the label, then ``:``, ``：``, ``=`` or `` - ``."""
    names = "|".join(r"\s+".join(map(re.escape, slot.split())) for slot in sorted(slots, key=len, reverse=True))
    return re.compile(
        rf"(?:^|(?<=[;|,]))[ \t]*(?:[-*•>#]+[ \t]*|\d+[.)][ \t]*)?[*_]*(?P<label>{names})[*_]*[ \t]*"
        rf"(?:[:：=]|\s-\s)[*_]*[ \t]*",
        re.IGNORECASE | re.MULTILINE,
    )


def parse_description(text: str, slots: Sequence[str]) -> ParsedDescription:
    """Find each slot's value in generated ``text``.

    A value runs from its label to the next label or the end of the line, stripped of markdown and trailing
    punctuation; the first occurrence of a slot wins; a value that is empty, a placeholder (``<...>``) or "n/a"
    does not count.

    Args:
        text: the model's answer.
        slots: the template's slot names, e.g. ``("Category", "Age group")``.

    Returns:
        fields in template order (found slots only) and the status.
    """
    canonical = {" ".join(slot.lower().split()): slot for slot in slots}
    matches = list(_label_pattern(slots).finditer(text))
    found: dict[str, str] = {}
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)  # up to the next label
        value = text[match.end():end].split("\n", 1)[0]
        value = value.strip().strip("*_`\"'").strip().rstrip(",;|.").strip()
        slot = canonical[" ".join(match.group("label").lower().split())]
        if slot in found or not value or value.lower() in ("n/a", "none", "-") or re.fullmatch(r"<.*>", value):
            continue
        found[slot] = value[:_MAX_VALUE_CHARS * 4]
    fields = {slot: found[slot] for slot in slots if slot in found}
    status = PARSED if len(fields) == len(slots) else PARTIAL if fields else UNPARSED
    return ParsedDescription(fields, status)


def normalise_value(value: str) -> str:
    """The keyword form of a slot value: NFKC, lower case, the first item of a list ("cotton, polyester" ->
    "cotton"), no leading article, no surrounding punctuation, single spaces, at most 60 characters."""
    value = unicodedata.normalize("NFKC", value).lower()
    value = re.split(r"[,;/]|\s+(?:and|or)\s+", value, maxsplit=1)[0]
    value = re.sub(r"[^\w\s+&'-]", " ", value)
    value = _ARTICLES.sub("", " ".join(value.split()))
    return value.strip(" -'")[:_MAX_VALUE_CHARS]


def keyword_vocabulary(fields: Sequence[Mapping[str, str] | None], slots: Sequence[str],
                       top_n: int) -> dict[str, list[str]]:
    """Per slot, the ``top_n`` most frequent normalised values (seen >= :data:`MIN_KEYWORD_COUNT` times; ties
    alphabetical) followed by :data:`OTHER`.

    Args:
        fields: each item's parsed fields; None for an item without a description (failed or missing).
    """
    vocabulary = {}
    for slot in slots:
        counts = Counter(normalise_value(f[slot]) for f in fields if f and f.get(slot))
        counts.pop("", None)
        counts.pop(OTHER.lower(), None)
        ranked = sorted((v for v, c in counts.items() if c >= MIN_KEYWORD_COUNT), key=lambda v: (-counts[v], v))
        vocabulary[slot] = [*ranked[:top_n], OTHER]
    return vocabulary


def keyword_matrix(fields: Sequence[Mapping[str, str] | None], vocabulary: Mapping[str, Sequence[str]]) -> np.ndarray:
    """One-hot slot blocks, concatenated in vocabulary order; a row of None (no description) is all zero.

    Shapes:
        returns (len(fields), sum(len(values) for values in vocabulary.values())) float32.
    """
    width = sum(len(values) for values in vocabulary.values())
    matrix = np.zeros((len(fields), width), dtype=np.float32)
    offset = 0
    for slot, values in vocabulary.items():
        column = {value: i for i, value in enumerate(values[:-1])}
        for row, item_fields in enumerate(fields):
            if item_fields is None:
                continue
            value = normalise_value(item_fields.get(slot, ""))
            matrix[row, offset + column.get(value, len(values) - 1)] = 1.0
        offset += len(values)
    return matrix


def keyword_columns(vocabulary: Mapping[str, Sequence[str]]) -> list[str]:
    """Column names of :func:`keyword_matrix`: ``Slot=value``."""
    return [f"{slot}={value}" for slot, values in vocabulary.items() for value in values]
