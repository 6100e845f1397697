"""The README's config-key table, generated from configs/schema.py so the two never disagree.

Run `python -m meshtron.tools.config_docs` to print it; tests/test_docs.py checks the README holds it.
"""

from __future__ import annotations

import dataclasses

from meshtron.configs.schema import SECTION_CLASSES, field_docs


def _default(field: dataclasses.Field) -> str:
    value = field.default
    if value is None:
        return "family / derived"
    if isinstance(value, str):
        return f"`{value}`" if value else "`''`"
    return f"`{value}`"


def config_table() -> str:
    """Markdown: one row per key with its default and meaning."""
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    for section, cls in SECTION_CLASSES.items():
        docs = field_docs(cls)
        for field in dataclasses.fields(cls):
            meaning = docs.get(field.name, "").replace("|", "\\|")  # a bare pipe would end the table cell
            lines.append(f"| `{section}.{field.name}` | {_default(field)} | {meaning} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(config_table())
