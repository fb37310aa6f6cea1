"""Build and training progress: a redrawn bar on a terminal, plain lines with the same figures in a
log (export/progress.py)."""

from __future__ import annotations

import io
import re

from multitask_serve.export.progress import progress


class Stderr(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def run_epochs(epochs: int, stop_after: int | None = None) -> None:
    bar = progress(range(epochs), "sentiment top-2 seed 0", per_step=True)
    for epoch in bar:
        for _ in progress(range(5), f"epoch {epoch + 1}"):
            pass
        bar.set_postfix(loss=f"{0.5 / (epoch + 1):.3f}", val="0.800", layers=2)
        if stop_after is not None and epoch + 1 == stop_after:
            break


def test_without_a_terminal_each_epoch_is_one_plain_line_with_its_figures(monkeypatch):
    err = Stderr(tty=False)
    monkeypatch.setattr("sys.stderr", err)
    run_epochs(3)
    lines = err.getvalue().splitlines()
    assert "\r" not in err.getvalue()
    assert [re.sub(r" \(\d+\.\d s\)$", "", line) for line in lines] == [
        "epoch 1: 5/5",
        "sentiment top-2 seed 0: 1/3 loss=0.500 val=0.800 layers=2",
        "epoch 2: 5/5",
        "sentiment top-2 seed 0: 2/3 loss=0.250 val=0.800 layers=2",
        "epoch 3: 5/5",
        "sentiment top-2 seed 0: 3/3 loss=0.167 val=0.800 layers=2",
    ]
    assert all(re.search(r" \(\d+\.\d s\)$", line) for line in lines)


def test_an_early_stop_still_writes_the_line_of_its_last_epoch(monkeypatch):
    err = Stderr(tty=False)
    monkeypatch.setattr("sys.stderr", err)
    run_epochs(5, stop_after=2)
    epochs = [line for line in err.getvalue().splitlines() if line.startswith("sentiment")]
    assert [line.split(" loss")[0] for line in epochs] == [
        "sentiment top-2 seed 0: 1/5",
        "sentiment top-2 seed 0: 2/5",
    ]


def test_an_inner_loop_left_early_writes_one_line_with_what_it_did(monkeypatch):
    err = Stderr(tty=False)
    monkeypatch.setattr("sys.stderr", err)
    for i in progress(iter(range(10)), "tap 4 cache"):
        if i == 3:
            break
    assert re.fullmatch(r"tap 4 cache: 4 \(\d+\.\d s\)\n", err.getvalue())


def test_on_a_terminal_a_bar_is_redrawn_with_the_figures(monkeypatch):
    err = Stderr(tty=True)
    monkeypatch.setattr("sys.stderr", err)
    run_epochs(3)
    out = err.getvalue()
    assert "\r" in out  # redrawn in place
    assert "sentiment top-2 seed 0: 100%" in out
    assert "layers=2, loss=0.167, val=0.800]" in out  # tqdm sorts the figures
    # Inner bars are cleared when done; the epoch bar stays.
    assert out.rstrip().endswith("val=0.800]")
