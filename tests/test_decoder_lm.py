"""ctckit.decoder: word language model, lexicon, hotwords, word frames, pickling and pools.

The tests estimate a small back-off bigram ARPA model themselves (no downloads)."""

import collections
import math
import multiprocessing
import pickle
import subprocess
import sys

import numpy as np
import pytest

import ctckit.numpy
from ctckit import _lm_scores
from ctckit import decoder as D
from ctckit._lm import ArpaLanguageModel, kenlm_available
from ctckit.errors import CTCInputError

LABELS = ["", " "] + list("abcdefghijklmnopqrstuvwxyz")
VOCABULARY = "the cat sat on a mat dog ran to big red hat".split()


def write_bigram_arpa(sentences, path, discount=0.5):
    """Back-off bigram model: add-one unigrams, absolutely discounted bigrams, back-off
    weights that make every distribution sum to one. Returns (p1, p2, backoff) in log10."""
    unigram, bigram = collections.Counter(), collections.Counter()
    for words in sentences:
        sequence = ["<s>"] + list(words) + ["</s>"]
        unigram.update(sequence[1:])
        bigram.update(zip(sequence[:-1], sequence[1:]))
    vocabulary = sorted(unigram) + ["<unk>"]
    total = sum(unigram.values()) + len(vocabulary)
    p1 = {w: (unigram[w] + 1) / total for w in vocabulary}
    history, seen = collections.Counter(), collections.defaultdict(list)
    for (u, w), count in sorted(bigram.items()):
        history[u] += count
        seen[u].append(w)
    p2 = {(u, w): round(math.log10((bigram[u, w] - discount) / history[u]), 6) for u in seen for w in seen[u]}
    backoff = {u: round(math.log10(discount * len(seen[u]) / history[u] / (1 - sum(p1[w] for w in seen[u]))), 6) for u in seen}
    log1 = {w: round(math.log10(p), 6) for w, p in p1.items()}
    lines = ["\\data\\", f"ngram 1={len(vocabulary) + 1}", f"ngram 2={len(p2)}", "", "\\1-grams:", f"-99\t<s>\t{backoff['<s>']}"]
    lines += [f"{log1[w]}\t{w}" + (f"\t{backoff.get(w, 0.0)}" if w != "</s>" else "") for w in vocabulary]
    lines += ["", "\\2-grams:"] + [f"{p}\t{u} {w}" for (u, w), p in p2.items()] + ["", "\\end\\", ""]
    path.write_text("\n".join(lines))
    return log1, p2, backoff


def sentences(count=400, seed=0):
    """A small grammar: 'the <noun> <verb> on the <noun>' and variations."""
    rng = np.random.default_rng(seed)
    nouns, verbs = ["cat", "dog", "mat", "hat"], ["sat", "ran"]
    out = []
    for _ in range(count):
        words = ["the", str(rng.choice(["big", "red"])), str(rng.choice(nouns))] if rng.random() < 0.3 else ["the", str(rng.choice(nouns))]
        words += [str(rng.choice(verbs)), str(rng.choice(["on", "to"])), "a" if rng.random() < 0.3 else "the", str(rng.choice(nouns))]
        out.append(words)
    return out


@pytest.fixture(scope="module")
def arpa(tmp_path_factory):
    path = tmp_path_factory.mktemp("lm") / "bigram.arpa"
    write_bigram_arpa(sentences(), path)
    return path


@pytest.fixture(scope="module")
def lm_decoder(arpa):
    return D.build_ctcdecoder(LABELS, str(arpa), lm_backend="builtin")


