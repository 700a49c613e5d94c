#!/usr/bin/env python
"""Train any registered model, then test it (the short form of `lightning-zoo fit`, see zoo/cli.py):

python scripts/fit.py --model NAME [--data NAME] [--seed N] [LightningCLI flags]
"""

import sys

from zoo import cli
from zoo.cli import DATA_FACTS, UsageError, ZooCLI, catalogue, condense, summary, translate

__all__ = ["DATA_FACTS", "UsageError", "ZooCLI", "catalogue", "condense", "main", "summary", "translate"]


def main(argv: list[str] | None = None) -> int:
    # ZooCLI is looked up here at each call, so that a test may swap it for one with extra callbacks.
    return cli.main(argv, short_form=True, cli_class=ZooCLI)


if __name__ == "__main__":
    sys.exit(main())
