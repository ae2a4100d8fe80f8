"""Damage that the fault tests inflict on files: same-size corruption (a disk or copy fault)."""

from __future__ import annotations

from pathlib import Path


def corrupt_in_place(path: Path) -> None:
    """Invert 8 bytes in the middle of ``path``, keeping its size."""
    content = bytearray(path.read_bytes())
    middle = len(content) // 2
    content[middle : middle + 8] = bytes(255 - byte for byte in content[middle : middle + 8])
    path.write_bytes(bytes(content))
