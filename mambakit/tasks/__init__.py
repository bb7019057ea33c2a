"""Synthetic tasks from the Mamba paper that show what the selection mechanism adds.

- ``selective_copying``: copy data tokens scattered at random positions among noise tokens.
- ``induction_heads``: recall the token after a trigger token, at lengths beyond training.
- ``runner``: ``train_task`` trains a small ``Mamba`` LM with either mixer and measures accuracy.
- ``cli``: ``add_tasks_parser`` adds the ``tasks`` command to the command line.
- ``plot``: draws the accuracies recorded by ``tasks ... --json`` into one figure.
"""

from mambakit.tasks.cli import add_tasks_parser

__all__ = ["add_tasks_parser"]
