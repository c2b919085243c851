"""The one exception type the command line turns into a one-line message and a non-zero exit."""

import json


class EanetError(Exception):
    """A user-facing error: bad input, missing or corrupt data, an unusable file.

    The message is a single line that says what is wrong and, where it helps, what to do.
    The CLI prints it as ``error: <message>`` and exits with status 1, never with a traceback.
    """


class Interrupted(EanetError):
    """A run stopped by a signal after saving where it was; the CLI exits with 128 + ``signum``."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class DataError(EanetError):
    """A dataset that is missing, fails verification, or cannot be read."""


def one_line(exc: BaseException | str) -> str:
    """The first non-empty line of an exception's message, or its type name when it has none
    (``str(exc).splitlines()[0]`` fails on an empty message)."""
    if isinstance(exc, UnicodeDecodeError):  # the codec's own words name neither the problem nor the fix
        return f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at position {exc.start})"
    if isinstance(exc, json.JSONDecodeError) and not exc.doc.strip():
        return "an empty file"
    text = str(exc).strip()
    if not text:
        return type(exc).__name__ if isinstance(exc, BaseException) else ""
    return text.splitlines()[0].strip()
