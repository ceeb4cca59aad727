"""The demo trains (the loss goes down) and writes its outputs; bad options get clear messages."""

import re

import numpy as np
import pytest

from ctckit import demo


def test_training_lowers_the_loss():
    import ctckit.torch as ct

    _, losses, _ = demo.train(ct.CTCLossFromLogits(blank=demo.BLANK, zero_infinity=True), steps=40, seed=1, batch=8, log_every=10, progress=False)
    assert np.isfinite(losses).all()
    assert np.mean(losses[-8:]) < 0.7 * np.mean(losses[:8])


def test_short_demo_writes_its_outputs(tmp_path, capsys):
    assert demo.main(["--steps", "6", "--batch", "4", "--val", "8", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "trained in" in out and "CER" in out and "beam search" in out and "median time per step" not in out
    for name in ("loss.png", "alignment.png"):
        assert (tmp_path / name).stat().st_size > 1000


@pytest.mark.parametrize("val", [1, 5])
def test_fewer_validation_images_than_the_table_shows(tmp_path, capsys, val):
    assert demo.main(["--steps", "1", "--batch", "2", "--val", str(val), "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    table = out.split("beam search\n", 1)[1].split("\n\n", 1)[0]
    assert len(table.splitlines()) == val
    for name in ("loss.png", "alignment.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_compare_torch_reports_median_step_times_and_both_cers(tmp_path, capsys):
    assert demo.main(["--steps", "4", "--batch", "3", "--val", "4", "--out", str(tmp_path), "--no-progress",
                      "--compare-torch"]) == 0
    out = capsys.readouterr().out
    times = re.search(r"median time per step .*: ctckit ([\d.]+) ms, torch ([\d.]+) ms; torch / ctckit = ([\d.]+)", out)
    assert times, out
    ours, theirs, ratio = map(float, times.groups())
    assert ratio == pytest.approx(theirs / ours, rel=0.01, abs=0.01)
    assert re.search(r"validation CER \(greedy\): ctckit [\d.]+%, torch [\d.]+%", out), out
    assert (tmp_path / "loss.png").stat().st_size > 1000


def test_compared_trainings_alternate_steps_from_the_same_start():
    import torch.nn.functional as F

    import ctckit.torch as ct

    calls = []

    def recorded(name, loss_fn):
        def loss(*inputs):
            calls.append(name)
            return loss_fn(*inputs)
        return loss

    ours = ct.CTCLossFromLogits(blank=demo.BLANK, zero_infinity=True)
    trainings = demo.train_interleaved({"a": recorded("a", ours), "b": recorded("b", ours)},
                                       steps=4, seed=2, batch=3, log_every=10, progress=False)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]  # alternating, neither always first
    assert trainings["a"].losses == trainings["b"].losses  # same weights, same images, same updates
    assert all(len(t.step_seconds) == 4 and min(t.step_seconds) > 0 for t in trainings.values())

    def torch_loss(logits, *inputs):  # the model returns logits
        return F.ctc_loss(logits.log_softmax(-1), *inputs, blank=demo.BLANK, zero_infinity=True)

    pair = demo.train_interleaved({"ctckit": ours, "torch": torch_loss}, steps=2, seed=2, batch=3, log_every=10,
                                  progress=False)
    assert pair["ctckit"].losses[0] == pytest.approx(pair["torch"].losses[0], rel=1e-5)
    assert pair["ctckit"].losses[0] == trainings["a"].losses[0]


def test_synthetic_lines_are_reproducible_and_fit():
    a, b = demo.TextLines(3), demo.TextLines(3)
    for _ in range(20):
        (img_a, lab_a, text_a), (img_b, lab_b, _) = a.sample(), b.sample()
        assert np.array_equal(img_a, img_b) and lab_a == lab_b
        assert img_a.shape == (demo.HEIGHT, demo.WIDTH) and 3 <= len(text_a) <= 10
        assert len(lab_a) <= demo.FRAMES


def test_demo_with_a_language_model_reports_both_word_error_rates(tmp_path, capsys):
    assert demo.main(["--steps", "2", "--batch", "2", "--val", "6", "--out", str(tmp_path), "--no-progress", "--lm"]) == 0
    out = capsys.readouterr().out
    rates = re.findall(r"(greedy|language model): word error rate ([\d.]+)%, CER ([\d.]+)%", out)
    assert [name for name, _, _ in rates] == ["greedy", "language model"]
    assert all(0 <= float(wer) <= 100 for _, wer, _ in rates)
    assert "words the language model corrected:" in out and (tmp_path / "lm.arpa").exists()


def test_the_demo_vocabulary_model_pulls_a_misread_word_to_the_vocabulary(tmp_path):
    # The ARPA model of the vocabulary, in the built-in reader and in KenLM (when installed):
    # letters the acoustics leave open are read as the vocabulary's word.
    from ctckit import demo_lm
    from ctckit.decoder import build_ctcdecoder

    words = demo_lm.vocabulary(0)
    assert words == demo_lm.vocabulary(0) and len(set(words)) == demo_lm.VOCABULARY_SIZE
    path = tmp_path / "lm.arpa"
    demo_lm.write_word_arpa(words, path)
    labels = [""] + list(demo.CHARSET)
    word = words[7]
    rows = []
    for i, char in enumerate(word):  # each letter, then a blank; the third letter half another one
        row = np.full(len(labels), -12.0)
        row[labels.index(char)] = 0.0
        if i == 2:
            other = "z" if char != "z" else "y"
            row[labels.index(other)] = np.log(0.55)
            row[labels.index(char)] = np.log(0.45)
        rows += [row, np.where(np.arange(len(labels)) == 0, 0.0, -12.0)]
    logits = np.array(rows)
    backends = ["builtin"]
    try:
        import kenlm  # noqa: F401
        backends.append("kenlm")
    except ImportError:
        pass
    for backend in backends:
        plain = build_ctcdecoder(labels).decode(logits)
        assert plain != word  # the acoustics alone prefer the other letter
        assert build_ctcdecoder(labels, str(path), alpha=demo_lm.ALPHA, beta=demo_lm.BETA, lm_backend=backend).decode(logits) == word
