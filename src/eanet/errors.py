"""The one exception type the command line turns into a one-line message and a non-zero exit."""


class EanetError(Exception):
    """A user-facing error: bad input, missing or corrupt data, an unusable file.

    The message is a single line that says what is wrong and, where it helps, what to do.
    The CLI prints it as ``error: <message>`` and exits with status 1, never with a traceback.
    """


class DataError(EanetError):
    """A dataset that is missing, fails verification, or cannot be read."""
