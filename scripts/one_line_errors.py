"""The scripts' one-line error reporting; it lives in the `zoo` package, which the console script imports."""

from zoo.errors import BAD_INPUT, debugging, innermost, print_error, report

__all__ = ["BAD_INPUT", "debugging", "innermost", "print_error", "report"]
