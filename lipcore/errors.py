"""Exceptions raised by lipcore."""

from __future__ import annotations


class Cancelled(Exception):
    """Raised by a progress callback to abort a running estimate; re-raised by estimate_w1."""


class ConfigError(ValueError):
    """An invalid estimator configuration. ``field`` names the knob at fault ("steps",
    "width", ...) or is "config" for the configuration as a whole (not a dict, unknown keys), so
    that a caller can point at it without parsing the message ("config.<field>: ...")."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field

    def __reduce__(self) -> tuple[type[ConfigError], tuple[str, str]]:
        # pickled across processes (spawned job runners) with its field
        return type(self), (self.field, str(self))


class ExactTooLarge(ValueError):
    """The exact solver was asked for more source x target pairs than its size limit allows."""


class ExactNotConverged(RuntimeError):
    """POT's network simplex stopped before reaching an optimal transport plan."""