def render(text, frames_per_char=2, blanks=1, confusions=None, peak=8.0, noise=0.0, seed=0, labels=LABELS):
    """(T, C) log-probs of ``text`` along a fixed path (each character ``frames_per_char``
    frames, then ``blanks`` blank frames), and each character's frames. ``confusions`` maps
    a character position to (another character, its logit relative to the true one)."""
    rng = np.random.default_rng(seed)
    path, spans = [], []
    for char in text:
        spans.append((len(path), len(path) + frames_per_char))
        path += [labels.index(char)] * frames_per_char + [0] * blanks
    logits = rng.normal(0.0, noise, (len(path), len(labels))) if noise else np.zeros((len(path), len(labels)))
    logits[np.arange(len(path)), path] += peak
    for position, (char, relative) in (confusions or {}).items():
        start, end = spans[position]
        logits[start:end, labels.index(char)] = logits[start:end, labels.index(text[position])] + relative
    logits -= logits.max(axis=1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True)), spans


def test_import_loads_neither_torch_nor_kenlm():
    code = "import sys, ctckit.decoder; print(sorted(m for m in ('torch', 'kenlm') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_builtin_scores_follow_the_back_off_rule(arpa, tmp_path):
    log1, p2, backoff = write_bigram_arpa(sentences(), tmp_path / "again.arpa")
    model = ArpaLanguageModel(str(arpa))
    assert model.order == 2 and "cat" in model and "xyz" not in model
    state = model.begin_state()
    for word in ["the", "cat", "zebra", "on", "mat", "</s>"]:
        log10, following = model.score(state, word)
        key = word if word in log1 else "<unk>"
        expected = p2.get((state[-1], key)) if state else None
        if expected is None:
            expected = (backoff.get(state[-1], 0.0) if state else 0.0) + log1[key]
        assert log10 == pytest.approx(expected, abs=1e-12), (state, word)
        state = following
    assert model.score((), "cat")[0] == pytest.approx(log1["cat"], abs=1e-12)


@pytest.mark.skipif(not kenlm_available(), reason="the kenlm binding is not installed: built-in scorer not compared with KenLM")
def test_builtin_scores_equal_kenlm(arpa):
    from ctckit._lm import KenLMLanguageModel
    builtin, kenlm = ArpaLanguageModel(str(arpa)), KenLMLanguageModel(str(arpa))
    rng = np.random.default_rng(1)
    words = VOCABULARY + ["zebra", "</s>"]
    for _ in range(50):
        a, b = builtin.begin_state(), kenlm.begin_state()
        for word in rng.choice(words, 6):
            (x, a), (y, b) = builtin.score(a, str(word)), kenlm.score(b, str(word))
            assert x == pytest.approx(y, abs=1e-5), word
    a, b = builtin.null_state(), kenlm.null_state()
    assert builtin.score(a, "sat")[0] == pytest.approx(kenlm.score(b, "sat")[0], abs=1e-5)
    one = D.build_ctcdecoder(LABELS, str(arpa), lm_backend="builtin")
    other = D.build_ctcdecoder(LABELS, str(arpa), lm_backend="kenlm")
    x, _ = render("the dog ran to the mat", confusions={4: ("b", 0.5)}, noise=0.5)
    (text, _, frames, _, combined), (text2, _, frames2, _, combined2) = one.decode_beams(x)[0], other.decode_beams(x)[0]
    assert (text, frames) == (text2, frames2) and combined == pytest.approx(combined2, abs=1e-4)


def test_language_model_corrects_an_ambiguous_letter(lm_decoder):
    # 'c' of 'cat' is slightly weaker than 'x': greedy and the plain search read 'xat'
    x, _ = render("the cat sat on the mat", confusions={4: ("x", 0.3)})
    plain = D.build_ctcdecoder(LABELS)
    assert plain.decode(x) == "the xat sat on the mat"
    assert lm_decoder.decode(x) == "the cat sat on the mat"
    # and a real word chosen by context: 'hat' vs 'mat' after 'the', 'sat' vs 'sxt'
    y, _ = render("the dog ran to a hat", confusions={8: ("x", 0.5)})
    assert lm_decoder.decode(y) == "the dog ran to a hat"


