import pytest

from vild.cli import main


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--teacher", "x", "--out", "o"], "give --world, or both --images and --annotations"),
        (["eval", "--model", "m"], "give --world, or both --images and --dataset"),
        (["eval", "--model", "m", "--world", "w", "--device", "bogus"], "unknown device 'bogus'"),
        (["embed-regions", "--model", "m", "--teacher", "t", "--out", "o"], "give --world"),
        (["train", "--world", "nowhere", "--teacher", "x", "--out", "o"], "not a ShapeWorld-OV world"),
    ],
)
def test_cli_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_help_lists_every_stage(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("make-world", "train-teacher", "build-classifier", "embed-regions", "train", "eval"):
        assert command in out
