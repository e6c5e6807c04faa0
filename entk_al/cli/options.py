"""Options several commands share, declared once as ``Annotated`` aliases.

A command writes ``device: Device = None``; the default stays with the command (None means
"not given": the run configuration's default, or the protocol's value, applies). Every option
of every command is declared this way, ``name: Annotated[type, typer.Option(...)] = default``.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..errors import ConfigError
from ..run.config import default


def check_out_dir(path, flag: str = "--out") -> None:
    """Refuse an output folder that exists as something other than a folder, before any work.

    Args:
        path: the folder a command will write into (``pathlib.Path``), or None (nothing to check).
        flag: the option's name, for the message.

    Raises:
        ConfigError: ``path`` exists and is not a directory.
    """
    if path is not None and path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is a file, not a directory")

Device = Annotated[Optional[str], typer.Option(
    help=f"auto, cpu or cuda[:N] (default: {default('device')}, unless a config or protocol file sets it).")]
DataDir = Annotated[Optional[str], typer.Option(
    help="Folder holding dataset files (overrides a config or protocol file).")]
Download = Annotated[Optional[bool], typer.Option(
    "--download/--no-download", help="Allow torchvision downloads (overrides a config or protocol file).")]
#: The same options for commands that read no config or protocol file (fidelity, approx).
PlainDevice = Annotated[Optional[str], typer.Option(help="auto, cpu or cuda[:N].")]
PlainDataDir = Annotated[Optional[str], typer.Option(help="Folder holding dataset files.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
