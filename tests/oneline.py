"""The CLI's error contract, asserted the same way everywhere: what the command wrote to stderr ends in one line
``fastprune: error: ...`` naming what is wrong, with no traceback."""


def one_line_error(capsys, *expected: str) -> str:
    """The error line of what the command wrote to stderr (third-party log lines before it aside); each of
    ``expected`` must be in it."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    line = err.splitlines()[-1]
    assert line.startswith("fastprune: error: "), err
    for text in expected:
        assert text in line, err
    return line
