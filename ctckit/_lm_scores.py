r"""The word decoder's cache of language-model scores, and the search's call back for them.

The search (:mod:`ctckit._core.lm_beam`) reads completed-word scores from an
open-addressing table ``state * W + word -> (score, next state)``, ``W`` the lexicon size
plus 2 (word ``W - 2``: any word outside the lexicon; ``W - 1``: the end of sentence).
States are small integers, given to the model's states (KenLM's, or the built-in reader's
tuples) in the order they are first met. A pair the table lacks is scored by
:meth:`ScoreCache.on_misses`, which the search calls in the middle of a frame through a C
function pointer (:meth:`ScoreCache.host_address`): the search does not return to Python
for it, and every score it uses is exact.

A score is pyctcdecode's: ``alpha * ln(10) * log10 p(word | state) + beta`` for a word
(``unk_score_offset`` more in log10 for a word outside the lexicon), ``alpha * ln(10) *
log10 p(</s> | state)`` for the end.
"""

from __future__ import annotations

import ctypes
import math

import numpy as np

from ._core.beam import _EMPTY
from ._core.lm_beam import cache_insert

MAX_CACHED_SCORES = 1 << 21
"""The cache is emptied when it would hold more pairs than this."""
FIRST_SLOTS = 1024
"""The table's first size; it doubles when half full."""
_LN10 = math.log(10.0)
_HOST_FUNCTION = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64)


def empty_table(size: int) -> np.ndarray:
    """The keys of an open-addressing table with ``size`` empty slots."""
    return np.full(size, _EMPTY, dtype=np.int64)


class _CacheFull(Exception):
    """The score cache would pass :data:`MAX_CACHED_SCORES`."""


class ScoreCache:
    """Scores of ``(state, word)`` pairs for one decoder (its ``words``, model and weights).

    Attributes the search and the decoder share: ``table`` (keys, scores, next states),
    ``misses`` (the search's buffer of missing keys), ``error`` (what :meth:`on_misses`
    raised, for the decoder to raise once the search returns: a C callback cannot) and
    ``restart`` (the cache was emptied: the state ids changed, the search starts again).
    """

    def __init__(self, model, words, alpha: float, beta: float, unk_score_offset: float, lm_score_boundary: bool):
        self.model, self.words = model, words
        self.scale, self.beta, self.unk_score_offset = alpha * _LN10, beta, unk_score_offset
        self.boundary = lm_score_boundary
        self.misses = self.error = self._host = None
        self.restart = False
        self.reset()

    def reset(self) -> None:
        """Empty the cache; state 0 is the start of a sentence (or the null context)."""
        self.table = (empty_table(FIRST_SLOTS), np.zeros(FIRST_SLOTS), np.zeros(FIRST_SLOTS, dtype=np.int64))
        self.cached = 0
        self._states, self._state_ids, self._ended = [], {}, set()
        if self.model is not None:
            self._state_id(self.model.begin_state() if self.boundary else self.model.null_state())

    def _state_id(self, state) -> int:
        index = self._state_ids.get(state)
        if index is None:
            index = self._state_ids[state] = len(self._states)
            self._states.append(state)
        return index

    def score_pairs(self, keys: np.ndarray) -> bool:
        """Score the missing ``state * W + word`` pairs with the model and cache them, with
        ``</s>`` after each new state (the end of a line needs it). Returns whether the
        table's arrays were replaced by larger ones."""
        W, model, scale, beta = len(self.words) + 2, self.model, self.scale, self.beta
        states, ended = self._states, self._ended
        entries = []  # (key, score, next state)
        for key in dict.fromkeys(keys.tolist()):  # each once, in the search's order
            state_id, word = divmod(key, W)
            if word == W - 1:  # </s>
                entries.append((key, scale * model.score(states[state_id], "</s>")[0], state_id))
                ended.add(state_id)
                continue
            log10, following = model.score(states[state_id], self.words[word] if word < W - 2 else "<unk>")
            if word == W - 2:
                log10 += self.unk_score_offset
            following = self._state_id(following)
            entries.append((key, scale * log10 + beta, following))
            if self.boundary and following not in ended:
                ended.add(following)
                entries.append((following * W + W - 1, scale * model.score(states[following], "</s>")[0], following))
        if self.cached + len(entries) > MAX_CACHED_SCORES:
            raise _CacheFull
        keys, scores, nexts = zip(*entries)
        keys, scores, nexts = np.array(keys, dtype=np.int64), np.array(scores), np.array(nexts, dtype=np.int64)
        table, grown = self.table, False
        if 2 * (self.cached + keys.size) > table[0].size:
            size = table[0].size
            while 2 * (self.cached + keys.size) > size:
                size *= 2
            larger = (empty_table(size), np.zeros(size), np.zeros(size, dtype=np.int64))
            used = table[0] != _EMPTY
            cache_insert(*larger, table[0][used], table[1][used], table[2][used])
            self.table, table, grown = larger, larger, True
        cache_insert(*table, keys, scores, nexts)
        self.cached += keys.size
        return grown

    def host_address(self) -> int:
        """The address of :meth:`on_misses` as a C function ``int64 host(int64 count)``."""
        if self._host is None:
            self._host = _HOST_FUNCTION(self.on_misses)
        return ctypes.cast(self._host, ctypes.c_void_p).value

    def on_misses(self, count: int) -> int:
        """Called by the search (in C, holding the GIL): score the first ``count`` keys of
        ``misses`` into the table. Returns 0 when they were added in place, 1 when the table
        had to grow or be emptied, or when an error (kept in ``error``) stopped it."""
        try:
            return int(self.score_pairs(self.misses[:count]))
        except _CacheFull:
            self.reset()
            self.restart = True
        except BaseException as error:  # noqa: B036 -- Ctrl-C included: raised again once the search returns
            self.error = error
        return 1
