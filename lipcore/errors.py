"""Exceptions raised by lipcore."""


class Cancelled(Exception):
    """Raised by a progress callback to abort a running estimate; re-raised by estimate_w1."""


class ExactTooLarge(ValueError):
    """The exact solver was asked for more source x target pairs than its size limit allows."""


class ExactNotConverged(RuntimeError):
    """POT's network simplex stopped before reaching an optimal transport plan."""
