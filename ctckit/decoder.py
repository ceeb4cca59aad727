r"""CTC beam search with a word n-gram language model, hotwords and a lexicon.

pyctcdecode's API (:func:`build_ctcdecoder`, ``decode``, ``decode_beams``,
``decode_batch``) over ctckit's prefix beam search (:mod:`ctckit._core.lm_beam`, Numba).
A hypothesis ``l`` is ranked by

.. math::
    \log(p_b(l) + p_{nb}(l)) + \sum_{w \in \mathrm{words}(l)} \big(\alpha \ln p_{LM}(w \mid h)
    + \beta\big) + \mathrm{partial}(l)

with ``p_b``, ``p_nb`` the acoustic probabilities of the paths ending in a blank or in
``l``'s last label (Graves 2012, ch. 7), ``alpha * ln(10) * unk_score_offset`` more for a
completed word outside the lexicon, ``hotword_weight`` more for a hotword, and
``partial`` the score of the unfinished last word: ``hotword_weight * len / len(hw)`` if it
begins hotword ``hw`` (the shortest such), ``unk_score_offset`` (times ``len / 6`` past 6
characters) if it begins no lexicon word, else 0. At the end the last word is completed
and, with ``lm_score_boundary``, ``alpha ln p(</s> | h)`` added; hypotheses with the same
words are merged (their probabilities summed). This is pyctcdecode's scoring; the
differences are listed in :func:`build_ctcdecoder`.

Importing this module imports neither torch nor kenlm.
"""

from __future__ import annotations

import math
import re
import threading
import uuid
import weakref

import numpy as np

from . import _decode
from ._core.lm_beam import lm_beam_search, lm_beam_start, log_softmax_rows, table_insert
from ._lm import SPECIAL_WORDS, load_language_model
from ._lm_scores import ScoreCache, empty_table
from ._words import host_array
from .errors import CTCInputError

__all__ = ["build_ctcdecoder", "CTCDecoder", "WORD_START"]

WORD_START = "\u2581"
"""``▁``: a word piece that begins with it starts a new word."""
_SPECIAL_LABEL = re.compile(r"^[<\[].+[>\]]$")
_BLANK_LABEL = re.compile(r"^[<\[]pad[>\]]$", re.IGNORECASE)
_MAX_MISSES = 4096
SEARCH_CELLS = 1 << 21
"""A search returns to Python after about this many (beam, class) cells of frames (beam 64
over 28 classes: every 1,170 frames, about 0.1 s), so that Ctrl-C is answered."""
_LIVE = weakref.WeakValueDictionary()  # this process's decoders by key, which forked pool workers inherit


def _trie(words, codes: dict):
    """A character trie of ``words`` as an open-addressing table ``node * K + code -> child``;
    returns ``(keys, children, word_of_node, shortest)``: the index of the word ending at a
    node (-1 for none), and the length of the shortest word through it."""
    edges, word_of, shortest = {}, [-1], [math.inf]
    K = max(len(codes), 1)
    for index, word in enumerate(words):
        node = 0
        for char in word:
            key = node * K + codes[char]
            if key not in edges:
                edges[key] = len(word_of)
                word_of.append(-1)
                shortest.append(math.inf)
            node = edges[key]
            shortest[node] = min(shortest[node], len(word))
        word_of[node] = index
    size = 1 << max(4, (2 * len(edges)).bit_length())
    keys, children = empty_table(size), np.zeros(size, dtype=np.int64)
    table_insert(keys, children, np.fromiter(edges.keys(), np.int64, len(edges)), np.fromiter(edges.values(), np.int64, len(edges)))
    return keys, children, np.array(word_of, dtype=np.int64), np.array(shortest, dtype=np.float64)


