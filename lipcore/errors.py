"""Exceptions raised by lipcore."""


class Cancelled(Exception):  # noqa: N818 - public name fixed by the API
    """Raised by a progress callback to abort a running estimate; re-raised by estimate_w1."""


class ExactTooLarge(ValueError):  # noqa: N818 - public name fixed by the API
    """The exact solver was asked for more source x target pairs than its size limit allows."""


class ExactNotConverged(RuntimeError):  # noqa: N818 - public name fixed by the API
    """POT's network simplex stopped before reaching an optimal transport plan."""
