"""run_cli: expected errors become one stderr line and their exit code; the rest propagate; cleanup always runs."""

import pytest

from partialconv.engine.cli import run_cli


class _ConfigError(ValueError):
    pass


def _raising(error: BaseException):
    def main(argv):
        raise error

    return main


ERRORS = [(_ConfigError, 2), ((ValueError, FileNotFoundError), 1)]


@pytest.mark.parametrize(
    "error,code", [(_ConfigError("bad --lr"), 2), (ValueError("bad --lr"), 1), (FileNotFoundError("bad --lr"), 1)]
)
def test_first_matching_error_gives_its_code_and_one_line(capsys, error, code):
    cleaned = []
    assert run_cli(_raising(error), [], "prog.py", ERRORS, cleanup=lambda: cleaned.append(True)) == code
    assert capsys.readouterr().err == "prog.py: error: bad --lr\n"
    assert cleaned == [True]


def test_success_returns_mains_code_and_unexpected_errors_propagate(capsys):
    cleaned = []
    assert run_cli(lambda argv: len(argv), ["a", "b"], "prog.py", ERRORS, cleanup=lambda: cleaned.append(1)) == 2
    with pytest.raises(KeyError):
        run_cli(_raising(KeyError("bug")), [], "prog.py", ERRORS, cleanup=lambda: cleaned.append(1))
    assert cleaned == [1, 1] and capsys.readouterr().err == ""
