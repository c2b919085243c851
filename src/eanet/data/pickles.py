"""A restricted unpickler for the CIFAR python files.

The CIFAR "python version" files are Python 2 pickles of a dict of byte strings, lists of ints
and one numpy ``uint8`` array. Unpickling may call any importable function named in the file, so
:func:`load_cifar_pickle` only resolves the three globals these files contain (numpy's array
reconstructor, ``numpy.ndarray`` and ``numpy.dtype``) and refuses everything else, *before*
anything is called. Callers check the file's md5 first; this is the second line of defence.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from eanet.errors import DataError, one_line

__all__ = ["load_cifar_pickle", "ALLOWED_GLOBALS"]

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

#: (module, name) -> object: everything a CIFAR pickle may refer to.
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"{module}.{name}") from None

    def persistent_load(self, pid):
        raise _RefusedGlobal(f"persistent id {pid!r}")


def _keys_to_str(obj: dict) -> dict:
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def load_cifar_pickle(data: bytes, *, path: Path | str) -> dict[str, object]:
    """Unpickle a CIFAR file's bytes with :class:`_CifarUnpickler`; the dict's keys become ``str``.

    A pickle that names anything outside :data:`ALLOWED_GLOBALS`, is truncated, or is not a dict
    raises :class:`DataError` naming ``path``.
    """
    try:
        obj = _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
    except _RefusedGlobal as exc:
        raise DataError(f"{path}: refusing to unpickle {exc}: not something a CIFAR file contains") from None
    except Exception as exc:  # noqa: BLE001 - any decoding failure means an unreadable file
        raise DataError(f"{path}: not a readable CIFAR pickle ({type(exc).__name__}: {one_line(exc)})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not a CIFAR file (holds a {type(obj).__name__}, not a dict)")
    return _keys_to_str(obj)
