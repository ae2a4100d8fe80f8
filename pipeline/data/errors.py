"""The error raised for bad data: missing files, malformed lists, unreadable images."""

from __future__ import annotations


class DataError(ValueError):
    """A data problem, described in one line naming the offending path, key or value."""
