"""The CLI as the tests drive it: ``main`` in-process, its exit code and captured output."""

import pytest

from entk_al.cli import main


def cli(capsys, *args):
    """Run ``entk-al *args``; returns (exit code, stdout, stderr). ``args`` may hold paths."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exc.value.code, out, err
