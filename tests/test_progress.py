"""common/progress.py: one progress bar for all long work, on stderr, with a rate and an ETA."""

from __future__ import annotations

import time

from common.progress import ProgressBar


def test_a_bar_shows_done_of_total_and_a_rate_on_stderr_only(capsys):
    with ProgressBar("scoring masks", 4, unit="masks", transient=False) as bar:
        for _ in range(3):
            time.sleep(0.02)
            bar.advance()
        bar.log("a line above the bar")
        assert bar.speed is not None and bar.speed > 0
    out, err = capsys.readouterr()
    assert out == ""  # stdout keeps only the results
    assert "scoring masks" in err and "3/4" in err and "masks/s" in err and "ETA" in err
    assert "a line above the bar" in err


def test_a_new_phase_restarts_the_count_with_its_own_unit(capsys):
    with ProgressBar("rendering", 10, unit="pictures", transient=False) as bar:
        bar.advance(10)
        bar.update(label="training", total=5, unit="steps", restart=True)
        bar.update(info="loss 0.123")
        bar.advance(2)
    err = capsys.readouterr().err
    assert "training" in err and "2/5" in err and "steps/s" in err and "loss 0.123" in err


def test_bytes_show_as_sizes_and_transfer_speed(capsys):
    with ProgressBar("pull", 3_000_000, unit="bytes", transient=False) as bar:
        bar.advance(1_500_000)
    err = capsys.readouterr().err
    assert "pull" in err and "1.5/3.0 MB" in err


def test_a_disabled_bar_is_silent_but_its_log_lines_still_reach_stderr(capsys):
    with ProgressBar("bank items", 8, enabled=False) as bar:
        bar.advance(8)
        bar.update(label="other", info="x")
        bar.log("shard 0 is damaged, rebuilding it")
        assert bar.speed is None
    out, err = capsys.readouterr()
    assert out == "" and err == "shard 0 is damaged, rebuilding it\n"


def test_a_transient_bar_writes_nothing_where_stderr_is_not_a_terminal(capsys):
    """Found by a fault probe: rich left a blank line on exit, so an error after a bar (data toy
    in a pipe) was two lines."""
    with ProgressBar("images", 3, unit="images") as bar:
        bar.advance(3)
    assert capsys.readouterr().err == ""
