"""The demo trains (the loss goes down) and writes its outputs; bad options get clear messages."""

import numpy as np
import pytest

from ctckit import demo


def test_training_lowers_the_loss():
    import ctckit.torch as ct

    _, losses, _ = demo.train(ct.CTCLoss(blank=demo.BLANK, zero_infinity=True), steps=40, seed=1, batch=8, log_every=10, progress=False)
    assert np.isfinite(losses).all()
    assert np.mean(losses[-8:]) < 0.7 * np.mean(losses[:8])


def test_short_demo_writes_its_outputs(tmp_path, capsys):
    assert demo.main(["--steps", "6", "--batch", "4", "--val", "8", "--out", str(tmp_path), "--no-progress", "--compare-torch"]) == 0
    out = capsys.readouterr().out
    assert "CER" in out and "beam search" in out and "torch's ctc_loss" in out
    for name in ("loss.png", "alignment.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_bad_option_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        demo.main(["--steps", "0"])
    assert "--steps must be at least 1, got 0" in capsys.readouterr().err


def test_synthetic_lines_are_reproducible_and_fit():
    a, b = demo.TextLines(3), demo.TextLines(3)
    for _ in range(20):
        (img_a, lab_a, text_a), (img_b, lab_b, _) = a.sample(), b.sample()
        assert np.array_equal(img_a, img_b) and lab_a == lab_b
        assert img_a.shape == (demo.HEIGHT, demo.WIDTH) and 3 <= len(text_a) <= 10
        assert len(lab_a) <= demo.FRAMES