def test_combined_score_is_the_documented_formula(arpa, lm_decoder):
    x, _ = render("the big dog ran on a mat", noise=0.3, seed=3)
    text, state, _, logit, combined = lm_decoder.decode_beams(x)[0]
    model = ArpaLanguageModel(str(arpa))
    expected, history = 0.0, model.begin_state()
    for word in text.split() + ["</s>"]:
        log10, history = model.score(history, word)
        expected += 0.5 * math.log(10) * log10 + (1.5 if word != "</s>" else 0.0)
    assert combined - logit == pytest.approx(expected, abs=1e-9)
    assert state == ("mat",)


@pytest.mark.parametrize("seed", range(6))
def test_without_language_model_the_search_is_ctckit_beam_search(seed):
    rng = np.random.default_rng(seed)
    labels = ["", " ", "a", "b", "c", "d"]
    frames = int(rng.integers(1, 14))
    x = rng.normal(0.0, 2.0, (frames, len(labels)))
    decoder = D.build_ctcdecoder(labels, alpha=0.0, beta=0.0)
    log_probs = decoder._log_probs(x)
    width = int(rng.choice([1, 3, 8]))
    ours = decoder._search(log_probs, width, -12.0, -6.0, (), 10.0, False)
    theirs = ctckit.numpy.beam_search(log_probs, beam_width=width, top_k=width, token_min_log_prob=-6.0, beam_prune_log_prob=-12.0)
    assert [labels for labels, _, _ in ours] == [labels for labels, _ in theirs]
    np.testing.assert_allclose([a for _, a, _ in ours], [s for _, s in theirs], rtol=0, atol=1e-12)
    assert all(extra == 0.0 for _, _, extra in ours)
    merged = {}
    for labels_, score in theirs:  # the same hypotheses merged by text, as decode_beams does
        text = " ".join("".join(labels[c] for c in labels_).split())
        merged[text] = np.logaddexp(merged.get(text, -np.inf), score)
    best = max(merged, key=lambda text: (merged[text], -list(merged).index(text)))
    assert decoder.decode(x, beam_width=width, beam_prune_logp=-12.0, token_min_logp=-6.0) == best


def test_language_model_with_zero_weights_changes_nothing(arpa):
    """With alpha = beta = unk_score_offset = 0 the model is queried but adds nothing."""
    rng = np.random.default_rng(7)
    silent = D.build_ctcdecoder(LABELS, str(arpa), alpha=0.0, beta=0.0, unk_score_offset=0.0, lm_backend="builtin")
    plain = D.build_ctcdecoder(LABELS)
    for _ in range(3):
        x = rng.normal(0.0, 3.0, (12, len(LABELS)))
        x[:, 1] += 2.0  # spaces, so that words end and the model is asked
        assert silent._search(silent._log_probs(x), 8, -20.0, -8.0, (), 10.0, False) == plain._search(plain._log_probs(x), 8, -20.0, -8.0, (), 10.0, False)
    assert silent._scores.cached > 0


def test_word_frames_cover_each_word(lm_decoder):
    text = "the red hat ran to the dog"
    x, spans = render(text, frames_per_char=3, blanks=1, noise=0.3, seed=5)
    beams = lm_decoder.decode_beams(x)
    assert beams[0][0] == text
    for beam_text, _, frames, _, _ in beams:
        assert [word for word, _ in frames] == beam_text.split()
        ends = [0] + [bound for _, span in frames for bound in span] + [x.shape[0]]
        assert all(start < end for _, (start, end) in frames) and ends == sorted(ends)
    position, expected = 0, []
    for word in text.split():
        expected.append((word, (spans[position][0], spans[position + len(word) - 1][1])))
        position += len(word) + 1
    assert beams[0][2] == expected


def test_hotwords_pull_their_word_in(lm_decoder):
    x, _ = render("the cat sat on the mat", confusions={4: ("x", 0.3)})
    assert lm_decoder.decode(x) == "the cat sat on the mat"
    assert lm_decoder.decode(x, hotwords=["xat"]) == "the xat sat on the mat"
    assert lm_decoder.decode(x, hotwords=["xat"], hotword_weight=0.0) == "the cat sat on the mat"
    plain = D.build_ctcdecoder(LABELS)
    y, _ = render("the cat sat", confusions={4: ("x", 0.3)})
    assert plain.decode(y) == "the xat sat"
    assert plain.decode(y, hotwords=["big cat"]) == "the cat sat"


