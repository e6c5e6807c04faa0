"""``python -m entk_al``: the same as the ``entk-al`` console script."""

from .cli import main

main()
