"""What every source reader returns (`Source`) and the ILSVRC-2012 class list shipped with the package."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources

WNID = re.compile(r"^n\d{8}$")


@dataclass
class Source:
    layout: str
    class_ids: list[str]
    class_names: list[str]
    splits: dict[str, list[tuple[object, int]]]
    skipped: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def imagenet_names() -> tuple[list[str | None], list[str]]:
    """The 1000 ILSVRC-2012 classes in index order: (wnids or Nones, readable names).

    The shipped json is either [[wnid, name], ...] or [name, ...] (names only)."""
    text = resources.files("alexnet.data").joinpath("imagenet_classes.json").read_text()
    entries = json.loads(text)
    if entries and isinstance(entries[0], list):
        return [e[0] for e in entries], [e[1] for e in entries]
    return [None] * len(entries), list(entries)