def _interrupted(error: BaseException) -> bool:
    """Whether ``error`` was caused by a ``KeyboardInterrupt`` (Numba reports one raised in
    its own Python code while it hands a result back as a chain of ``SystemError``)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def _strings(value, name: str, protocol: str) -> tuple:
    """``value`` (a collection with ``protocol``, not one str) as a tuple of str."""
    if isinstance(value, (str, bytes)) or not hasattr(value, protocol):
        raise TypeError(f"{name} must be a list of str, got {type(value).__name__}")
    value = tuple(value)
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise TypeError(f"{name}[{i}] must be a str, got {type(item).__name__}")
    return value


def _alphabet(labels):
    """``(texts, kinds, blank, is_pieces)`` of pyctcdecode-style labels: the blank ``""`` (or
    ``<pad>``/``[pad]``), a separator ``" "`` (or ``"|"``) between words of characters, or
    word pieces where ``▁`` (or the absence of ``##``) starts a word."""
    labels = list(_strings(labels, "labels", "__len__"))
    labels = ["" if _BLANK_LABEL.match(s) else s for s in labels]
    if len(set(labels)) != len(labels):
        raise CTCInputError("labels must not repeat an entry (after <pad> -> '')")
    if labels.count("") != 1:
        raise CTCInputError("labels must hold the blank, '' (or '<pad>'), exactly once")
    is_pieces = any(s.startswith((WORD_START, "##")) for s in labels)
    if is_pieces and any(s.startswith("##") for s in labels):
        labels = [s[2:] if s.startswith("##") else s if s == "" or _SPECIAL_LABEL.match(s) else WORD_START + s for s in labels]
    if not is_pieces and "|" in labels and " " not in labels:
        labels[labels.index("|")] = " "
    if is_pieces and " " in labels:
        raise CTCInputError("labels: word pieces (with '▁') must not also hold a space label ' '")
    kinds = [2 if is_pieces and s.startswith(WORD_START) else 1 if not is_pieces and s == " " else 0 for s in labels]
    texts = [s[1:] if kind == 2 else "" if kind == 1 else s for s, kind in zip(labels, kinds)]
    return texts, np.array(kinds, dtype=np.int64), labels.index(""), is_pieces


_DECODE_PRUNES = True
"""``decode`` prunes history, as pyctcdecode's does (its docstring: only the top beam is used)."""


class CTCDecoder:
    """A beam-search decoder with an optional word language model: see :func:`build_ctcdecoder`.

    It keeps the language-model scores it has computed, ``(state, word) -> score``, across
    calls (at most :data:`ctckit._lm_scores.MAX_CACHED_SCORES`, then it starts again), so a decoder that is
    reused gets faster. One search runs at a time per decoder (a lock); threads that
    decode at once should each have their own, processes get a copy (fork or pickle)."""

    def __init__(self, labels, language_model=None, unigrams=None, alpha=0.5, beta=1.5, unk_score_offset=-10.0,
                 lm_score_boundary=True):
        self.labels = list(labels)
        self._texts, self._kinds, self.blank, self.is_pieces = _alphabet(labels)
        self._spelled = [" " + text if kind else text for text, kind in zip(self._texts, self._kinds.tolist())]
        self.alpha = _decode._real(alpha, "alpha")
        self.beta = _decode._real(beta, "beta")
        self.unk_score_offset = _decode._real(unk_score_offset, "unk_score_offset")
        for name, value in (("alpha", self.alpha), ("beta", self.beta), ("unk_score_offset", self.unk_score_offset)):
            if not math.isfinite(value):
                raise CTCInputError(f"{name} must be finite, got {value}")
        self.lm_score_boundary = _flag(lm_score_boundary, "lm_score_boundary")
        self.language_model = language_model
        chars = sorted({c for text in self._texts for c in text})
        self._codes = {c: i for i, c in enumerate(chars)}
        offsets = np.zeros(len(self._texts) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(t) for t in self._texts])
        self._chars = (offsets, np.array([self._codes[c] for t in self._texts for c in t], dtype=np.int64))
        if unigrams is None and language_model is not None:
            unigrams = language_model.vocabulary()
        if unigrams is not None:
            if isinstance(unigrams, (str, bytes)):
                raise TypeError("unigrams must be a collection of words (str), not one str")
            words = sorted({w for w in unigrams if isinstance(w, str) and w and w not in SPECIAL_WORDS
                            and (language_model is None or w in language_model) and all(c in self._codes for c in w)})
        else:
            words = []
        self.words = words
        self._lexicon = _trie(words, self._codes)[:3]
        self._key = uuid.uuid4().hex
        self._fixed = self._blank_work = self._checked_options = None
        self._lock = threading.Lock()
        self._new_scores()
        _LIVE[self._key] = self

    @property
    def _use_lm(self) -> bool:
        return self.language_model is not None

    def _new_scores(self) -> None:
        """An empty cache of language-model scores (:mod:`ctckit._lm_scores`)."""
        self._scores = ScoreCache(self.language_model, self.words, self.alpha, self.beta, self.unk_score_offset,
                                  self.lm_score_boundary)

    def __getstate__(self):
        state = self.__dict__.copy()
        for name in ("_scores", "_fixed", "_blank_work", "_lock", "_checked_options"):
            del state[name]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._fixed = self._blank_work = self._checked_options = None
        self._lock = threading.Lock()
        self._new_scores()
        _LIVE.setdefault(self._key, self)

    def _tables(self, hotwords, hotword_weight, prune_history):
        """The kernel's tables (:mod:`ctckit._core.lm_beam`); the last options' are kept."""
        key = (hotwords, hotword_weight, prune_history)
        if self._fixed is None or self._fixed[0] != key:
            codes = self._codes
            words = sorted({w for phrase in hotwords for w in phrase.split() if all(c in codes for c in w)})
            h_keys, h_child, h_word, h_short = _trie(words, codes) if words else (
                empty_table(0), np.zeros(0, np.int64), np.full(1, -1, np.int64), np.ones(1))
            sizes = np.array([max(len(codes), 1), len(self.words), int(self._use_lm), int(self.lm_score_boundary),
                              int(prune_history), self._scores.host_address()], np.int64)
            self._fixed = (key, (self._kinds, *self._chars, *self._lexicon, h_keys, h_child, h_short, (h_word >= 0).astype(np.int64)),
                           (sizes, np.array([self.unk_score_offset, hotword_weight])))
        return (*self._fixed[1], *self._scores.table, *self._fixed[2])

    def _search(self, log_probs, beam_width, beam_prune_logp, token_min_logp, hotwords, hotword_weight, prune_history):
        """The final beams' label sequences, best first: ``[(labels, acoustic, extra)]``.
        When a frame needs language-model scores the cache lacks, the search calls
        :meth:`.ScoreCache.on_misses` for them and goes on with that frame."""
        frames = log_probs.shape[0]
        scores = self._scores
        misses = scores.misses = np.empty(_MAX_MISSES, dtype=np.int64)
        labels = np.empty((beam_width, frames), dtype=np.int64)
        lengths, acoustic, extra = np.zeros(beam_width, np.int64), np.zeros(beam_width), np.zeros(beam_width)
        if self._blank_work is None:
            self._blank_work = lm_beam_start(1, 0)
        work, t, fresh = self._blank_work, 0, True
        chunk = max(16, SEARCH_CELLS // (beam_width * log_probs.shape[1]))
        while True:
            try:
                t, found, missed, work = lm_beam_search(log_probs, t, min(frames, t + chunk), self.blank, beam_width,
                                                        token_min_logp, beam_prune_logp,
                                                        self._tables(hotwords, hotword_weight, prune_history), misses, work,
                                                        fresh, labels, lengths, acoustic, extra)
            except SystemError as error:  # Ctrl-C while Numba boxed the search's state: say what it was
                if _interrupted(error):
                    raise KeyboardInterrupt from None
                raise
            fresh = False
            if scores.error is not None:  # raised while scoring: Ctrl-C, or the model failed
                error, scores.error = scores.error, None
                raise error
            if scores.restart:  # the cache was emptied: its state ids changed
                t, fresh, scores.restart = 0, True, False
            elif work is None:
                rows = labels[:found].tolist()
                return list(zip([row[:n] for row, n in zip(rows, lengths[:found].tolist())], acoustic[:found].tolist(),
                                extra[:found].tolist()))
            # else a pause between chunks of frames (Python answers Ctrl-C here), or new tables

    def _text(self, labels) -> str:
        """The words of a label sequence, one space between them."""
        return " ".join("".join(map(self._spelled.__getitem__, labels)).split())

    def _word_frames(self, log_probs, labels) -> list:
        """``[(word, (start, end))]`` from the most probable path (Viterbi) of ``labels``."""
        if not labels:
            return []
        try:
            path, scores = _decode.forced_align(log_probs, np.array([labels]), [log_probs.shape[0]], [len(labels)], self.blank)
        except CTCInputError:  # a hypothesis of probability zero
            return []
        spans = _decode.merge_tokens(path, scores, self.blank)
        words, text, start, end = [], "", -1, -1
        for label, span in zip(labels, spans):
            if self._kinds[label] != 0 and text:
                words.append((text, (start, end)))
                text = ""
            if self._texts[label]:
                start = span.start if not text else start
                text, end = text + self._texts[label], span.end
        if text:
            words.append((text, (start, end)))
        return words

    def _log_probs(self, logits) -> np.ndarray:
        """``logits`` (T, C) as float64 log-probabilities (a log-softmax over C)."""
        logits = host_array(logits)  # a torch tensor, without importing torch
        try:
            array = np.asarray(logits)
        except (ValueError, TypeError) as error:
            raise CTCInputError(f"logits must be a (T, C) array, got {type(logits).__name__}: {error}") from None
        if array.dtype.kind not in "fiu" or array.dtype == np.bool_:
            raise TypeError(f"logits must hold real numbers, got dtype {array.dtype}")
        if array.ndim != 2 or array.shape[1] != len(self.labels) or array.shape[0] == 0:
            raise CTCInputError(f"logits must have shape (T, C) = (T >= 1, {len(self.labels)}) (one column per label), "
                                f"got {array.shape}")
        out, t, c = log_softmax_rows(np.ascontiguousarray(array, dtype=np.float64))
        if t >= 0:
            if c < 0:
                raise CTCInputError(f"logits[{t}] is -inf for every label")
            raise CTCInputError(f"logits[{t}, {c}] = {array[t, c]}: logits must be finite or -inf")
        return out

    def _options(self, beam_width, beam_prune_logp, token_min_logp, hotwords, hotword_weight):
        key = (beam_width, beam_prune_logp, token_min_logp, hotword_weight)
        key = (key, tuple(map(type, key)))
        last = self._checked_options  # (key, checked): one attribute, so that threads read a consistent pair
        if hotwords is None and last is not None and last[0] == key:
            return last[1]  # the options of the last call, again: a decoder is mostly called with the same ones
        checked = self._check_options(beam_width, beam_prune_logp, token_min_logp, hotwords, hotword_weight)
        if hotwords is None:
            self._checked_options = (key, checked)
        return checked

    def _check_options(self, beam_width, beam_prune_logp, token_min_logp, hotwords, hotword_weight):
        beam_width = _decode._positive_int(beam_width, "beam_width")
        beam_prune_logp = _decode._real(beam_prune_logp, "beam_prune_logp", high=0.0, meaning=" (a margin below the best beam)")
        token_min_logp = _decode._real(token_min_logp, "token_min_logp")
        hotword_weight = _decode._real(hotword_weight, "hotword_weight")
        if not math.isfinite(hotword_weight):
            raise CTCInputError(f"hotword_weight must be finite, got {hotword_weight}")
        hotwords = () if hotwords is None else _strings(hotwords, "hotwords", "__iter__")
        return beam_width, beam_prune_logp, token_min_logp, hotwords, hotword_weight

    def decode_beams(self, logits, beam_width=100, beam_prune_logp=-10.0, token_min_logp=-5.0, prune_history=False,
                     hotwords=None, hotword_weight=10.0, *, _frames=True):
        """The final beams, best first: ``(text, lm_state, word_frames, logit_score,
        combined_score)``, ``word_frames`` a list of ``(word, (start, end))`` (frames,
        ``end`` exclusive) along the hypothesis's most probable path, ``logit_score``
        ``log(p_b + p_nb)`` summed over the merged label sequences of the text,
        ``combined_score`` that plus the word scores (module docstring); ``lm_state`` the
        model's state after the text's words (``None`` without a model).

        ``logits`` (T, C), a NumPy array or a torch tensor: log-probabilities or
        unnormalised logits (a log-softmax over C is taken: it leaves log-probabilities as
        they are). ``beam_width`` beams are kept after each frame, those more than
        ``-beam_prune_logp`` below the best dropped; at a frame only labels with a
        log-prob of at least ``token_min_logp`` (or the most probable label) extend a beam.
        ``prune_history``: after each frame, drop a beam when a better one has the same
        language-model state, last label and unfinished word (as pyctcdecode, which
        compares the last ``order - 1`` words instead of the state): faster, fewer distinct
        hypotheses among the beams; only with a language model.
        """
        prune_history = _flag(prune_history, "prune_history")
        log_probs = self._log_probs(logits)
        beam_width, beam_prune_logp, token_min_logp, hotwords, hotword_weight = self._options(
            beam_width, beam_prune_logp, token_min_logp, hotwords, hotword_weight)
        _decode._check_work(1, log_probs.shape[0], log_probs.shape[1], beam_width, beam_width, False)
        with self._lock:  # the score cache is shared: one search at a time per decoder
            found = self._search(log_probs, beam_width, beam_prune_logp, token_min_logp, hotwords, hotword_weight,
                                 prune_history)
        merged, order = {}, []
        for labels, acoustic, extra in found:
            text = self._text(labels)
            if text in merged:
                merged[text][1] = _decode._lae(merged[text][1], acoustic)
            else:
                merged[text] = [labels, acoustic, extra]
                order.append(text)
        ranked = sorted(order, key=lambda text: -(merged[text][1] + merged[text][2]))
        best = merged[ranked[0]][1] + merged[ranked[0]][2]
        beams = []
        for text in ranked[:beam_width]:
            labels, acoustic, extra = merged[text]
            if acoustic + extra < best + beam_prune_logp:
                break
            frames = self._word_frames(log_probs, labels) if _frames else []
            beams.append((text, self._final_state(text) if _frames else None, frames, acoustic, acoustic + extra))
        return beams

    def _final_state(self, text):
        """The model's state after the words of ``text`` (``None`` without a model)."""
        if not self._use_lm:
            return None
        model = self.language_model
        state = model.begin_state() if self.lm_score_boundary else model.null_state()
        for word in text.split():
            state = model.score(state, word)[1]
        return state

    def decode(self, logits, beam_width=100, beam_prune_logp=-10.0, token_min_logp=-5.0, hotwords=None, hotword_weight=10.0):
        """The best hypothesis's text: see :meth:`decode_beams` (with ``prune_history``, as
        pyctcdecode's ``decode``: only the best beam is returned)."""
        return self.decode_beams(logits, beam_width, beam_prune_logp, token_min_logp, _DECODE_PRUNES, hotwords, hotword_weight,
                                 _frames=False)[0][0]

    def decode_batch(self, pool, logits_list, beam_width=100, beam_prune_logp=-10.0, token_min_logp=-5.0, hotwords=None,
                     hotword_weight=10.0):
        """:meth:`decode` of each item of ``logits_list``, in the processes of ``pool`` (a
        ``multiprocessing`` pool, or ``None`` for this process). Workers forked after the
        decoder was built use the decoder they inherited; others receive a pickled copy."""
        return self._map(pool, "decode", logits_list, (beam_width, beam_prune_logp, token_min_logp, hotwords, hotword_weight))

    def decode_beams_batch(self, pool, logits_list, beam_width=100, beam_prune_logp=-10.0, token_min_logp=-5.0,
                           prune_history=False, hotwords=None, hotword_weight=10.0):
        """:meth:`decode_beams` of each item, as :meth:`decode_batch` runs them, without the
        model states: ``(text, word_frames, logit_score, combined_score)``, as pyctcdecode's."""
        options = (beam_width, beam_prune_logp, token_min_logp, prune_history, hotwords, hotword_weight)
        return self._map(pool, "_portable_beams", logits_list, options)

    def _portable_beams(self, logits, *options):
        return [(text, frames, logit, combined) for text, _, frames, logit, combined in self.decode_beams(logits, *options)]

    def _map(self, pool, method, logits_list, options):
        self._options(*options[:3], *options[-2:])
        if len(options) == 6:
            _flag(options[3], "prune_history")
        if pool is None:
            return [getattr(self, method)(logits, *options) for logits in logits_list]
        logits_list = list(logits_list)
        results = pool.starmap(_run, [(self._key, None, method, logits, options) for logits in logits_list])
        missing = [i for i, result in enumerate(results) if result is _run]
        again = pool.starmap(_run, [(self._key, self, method, logits_list[i], options) for i in missing]) if missing else []
        for i, result in zip(missing, again):
            results[i] = result
        return results


def _flag(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def _run(key, decoder, method, logits, options):
    """``decoder.method(logits, *options)`` in a pool worker; ``decoder`` ``None``: the one this
    process inherited, if any (else returns ``_run`` itself, a marker that pickles by name)."""
    decoder = decoder if decoder is not None else _LIVE.get(key)
    return _run if decoder is None else getattr(decoder, method)(logits, *options)


def build_ctcdecoder(labels, kenlm_model_path=None, unigrams=None, alpha=0.5, beta=1.5, unk_score_offset=-10.0,
                     lm_score_boundary=True, *, lm_backend="auto") -> CTCDecoder:
    """A :class:`CTCDecoder` for ``labels``, with the n-gram model at ``kenlm_model_path``.

    Args:
        labels: one str per class: the blank ``""`` (or ``<pad>``) exactly once; either
            characters with ``" "`` (or ``"|"``) between words, or word pieces where a
            piece beginning with ``▁`` starts a word (``##`` pieces are converted).
        kenlm_model_path: an ARPA file (``.arpa``, ``.arpa.gz``) or, with KenLM installed,
            a binary KenLM model; ``None``: no language model (only hotwords).
        unigrams: the lexicon (words the partial-word score accepts); by default the
            model's unigrams (required for a binary model). Words not in the model, or with
            characters no label holds, are left out.
        alpha, beta, unk_score_offset, lm_score_boundary: see the module docstring.
        lm_backend: ``"auto"`` (KenLM if installed, else the built-in ARPA reader),
            ``"kenlm"`` or ``"builtin"``.

    Differences from pyctcdecode 0.5: hypotheses are label prefixes with blank- and
    label-ending paths summed (pyctcdecode keeps them apart), merged by text only at the
    end; the blank and the repeat of the last label always extend a beam (pyctcdecode
    only when they pass ``token_min_logp``); logits are not clipped at ``log(1e-15)`` and
    probabilities are not detected (pass logs); a trailing separator is not scored as an
    unknown word; ``prune_history`` compares beams by their language-model state (the
    words the model can still see) instead of the last ``order - 1`` words, and does
    nothing without a model; word frames come from the Viterbi path.
    """
    model = None if kenlm_model_path is None else load_language_model(kenlm_model_path, lm_backend)
    if model is None and unigrams is not None:
        unigrams = None  # as pyctcdecode: a lexicon needs a model
    return CTCDecoder(labels, model, unigrams, alpha, beta, unk_score_offset, lm_score_boundary)
