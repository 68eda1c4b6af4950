"""charrnn.cli.main() run in-process, as the user's command: for tests that check exit statuses,
one-line errors and what a command leaves behind without the cost of a subprocess."""

import io
import sys

import pytest

from charrnn.cli import main


def call_main(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `charrnn ARGS` with an empty stdin."""
    monkeypatch.setattr(sys, "argv", ["charrnn", *map(str, args)])
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b""), encoding="utf-8"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main()
    out, err = capsys.readouterr()
    return exc.value.code or 0, out, err
