"""The error every layer may raise for a bad setting: the lowest module, so that the engine (a run directory in the
way, a resumed run's changed data) and train.py's flag parsing raise the same type without importing each other.
"""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A bad flag or config file; the message is one line naming the flag or file."""