def test_word_pieces(arpa):
    labels = ["", "▁the", "▁c", "▁m", "at", "▁sat", "▁on", "▁x"]
    decoder = D.build_ctcdecoder(labels, str(arpa), lm_backend="builtin")
    pieces = [1, 2, 4, 5, 6, 1, 3, 4]  # the cat sat on the mat
    x = np.full((2 * len(pieces), len(labels)), -8.0)
    for i, piece in enumerate(pieces):
        x[2 * i, piece], x[2 * i + 1, 0] = 0.0, 0.0
    x[2, 7] = -0.2  # '▁x' almost as likely as '▁c'
    assert D.build_ctcdecoder(labels).decode(x) == "the cat sat on the mat"
    x[2, 7] = 0.3
    assert D.build_ctcdecoder(labels).decode(x) == "the xat sat on the mat"
    text, _, frames, _, _ = decoder.decode_beams(x)[0]
    assert text == "the cat sat on the mat"
    assert frames[1] == ("cat", (2, 5))


def test_prune_history_keeps_the_better_of_beams_the_model_cannot_tell_apart(lm_decoder):
    # 'hat' and 'mat' equally likely: after 'sat' both beams have the bigram state ('sat',)
    x, _ = render("the hat sat on the mat", confusions={4: ("m", 0.0)})
    texts = [beam[0] for beam in lm_decoder.decode_beams(x)]
    assert {"the hat sat on the mat", "the mat sat on the mat"} <= set(texts)
    pruned = lm_decoder.decode_beams(x, prune_history=True)
    pruned_texts = [beam[0] for beam in pruned]
    assert len({"the hat sat on the mat", "the mat sat on the mat"} & set(pruned_texts)) == 1
    assert pruned_texts[0] == texts[0] and set(pruned_texts) < set(texts)
    assert lm_decoder.decode(x) == pruned_texts[0]  # decode prunes, as pyctcdecode's does


@pytest.mark.parametrize("seed", range(4))
def test_prune_history_keeps_a_subset_and_the_best(lm_decoder, seed):
    """Pruning drops beams and never invents one; the best hypothesis survives it."""
    x, _ = render(" ".join(sentences(1, seed)[0]), noise=1.2, seed=seed)
    full, pruned = lm_decoder.decode_beams(x, beam_width=32), lm_decoder.decode_beams(x, beam_width=32, prune_history=True)
    assert {b[0] for b in pruned} <= {b[0] for b in full} and pruned[0][0] == full[0][0]
    states = {b[0]: b[1] for b in full}
    assert all(b[1] == states[b[0]] for b in pruned)


def test_prune_history_with_word_pieces(arpa):
    labels = ["", "▁the", "▁c", "▁m", "at", "▁sat", "▁on", "▁x", "▁h"]
    decoder = D.build_ctcdecoder(labels, str(arpa), lm_backend="builtin")
    pieces = [1, 8, 4, 5, 6, 1, 3, 4]  # the hat sat on the mat
    x = np.full((2 * len(pieces), len(labels)), -8.0)
    for i, piece in enumerate(pieces):
        x[2 * i, piece], x[2 * i + 1, 0] = 0.0, 0.0
    x[2, 3] = 0.0  # '▁m' as likely as '▁h'
    texts = [b[0] for b in decoder.decode_beams(x)]
    pruned = [b[0] for b in decoder.decode_beams(x, prune_history=True)]
    assert {"the hat sat on the mat", "the mat sat on the mat"} <= set(texts)
    assert len({"the hat sat on the mat", "the mat sat on the mat"} & set(pruned)) == 1 and pruned[0] == texts[0]


