"""Progress from library code: the caller passes a bar factory, the library never draws one.

A *factory* is any callable taking ``desc``, ``total`` (and optionally ``unit``, ``unit_scale``...)
keyword arguments and returning a context manager with ``update(n)``: ``tqdm.tqdm`` is one, and the
command line passes it (:func:`eanet.cli.progress.bars`). ``None`` or ``False`` means silence.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Factory", "bar"]

Factory = Callable[..., Any]


class _Silent:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, n: int = 1) -> None:
        return None


def bar(factory: Factory | bool | None, *, desc: str, total: int | None, **options):
    """A progress bar from ``factory``, or a silent stand-in when there is none."""
    return factory(desc=desc, total=total, **options) if callable(factory) else _Silent()
