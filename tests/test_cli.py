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


def _folder(root, classes):
    from PIL import Image

    for c in classes:
        (root / c).mkdir(parents=True)
        Image.new("RGB", (8, 8), (len(c) * 40, 0, 0)).save(root / c / "a.png")
    return str(root)


def _tree(tmp_path):
    return _folder(tmp_path / "train", ["a", "b"]), _folder(tmp_path / "val", ["a", "b"])


# The rule of engine/cli.py, end to end through train.py: what the user must fix exits 2 (a flag, the data, a
# checkpoint file, an output path), whatever the exception's type inside; a failed run exits 1 (test_train's NaN).
USER_ERRORS = {
    "unknown flag": lambda t, tr, va: ["--data_train", tr, "--data_val", va, "--no-such-flag"],
    "bad flag value": lambda t, tr, va: ["--data_train", tr, "--data_val", va, "--epochs", "0"],
    "missing data dir": lambda t, tr, va: ["--data_train", str(t / "nope"), "--data_val", va],
    "train/val classes differ": lambda t, tr, va: ["--data_train", tr, "--data_val", _folder(t / "v2", ["a", "c"])],
    "unreadable checkpoint": lambda t, tr, va: ["--data_train", tr, "--data_val", va, "-e", "--resume", _junk(t)],
    "output path under a file": lambda t, tr, va: (
        ["--data_train", tr, "--data_val", va, "--epochs", "1"] + ["--output-dir", _junk(t) + "/run"]
    ),
}


def _junk(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    return str(tmp_path / "junk.pth")


@pytest.mark.parametrize("case", USER_ERRORS)
def test_user_errors_exit_2_with_one_line(case, tmp_path, capsys):
    from partialconv.programs import train

    tr, va = _tree(tmp_path)
    argv = ["-a", "simple_cnn", "--device", "cpu", "-j", "0", "-b", "2", "--no-tensorboard"]
    argv += ["--train-crop-size", "8", "--val-resize-size", "8", "--val-crop-size", "8"]
    argv += ["--output-dir", str(tmp_path / "run"), *USER_ERRORS[case](tmp_path, tr, va)]
    try:
        code = train.cli(argv)
    except SystemExit as e:  # argparse's own exit for a flag it does not know
        code = e.code
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert code == 2 and len(err) == 1, (code, err)
