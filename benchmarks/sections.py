"""RESULTS.md is shared by several benchmarks: each owns one section between markers."""

from __future__ import annotations

from pathlib import Path


def replace_section(path: Path, start: str, end: str, block: list[str]) -> None:
    """Put ``block`` (its first line ``start``, its last ``end``) in place of the section
    between those markers in ``path``, or append it when the file has none yet."""
    text = path.read_text() if path.exists() else "# Results\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + "\n".join(block) + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + "\n".join(block) + "\n"
    path.write_text(text)


def markers(name: str, *, quick: bool = False) -> tuple[str, str]:
    """The start and end markers of section ``name``; a quick run owns its own section,
    so a newcomer's ``--quick`` check never overwrites the committed full-run tables."""
    key = f"{name}-quick" if quick else name
    return f"<!-- {key}:start -->", f"<!-- {key}:end -->"
