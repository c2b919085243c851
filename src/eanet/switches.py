"""The ``EANET_*`` environment switches that turn a fast path off (``EANET_FUSED``, ``EANET_BF16_KERNELS``,
``EANET_MALLOPT``): one reader, no torch import."""

from __future__ import annotations

import os

__all__ = ["switched_off"]


def switched_off(variable: str) -> bool:
    """The environment variable says 0 / false / no / off."""
    return os.environ.get(variable, "1") in ("0", "false", "no", "off")
