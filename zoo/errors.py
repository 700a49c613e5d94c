"""How every script fails on bad input: one line `NAME.py: error: what was wrong and how to fix it` on stderr
and exit status 2, never a traceback. Set LIGHTNING_ZOO_DEBUG=1 for the full traceback instead."""

import os
import sys

# What bad input raises: a wrong flag, file or setting (ValueError and the project's subclasses of it), a file
# that is not there, a run whose loss stopped being finite.
BAD_INPUT = (ValueError, FileNotFoundError, FloatingPointError)


def debugging() -> bool:
    """LIGHTNING_ZOO_DEBUG set (to anything but 0): show tracebacks."""
    return os.environ.get("LIGHTNING_ZOO_DEBUG", "0") not in ("", "0")


def innermost(error: BaseException) -> str:
    """The message of the exception at the bottom of a chain, on one line: jsonargparse wraps an error raised
    while linking or instantiating in one of its own, several lines long, around the message that matters."""
    while True:
        inner = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        if not isinstance(inner, BAD_INPUT):
            break
        error = inner
    return " ".join(str(error).split())


def print_error(script: str, message: str) -> int:
    """Print `script: error: message` as one line on stderr; returns the exit status, 2."""
    print(f"{script}: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def report(script: str, error: BaseException) -> int:
    """For a script's `except BAD_INPUT as error:` clause: print the error as one line and return the exit
    status, 2; under LIGHTNING_ZOO_DEBUG=1 re-raise it with its traceback instead."""
    if debugging():
        raise error
    return print_error(script, innermost(error))
