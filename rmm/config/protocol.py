"""``protocol:``: one switch that gives every config section the defaults of a published convention."""

from __future__ import annotations

from typing import Any

#: ``protocol:`` values. ``strict`` is rmm's own conventions; ``mmrec`` gives every switch MMRec's value (each
#: config class says which in its ``protocol_defaults``); explicit config values win over either.
PROTOCOLS = ("strict", "mmrec")


def protocol_defaults(cls: type, protocol: str) -> dict[str, Any]:
    """The defaults ``protocol`` gives the fields of config class ``cls``: its ``protocol_defaults`` tables merged
    along the class hierarchy (a subclass's entries override its bases')."""
    merged: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        merged.update(klass.__dict__.get("protocol_defaults", {}).get(protocol, {}))
    return merged
