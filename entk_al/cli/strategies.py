"""``entk-al strategies [NAME]``: list the strategies, or show one strategy's options."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .output import echo


def strategies(
    name: Annotated[Optional[str], typer.Argument(
        help="Show this strategy's options (a name, module:Class or file.py:Class).")] = None,
) -> None:
    """List the registered query strategies with a one-line description each, or one strategy's options."""
    from ..run.plugins import available_strategies

    if name is not None:
        _show(name)
        return
    items = available_strategies()
    width = max(len(n) for n in items)
    for key, (origin, desc) in sorted(items.items()):
        echo(f"{key:<{width}}  {desc}" + ("" if origin == "built-in" else f"  [{origin}]"))


def _show(spec: str) -> None:
    from ..run.plugins import describe_options, describe_strategy, resolve_strategy_class

    cls = resolve_strategy_class(spec)
    desc = describe_strategy(cls)
    echo(f"{spec}: {desc}" if desc else spec)
    options = describe_options(cls)
    if not options:
        echo("no options")
        return
    echo("options (-o name=value):")
    rows = [("name", "type", "default", "meaning"), *options]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        echo("  " + "  ".join(f"{cell:<{w}}" for cell, w in zip(row[:3], widths)) + f"  {row[3]}".rstrip())
