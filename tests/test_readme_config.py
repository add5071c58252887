"""The README's Configuration block names every setting Config has, tables
too (issue 16 review: change_poll_seconds, snapshot_seconds and most of
[video], [audio] and [pdf] were missing), so the two cannot drift apart."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from hashsvc.core.config import Config

README = Path(__file__).resolve().parent.parent / "README.md"


def _configuration_block() -> str:
    section = README.read_text().split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```toml\n", 1)[1].split("```", 1)[0]


def _keys_by_table(block: str) -> dict[str, set[str]]:
    """Keys set (or shown commented out, for a default TOML cannot write)
    under each table; "" is the top level."""
    keys: dict[str, set[str]] = {"": set()}
    table = ""
    for line in block.splitlines():
        header = re.match(r"\s*\[\[?(\w+)\]\]?", line)  # [table] or [[table]]
        if header:
            table = header.group(1)
            keys.setdefault(table, set())
            continue
        key = re.match(r"\s*#?\s*(\w+)\s*=", line)
        if key:
            keys[table].add(key.group(1))
    return keys


def _fields(cls, table: str = "") -> list[tuple[str, str]]:
    found = []
    defaults = cls()
    for field in dataclasses.fields(cls):
        value = getattr(defaults, field.name)
        table_of = field.metadata.get("table_of")
        if table_of is not None:  # [[webhook]]: a list of tables
            found += [(field.name, f.name) for f in dataclasses.fields(table_of)]
        elif dataclasses.is_dataclass(value):
            found += _fields(type(value), field.name)
        else:
            found.append((table, field.name))
    return found


def test_every_config_field_is_in_the_readme_configuration_block():
    documented = _keys_by_table(_configuration_block())
    fields = _fields(Config)
    missing = [
        f"[{table}] {name}" if table else name
        for table, name in fields
        if name not in documented.get(table, set())
    ]
    assert not missing, f"README's Configuration block lacks: {', '.join(missing)}"
    # and names no setting that does not exist (a key renamed or removed)
    known = {(table, name) for table, name in fields}
    stale = [
        f"[{table}] {name}" if table else name
        for table, names in documented.items()
        for name in names
        if (table, name) not in known
    ]
    assert not stale, f"README's Configuration block names unknown settings: {', '.join(stale)}"