def test_results_do_not_depend_on_the_score_cache(arpa, lm_decoder, monkeypatch):
    inputs = [render(text, noise=0.8, seed=i)[0] for i, text in enumerate(["the cat sat on a mat", "a big dog ran", "the red hat"])]
    first = [lm_decoder.decode_beams(x) for x in inputs]
    assert [lm_decoder.decode_beams(x) for x in inputs] == first
    monkeypatch.setattr(_lm_scores, "FIRST_SLOTS", 2)  # the cache grows in the middle of searches
    grows = D.build_ctcdecoder(LABELS, str(arpa), lm_backend="builtin")
    assert [grows.decode_beams(x) for x in inputs] == first and grows._scores.table[0].size > 8
    monkeypatch.setattr(_lm_scores, "MAX_CACHED_SCORES", 16)  # the cache is emptied again and again
    fresh = D.build_ctcdecoder(LABELS, str(arpa), lm_backend="builtin")
    assert [fresh.decode_beams(x) for x in inputs] == first


def test_an_error_of_the_model_during_a_search_reaches_the_caller(arpa, monkeypatch):
    decoder = D.build_ctcdecoder(LABELS, str(arpa), lm_backend="builtin")
    x, _ = render("the cat sat on the mat", noise=0.3)
    expected = D.build_ctcdecoder(LABELS, str(arpa), lm_backend="builtin").decode(x)

    def broken(state, word):
        raise RuntimeError("the model is gone")

    monkeypatch.setattr(decoder.language_model, "score", broken)
    with pytest.raises(RuntimeError, match="the model is gone"):  # raised inside the search's call back
        decoder.decode(x)
    monkeypatch.undo()
    assert decoder.decode(x) == expected


def test_pickle_and_fork_pool_give_the_same_results(arpa, lm_decoder):
    inputs = [render(text, noise=0.8, seed=i)[0] for i, text in enumerate(["the cat sat on a mat", "a big dog ran", "the red hat", "the dog"])]
    expected = [lm_decoder.decode(x, hotwords=["xat"]) for x in inputs]
    copy = pickle.loads(pickle.dumps(lm_decoder))
    assert [copy.decode(x, hotwords=["xat"]) for x in inputs] == expected
    assert copy.decode_beams(inputs[0]) == lm_decoder.decode_beams(inputs[0])
    assert lm_decoder.decode_batch(None, inputs, hotwords=["xat"]) == expected
    context = multiprocessing.get_context("fork")
    with context.Pool(2) as pool:  # forked after the decoder was built: workers use the inherited one
        assert lm_decoder.decode_batch(pool, inputs, hotwords=["xat"]) == expected
        assert [beams[0][0] for beams in lm_decoder.decode_beams_batch(pool, inputs, hotwords=["xat"])] == expected
        later = D.build_ctcdecoder(LABELS, str(arpa), lm_backend="builtin")  # built after the fork: sent pickled
        assert later.decode_batch(pool, inputs, hotwords=["xat"]) == expected


def test_torch_tensors_are_accepted(lm_decoder):
    torch = pytest.importorskip("torch")
    x, _ = render("the cat sat on the mat", confusions={4: ("x", 0.3)}, noise=0.2)
    assert lm_decoder.decode(torch.from_numpy(x).float()) == lm_decoder.decode(x.astype(np.float32))
    assert lm_decoder.decode(torch.from_numpy(x).to(torch.bfloat16)) == "the cat sat on the mat"


def test_unnormalised_logits_are_normalised(lm_decoder):
    x, _ = render("the cat sat on the mat", noise=0.5)
    shifted, plain = lm_decoder.decode_beams(x + 3.0), lm_decoder.decode_beams(x)
    assert [(t, f) for t, _, f, _, _ in shifted] == [(t, f) for t, _, f, _, _ in plain]
    np.testing.assert_allclose([b[3:] for b in shifted], [b[3:] for b in plain], rtol=0, atol=1e-9)


