"""Run a task command without the main CLI: ``python -m mambakit.tasks induction-heads --help``.

It takes the same options as ``mambakit tasks ...``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from mambakit.tasks.cli import add_tasks_parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` as the arguments after ``tasks`` and run the chosen task command."""
    parser = argparse.ArgumentParser(prog="mambakit", description="Synthetic tasks of the Mamba paper.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and results")
    add_tasks_parser(parser.add_subparsers(dest="command", required=True))
    arguments = sys.argv[1:] if argv is None else argv
    # A leading -v belongs to the top-level parser. The task name is a command of the "tasks"
    # parser, so "tasks" goes in front of it.
    verbose = [item for item in arguments[:1] if item in ("-v", "--verbose")]
    args = parser.parse_args(verbose + ["tasks"] + arguments[len(verbose):])
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
