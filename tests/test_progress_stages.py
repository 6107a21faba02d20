"""mixvlp_ds.stage_progress: one display per stage on the screen, the per-epoch lines in its log."""

import io
import sys

import numpy as np
import pytest
import torch

from mixvlp_ds import stage_progress
from mixvlp_ds.apps.loop import FitOptions, fit


def two_heads(epochs: int = 30) -> None:
    """What a fine-tuning run does: one fit per head, each printing a line per epoch."""
    x = torch.randn(48, 3)
    for name in stage_progress.over(["cls-img", "cls-txt"]):
        head = torch.nn.Linear(3, 1)
        fit([head], lambda rows, head=head: head(x[rows]).pow(2).mean(), len(x),
            FitOptions(epochs=epochs, batch_size=16, lr=1e-2, name=name))
    print(f"[finetune] results: {len(x)} rows")


def test_plain_mode_prints_a_bounded_number_of_lines_and_logs_every_epoch(tmp_path, capsys):
    log = tmp_path / "logs" / "4-finetune_cls.log"
    with stage_progress.stage("4/7 fine-tune cls", 1, log, "a description", plain_every=0):
        two_heads(30)
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert 2 <= len(lines) <= 11, lines            # a header, at most 9 lines at 10% steps, the end
    assert lines[0] == "=== 4/7 fine-tune cls: a description ==="
    assert lines[-1].startswith("  done in ") and lines[-1].endswith("[finetune] results: 48 rows")
    assert "epoch" not in lines[0] + lines[-1] and not out.err
    logged = log.read_text().splitlines()
    for name in ("cls-img", "cls-txt"):
        assert sum(f"[{name}] epoch" in line for line in logged) == 30
    assert "[finetune] results: 48 rows" in logged


def test_a_short_stage_prints_two_lines_and_says_what_it_reused(tmp_path, capsys):
    with stage_progress.stage("1/7 shards", 3, tmp_path / "1.log"):   # plain lines at most every 10 s
        for _ in range(200):
            stage_progress.advance(0.01, "busy")
        print("/tmp/" + "a-long-folder/" * 20 + "shards/openi-like: already written")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[1].endswith("shards/openi-like: already written")   # the middle goes
    assert lines[1].startswith("  done in ") and "…" in lines[1] and len(lines[1]) < 200


def test_parts_and_spans_add_up(tmp_path, capsys):
    with stage_progress.stage("7/7 runs", 4, tmp_path / "7.log") as st:
        for _ in range(2):
            with stage_progress.part():                    # a run: one unit of the stage
                for _ in stage_progress.over(["img", "txt"]):
                    stage_progress.report(1, 2)            # half of this head
                    assert st.completed % 0.5 == pytest.approx(0.25)
        assert st.completed == pytest.approx(2.0)
        with stage_progress.part():                         # a skipped run still counts
            pass
        assert st.completed == pytest.approx(3.0) and st.spans == [(0.0, 4.0)]
    assert stage_progress.active() is None


def test_outside_a_stage_nothing_changes(capsys):
    assert list(stage_progress.over([1, 2])) == [1, 2]
    stage_progress.report(1, 2, "x")
    with stage_progress.part():
        print("to the screen")
    assert capsys.readouterr().out == "to the screen\n"


def test_streams_come_back_and_a_failure_names_the_log(tmp_path, capsys):
    before = sys.stdout, sys.stderr
    with pytest.raises(ValueError), stage_progress.stage("3/7 pre-training", 1, tmp_path / "3.log"):
        print("step 10/20")
        raise ValueError("boom")
    assert (sys.stdout, sys.stderr) == before and stage_progress.active() is None
    last = capsys.readouterr().out.splitlines()[-1]
    assert "failed after" in last and "ValueError" in last and str(tmp_path / "3.log") in last
    assert "step 10/20" in (tmp_path / "3.log").read_text()


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_mode_draws_a_bar_and_keeps_epochs_off_the_screen(tmp_path, monkeypatch):
    screen = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", screen)
    monkeypatch.setenv("COLUMNS", "150")
    with stage_progress.stage("4/7 fine-tune cls", 1, tmp_path / "4.log"):
        two_heads(5)
    shown = screen.getvalue()
    assert "4/7 fine-tune cls" in shown and "100%" in shown and "[finetune] results: 48 rows" in shown
    assert "epoch 1/5" not in shown and shown.count("\n") <= 2   # one line, redrawn in place
    assert np.sum(["epoch" in line for line in (tmp_path / "4.log").read_text().splitlines()]) == 10