@pytest.mark.parametrize("call, error, match", [
    (lambda d: d.decode(np.zeros((4, 5))), CTCInputError, "logits"),
    (lambda d: d.decode(np.zeros((0, len(LABELS)))), CTCInputError, "logits"),
    (lambda d: d.decode(np.full((3, len(LABELS)), np.nan)), CTCInputError, r"logits\[0, 0\]"),
    (lambda d: d.decode(np.full((3, len(LABELS)), -np.inf)), CTCInputError, r"logits\[0\]"),
    (lambda d: d.decode(np.array([["a"] * len(LABELS)])), TypeError, "logits"),
    (lambda d: d.decode(np.zeros((3, len(LABELS))), beam_width=0), CTCInputError, "beam_width"),
    (lambda d: d.decode(np.zeros((3, len(LABELS))), beam_width=2.0), TypeError, "beam_width"),
    (lambda d: d.decode(np.zeros((3, len(LABELS))), beam_prune_logp=1.0), CTCInputError, "beam_prune_logp"),
    (lambda d: d.decode(np.zeros((3, len(LABELS))), token_min_logp=float("nan")), CTCInputError, "token_min_logp"),
    (lambda d: d.decode(np.zeros((3, len(LABELS))), hotwords="cat"), TypeError, "hotwords"),
    (lambda d: d.decode(np.zeros((3, len(LABELS))), hotwords=[1]), TypeError, r"hotwords\[0\]"),
    (lambda d: d.decode(np.zeros((3, len(LABELS))), hotword_weight=float("inf")), CTCInputError, "hotword_weight"),
    (lambda d: d.decode_batch(None, [np.zeros((3, len(LABELS)))], beam_width=-1), CTCInputError, "beam_width"),
    (lambda d: d.decode_beams(np.zeros((3, len(LABELS))), prune_history="yes"), TypeError, "prune_history"),
    (lambda d: d.decode_beams_batch(None, [np.zeros((3, len(LABELS)))], prune_history=1), TypeError, "prune_history"),
])
def test_bad_decode_arguments(lm_decoder, call, error, match):
    with pytest.raises(error, match=match):
        call(lm_decoder)


def test_options_checked_once_are_not_trusted_for_other_types(lm_decoder):
    x = np.zeros((3, len(LABELS)))
    lm_decoder.decode(x, beam_width=8, beam_prune_logp=-10.0)
    with pytest.raises(TypeError, match="beam_width"):
        lm_decoder.decode(x, beam_width=8.0, beam_prune_logp=-10.0)  # equal to the last one, but a float
    with pytest.raises(CTCInputError, match="beam_prune_logp"):
        lm_decoder.decode(x, beam_width=8, beam_prune_logp=float("nan"))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(labels=["a", "b"]), CTCInputError, "labels"),
    (dict(labels=["", "a", "a"]), CTCInputError, "labels"),
    (dict(labels="abc"), TypeError, "labels"),
    (dict(labels=["", 1]), TypeError, r"labels\[1\]"),
    (dict(labels=["", "▁a", " "]), CTCInputError, "labels"),
    (dict(kenlm_model_path="/nonexistent/model.arpa"), CTCInputError, "kenlm_model_path"),
    (dict(kenlm_model_path=3), TypeError, "kenlm_model_path"),
    (dict(alpha=float("nan")), CTCInputError, "alpha"),
    (dict(beta="1"), TypeError, "beta"),
    (dict(unk_score_offset=float("-inf")), CTCInputError, "unk_score_offset"),
    (dict(lm_score_boundary=1), TypeError, "lm_score_boundary"),
    (dict(lm_backend="other"), CTCInputError, "lm_backend"),
    (dict(unigrams="cat"), TypeError, "unigrams"),
])
def test_bad_build_arguments(arpa, kwargs, error, match):
    arguments = dict(labels=LABELS, kenlm_model_path=str(arpa), lm_backend="builtin")
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        D.build_ctcdecoder(**arguments)


def test_bad_arpa_file(tmp_path):
    path = tmp_path / "bad.arpa"
    path.write_text("\\data\\\nngram 1=1\n\n\\1-grams:\n-1.0\n\\end\\\n")
    with pytest.raises(CTCInputError, match="kenlm_model_path"):
        D.build_ctcdecoder(LABELS, str(path), lm_backend="builtin")
