"""``python -m entk_al.cli``: the same as the ``entk-al`` console script."""

from . import main

main()
