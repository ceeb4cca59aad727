r"""CTC prefix beam search with a word language model, hotwords and a lexicon (one item).

The search of :mod:`ctckit._core.beam`, the same candidates in the same order and the
same pruning, with prefixes ranked by their acoustic log-probability plus an extra score
that is a function of the prefix alone (so ``p_b`` and ``p_nb`` stay acoustic and merge
exactly):

.. math::
    \mathrm{rank}(l) = \log(p_b(l) + p_{nb}(l)) + \sum_{w \in \mathrm{words}(l)} s(w)
                       + \mathrm{partial}(l)

where a completed word costs ``s(w) = alpha * ln p_LM(w | history) + beta`` (plus
``alpha * ln(10) * unk_score_offset`` for a word outside the lexicon, plus
``hotword_weight`` for a hotword), and the unfinished last word scores ``partial``:
``hotword_weight * len / len(shortest hotword it begins)`` if it begins a hotword, else
``unk_score_offset`` (times ``len / 6`` past 6 characters) if it begins no lexicon word,
else 0. A word completes at a word-separator label (``kind == 1``) or at a label that
starts a word (``kind == 2``, a ``▁`` piece).

Words are tracked through two tries of characters (the lexicon's and the hotwords'), each
an open-addressing table ``node * K + char -> child``. Language-model scores come from a
cache table ``state * W + word -> (score, next state)`` (``W`` = lexicon size + 2: word
``W - 2`` is any word outside the lexicon, ``W - 1`` the end of sentence) that the host
fills: at a frame whose candidates need pairs the cache lacks, the search writes them to
``misses`` and calls the host (a C function at the address ``tables[13][5]``, ``int64
host(count)``: a ctypes callback into Python, without returning there), which adds the
scores of the first ``count`` pairs of ``misses`` to the table in place and returns 0; the
frame then starts again. A host that had to replace the tables (a larger cache, or an
emptied one) returns 1, and the search returns to be called again with them. Every score
the search uses is exact.

Per frame the cost is that of :mod:`ctckit._core.beam` plus, per candidate, two trie
steps (and a cache probe where a word ends); a language model usually leaves few beams
within ``beam_prune_log_prob`` of the best, so the search is faster with one than without.

References: A. Graves, "Supervised sequence labelling with recurrent neural networks",
2012, ch. 7; A. Hannun et al., "First-pass large vocabulary continuous speech recognition
using bi-directional recurrent DNNs", arXiv:1408.2151, 2014 (the word-level prefix search).
"""

import numpy as np

from .beam import _EMPTY, _compact, _grown, _candidate_labels, _probe, _ranked, _rehashed
from .config import HOT, INLINE, NJIT
from .disk_cache import njit
from .intrinsics import call_host, keep_alive, unmanaged
from .vexp import vexp_shifted
from .loss.trellis import _logaddexp as _lae

_NEG_INF = -np.inf
AVG_WORD_CHARS = 6
"""Past this many characters an unknown partial word's penalty grows with its length."""


@njit(**INLINE)
def _unmanaged_tables(tables):
    """:func:`.unmanaged` views of the 15 tables (the caller keeps ``tables`` alive): every
    array an inlined helper takes from the tuple would otherwise be a new reference, two
    atomic operations each (80% of a 100-beam search's time went to them)."""
    return (unmanaged(tables[0]), unmanaged(tables[1]), unmanaged(tables[2]), unmanaged(tables[3]), unmanaged(tables[4]),
            unmanaged(tables[5]), unmanaged(tables[6]), unmanaged(tables[7]), unmanaged(tables[8]), unmanaged(tables[9]),
            unmanaged(tables[10]), unmanaged(tables[11]), unmanaged(tables[12]), unmanaged(tables[13]),
            unmanaged(tables[14]))


@njit(**INLINE)
def _step(keys, children, node, code, chars):
    """The child of trie node ``node`` by character ``code``, or -1."""
    if node < 0 or code < 0 or keys.shape[0] == 0:
        return -1
    key = node * chars + code
    slot = _probe(keys, key)
    return children[slot] if keys[slot] == key else -1


@njit(**INLINE)
def _finish_word(state, score, vnode, hnode, length, tables, misses, miss_count):
    """Complete the unfinished word of a prefix: ``(state, score, miss_count)``."""
    n_words, use_lm = tables[13][1], tables[13][2]
    if length == 0:
        return state, score, miss_count
    word = tables[5][vnode] if vnode >= 0 else -1
    if word < 0:
        word = n_words  # outside the lexicon
    if hnode >= 0 and tables[9][hnode]:
        score += tables[14][1]
    if use_lm:
        c_keys = tables[10]
        key = state * (n_words + 2) + word
        slot = _probe(c_keys, key)
        if c_keys[slot] == key:
            return tables[12][slot], score + tables[11][slot], miss_count
        if miss_count < misses.shape[0]:
            misses[miss_count] = key
        miss_count += 1
    return state, score, miss_count


@njit(**INLINE)
def _extend(state, score, vnode, hnode, length, label, tables, misses, miss_count):
    """The word state of a prefix extended by ``label``: ``(state, score, vnode, hnode,
    length, extra, miss_count)``, ``extra`` the ranking bonus (score plus partial)."""
    kind, chars_off, chars, v_keys, v_child, h_keys, h_child, h_short = (
        tables[0], tables[1], tables[2], tables[3], tables[4], tables[6], tables[7], tables[8])
    n_chars, use_lm = tables[13][0], tables[13][2]
    unk_offset, hot_weight = tables[14][0], tables[14][1]
    if kind[label] != 0:
        state, score, miss_count = _finish_word(state, score, vnode, hnode, length, tables, misses, miss_count)
        vnode, hnode, length = 0, 0, 0
    for i in range(chars_off[label], chars_off[label + 1]):
        vnode = _step(v_keys, v_child, vnode, chars[i], n_chars)
        hnode = _step(h_keys, h_child, hnode, chars[i], n_chars)
        length += 1
    extra = score
    if length > 0:
        if hnode >= 0:
            extra += hot_weight * length / h_short[hnode]
        elif use_lm and vnode < 0:
            extra += unk_offset * (length / AVG_WORD_CHARS if length > AVG_WORD_CHARS else 1.0)
    return state, score, vnode, hnode, length, extra, miss_count


@njit(**INLINE)
def _same_partial_word(a, b, n_length, last, parent, kind):
    """Whether prefix-trie nodes ``a`` and ``b`` end in the same unfinished word: the same
    labels since the word began (stricter than the same text)."""
    while a != b:
        if n_length[a] != n_length[b] or last[a] != last[b]:
            return False
        if n_length[a] == 0 or kind[last[a]] != 0:  # both words begin (or end) here
            return True
        a, b = parent[a], parent[b]
    return True


@njit(**INLINE)
def _prune_history(stamp, kept, new_node, cand_from, cand_label, n_state, last, n_length, n_vnode, parent, kind, seen_slot,
                   seen_hash, seen_frame):
    """pyctcdecode's ``prune_history`` on the ranked new beams ``0 .. kept - 1``: keep a beam
    only if no better one has the same language-model state, last label and unfinished
    word (the language model and the lexicon then score both the same from here on).
    Returns the number kept, compacted in order; ``seen_*`` is a table of
    ``seen_slot.shape[0]`` (a power of two, at least ``2 * kept``) slots, those whose
    ``seen_frame`` is not ``stamp`` empty. Beams with different hashes of the state, the
    last label, the word's length and its lexicon node differ; others are compared."""
    start = n_state[0]  # the empty prefix's: beams still in their first word cannot share a history
    later = 0
    for r in range(kept):
        later += n_state[new_node[r]] != start
    if later < 2:
        return kept
    mask = np.uint64(seen_slot.shape[0] - 1)
    out = 0
    for r in range(kept):
        node = new_node[r]
        h = (np.uint64(n_state[node]) * np.uint64(0x9E3779B97F4A7C15)
             + np.uint64(last[node] + 1) * np.uint64(0xC2B2AE3D27D4EB4F)
             + np.uint64(n_vnode[node] + 1) * np.uint64(0x165667B19E3779F9) + np.uint64(n_length[node]))
        h ^= h >> np.uint64(29)
        slot = h & mask
        duplicate = False
        while seen_frame[slot] == stamp:
            other = new_node[seen_slot[slot]]
            if seen_hash[slot] == h and n_state[other] == n_state[node] and \
                    _same_partial_word(other, node, n_length, last, parent, kind):
                duplicate = True
                break
            slot = (slot + np.uint64(1)) & mask
        if duplicate:
            continue
        new_node[out], cand_from[out], cand_label[out] = node, cand_from[r], cand_label[r]
        seen_frame[slot], seen_slot[slot], seen_hash[slot] = stamp, out, h
        out += 1
    return out


@njit(**NJIT)
def lm_beam_start(beam_width, start_state):
    """The search's state before the first frame: the trie of prefixes (node 0 the empty
    one), each node's word state, the beams, and ``counts`` = (nodes, beams)."""
    parent = np.full(64, -1, dtype=np.int64)
    last = np.full(64, -1, dtype=np.int64)
    beam_of = np.full(64, -1, dtype=np.int64)
    n_state = np.full(64, start_state, dtype=np.int64)
    n_score = np.zeros(64)
    n_vnode = np.zeros(64, dtype=np.int64)
    n_hnode = np.zeros(64, dtype=np.int64)
    n_length = np.zeros(64, dtype=np.int64)
    n_extra = np.zeros(64)
    child_key = np.full(128, _EMPTY, dtype=np.int64)  # node * C + label -> child node
    child_node = np.empty(128, dtype=np.int64)
    beam_node = np.zeros(beam_width, dtype=np.int64)
    beam_b = np.zeros(beam_width)
    beam_nb = np.full(beam_width, _NEG_INF)
    counts = np.array([1, 1], dtype=np.int64)
    return (parent, last, beam_of, n_state, n_score, n_vnode, n_hnode, n_length, n_extra, child_key, child_node, beam_node,
            beam_b, beam_nb, counts)


@njit(**NJIT)
def lm_beam_search(log_probs, start, stop, blank, beam_width, token_min_log_prob, beam_prune_log_prob, tables, misses, work,
                   fresh, out_labels, out_lengths, out_acoustic, out_extra):
    """:func:`lm_beam_run` over frames ``start`` to ``stop`` (from a new state if ``fresh``),
    then, at the last frame, :func:`lm_beam_finish`. Returns ``(t, beams, missed, work)``:
    ``missed = -1`` when the host replaced the tables (call again from frame ``t`` with
    ``work`` and the new tables); ``work`` ``None`` when the search is done (a tuple of arrays
    costs microseconds to hand back to Python), else the state to go on from ``t``."""
    if fresh:
        work = lm_beam_start(beam_width, 0)  # state 0: the start of a sentence
    t, missed, work = lm_beam_run(log_probs, start, stop, blank, beam_width, token_min_log_prob, beam_prune_log_prob,
                                  tables, misses, work)
    while missed:  # the host scores the pairs frame t needs, and the search goes on from t
        if call_host(tables[13][5], min(missed, misses.shape[0])) != 0:
            return t, 0, -1, work
        t, missed, work = lm_beam_run(log_probs, t, stop, blank, beam_width, token_min_log_prob, beam_prune_log_prob,
                                      tables, misses, work)
    if t < log_probs.shape[0]:
        return t, 0, 0, work
    found, missed = lm_beam_finish(tables, misses, work, out_labels, out_lengths, out_acoustic, out_extra)
    while missed:
        if call_host(tables[13][5], min(missed, misses.shape[0])) != 0:
            return t, found, -1, work
        found, missed = lm_beam_finish(tables, misses, work, out_labels, out_lengths, out_acoustic, out_extra)
    return t, found, 0, None


@njit(**HOT)
def log_softmax_rows(array):
    """``array`` (T, C) float64 minus each row's log-sum-exp, and the first ``(t, c)`` where
    it holds NaN or ``+inf`` (or a row of ``-inf`` only, ``c = -1``), else ``(-1, -1)``."""
    frames, classes = array.shape
    out = np.empty_like(array)
    exps = np.empty(classes)
    for t in range(frames):
        top = _NEG_INF
        for c in range(classes):
            v = array[t, c]
            if not v < np.inf:
                return out, t, c
            top = max(top, v)
        if top == _NEG_INF:
            return out, t, -1
        vexp_shifted(array[t], top, exps)
        total = 0.0
        for c in range(classes):
            total += exps[c]
        shift = top + np.log(total)
        for c in range(classes):
            out[t, c] = array[t, c] - shift
    return out, -1, -1


@njit(**NJIT)
def lm_beam_run(log_probs, start, stop, blank, beam_width, token_min_log_prob, beam_prune_log_prob, tables, misses, work):
    """Frames ``start`` to ``stop - 1`` of the search of one item, ``log_probs`` (T, C)
    float64, from the state ``work`` (:func:`lm_beam_start`). Returns ``(t, missed, work)``:
    at the first frame ``t`` whose candidates need language-model scores that the cache
    lacks, before changing anything, with the missing pairs in ``misses``; else ``(stop,
    0, work)``."""
    frames, classes = log_probs.shape
    parent, last, beam_of, n_state, n_score, n_vnode, n_hnode, n_length, n_extra, child_key, child_node, beam_node, \
        beam_b, beam_nb, counts = work
    nodes, beams = counts[0], counts[1]
    owned_tables, owned_misses = tables, misses
    tables, misses = _unmanaged_tables(tables), unmanaged(misses)  # no atomic reference counts in the frame loop
    next_b = np.empty(beam_width)
    next_nb = np.empty(beam_width)
    beam_total = np.empty(beam_width)
    first_child = np.empty(beam_width, dtype=np.int64)  # the beams whose parent is this beam, linked
    next_sibling = np.empty(beam_width, dtype=np.int64)
    labels = np.empty(classes, dtype=np.int64)
    is_label = np.zeros(classes, dtype=np.bool_)
    is_child = np.zeros(classes, dtype=np.bool_)
    room = 2 * beam_width + 16
    cand_total = np.empty(room)
    cand_from = np.empty(room, dtype=np.int64)
    cand_label = np.empty(room, dtype=np.int64)
    scratch = np.empty(room)
    new_node = np.empty(beam_width, dtype=np.int64)
    new_acoustic = np.empty(beam_width)
    miss_count = 0
    lp3 = log_probs.reshape(frames, 1, classes)
    kind = tables[0]
    prune = tables[13][2] != 0 and tables[13][4] != 0
    seen_size = 16
    while seen_size < 2 * beam_width:
        seen_size *= 2
    seen_slot = np.empty(seen_size, dtype=np.int64)
    seen_hash = np.empty(seen_size, dtype=np.uint64)
    seen_frame = np.zeros(seen_size, dtype=np.int64)
    # what a partial word can add to a prefix's completed-word score: the hotword bonus
    # (a trie with at least one edge), or a positive unk_score_offset (unbounded)
    headroom = max(0.0, tables[14][1]) if tables[6].shape[0] > 0 else 0.0
    if tables[14][0] > 0:
        headroom = np.inf
    for t in range(start, stop):
        count = _candidate_labels(lp3, t, 0, blank, token_min_log_prob, labels, is_label)
        log_blank = log_probs[t, blank]
        for i in range(beams):
            beam_of[beam_node[i]] = i
            first_child[i] = -1
            beam_total[i] = _lae(beam_b[i], beam_nb[i])  # log(p_b + p_nb), once per frame
        for j in range(beams):
            p = parent[beam_node[j]]
            if p >= 0 and beam_of[p] >= 0:
                i = beam_of[p]
                next_sibling[j] = first_child[i]
                first_child[i] = j
        best = _NEG_INF
        size = 0
        for j in range(beams):  # the current beams: blank, repeat, extension from their parent
            node, b, nb = beam_node[j], beam_b[j], beam_nb[j]
            previous = last[node]
            next_b[j] = beam_total[j] + log_blank
            next_nb[j] = _NEG_INF
            if previous >= 0:
                next_nb[j] = nb + log_probs[t, previous]
                p = parent[node]
                if is_label[previous] and beam_of[p] >= 0:
                    i = beam_of[p]
                    source = beam_b[i] if previous == last[p] else beam_total[i]
                    next_nb[j] = _lae(next_nb[j], source + log_probs[t, previous])
            acoustic = _lae(next_b[j], next_nb[j])
            if acoustic > _NEG_INF:
                total = acoustic + n_extra[node]
                best = max(best, total)
                cand_total[size], cand_from[size], cand_label[size] = total, j, -1
                size += 1
        threshold = _NEG_INF
        for i in range(beams):  # the new prefixes, in order of creation
            node, b, nb = beam_node[i], beam_b[i], beam_nb[i]
            total = beam_total[i]
            previous = last[node]
            at = first_child[i]
            while at >= 0:
                is_child[last[beam_node[at]]] = True
                at = next_sibling[at]
            for k in range(count):
                c = labels[k]
                if is_child[c]:
                    continue
                acoustic = (b if c == previous else total) + log_probs[t, c]
                if not acoustic > _NEG_INF:
                    continue
                if kind[c] == 0:  # no word ends: the extra score is at most the parent's plus ``headroom``
                    upper = acoustic + n_score[node] + headroom
                    if not upper > threshold or upper < best + beam_prune_log_prob:
                        continue
                _, _, _, _, _, extra, miss_count = _extend(n_state[node], n_score[node], n_vnode[node], n_hnode[node],
                                                           n_length[node], c, tables, misses, miss_count)
                score = acoustic + extra
                if score > threshold and not score < best + beam_prune_log_prob:
                    if size == room:
                        threshold = _compact(cand_total, cand_from, cand_label, size, beam_width, scratch)
                        size = beam_width
                        if not score > threshold:
                            continue
                    best = max(best, score)
                    cand_total[size], cand_from[size], cand_label[size] = score, i, c
                    size += 1
            at = first_child[i]
            while at >= 0:
                is_child[last[beam_node[at]]] = False
                at = next_sibling[at]
        if miss_count > 0:  # stop before this frame changes anything
            for i in range(beams):
                beam_of[beam_node[i]] = -1
            counts[0], counts[1] = nodes, beams
            keep_alive(owned_misses, *owned_tables)
            return t, miss_count, (parent, last, beam_of, n_state, n_score, n_vnode, n_hnode, n_length, n_extra, child_key,
                           child_node, beam_node, beam_b, beam_nb, counts)
        if size > beam_width:
            _compact(cand_total, cand_from, cand_label, size, beam_width, scratch)
            size = beam_width
        _ranked(cand_total, cand_from, cand_label, size)
        kept = 0
        while kept < size and not cand_total[kept] < best + beam_prune_log_prob:
            kept += 1
        if kept == 0:  # every candidate has probability zero: keep the best beam, as beam.py does
            cand_from[0], cand_label[0], kept = 0, -1, 1
            next_b[0], next_nb[0] = _NEG_INF, _NEG_INF
        for r in range(kept):  # kept new prefixes become trie nodes, with their word state
            if cand_label[r] < 0:
                new_node[r] = beam_node[cand_from[r]]
                continue
            origin, label = beam_node[cand_from[r]], cand_label[r]
            if 2 * nodes >= child_key.shape[0]:
                child_key, child_node = _rehashed(child_key, child_node)
            slot = _probe(child_key, origin * classes + label)
            if child_key[slot] != _EMPTY:
                new_node[r] = child_node[slot]
                continue
            if nodes == parent.shape[0]:
                parent, last, beam_of = _grown(parent, nodes + 1, -1), _grown(last, nodes + 1, -1), _grown(beam_of, nodes + 1, -1)
                n_state, n_score = _grown(n_state, nodes + 1, 0), _grown(n_score, nodes + 1, 0.0)
                n_vnode, n_hnode = _grown(n_vnode, nodes + 1, 0), _grown(n_hnode, nodes + 1, 0)
                n_length, n_extra = _grown(n_length, nodes + 1, 0), _grown(n_extra, nodes + 1, 0.0)
            child_key[slot], child_node[slot] = origin * classes + label, nodes
            parent[nodes], last[nodes] = origin, label
            n_state[nodes], n_score[nodes], n_vnode[nodes], n_hnode[nodes], n_length[nodes], n_extra[nodes], miss_count = \
                _extend(n_state[origin], n_score[origin], n_vnode[origin], n_hnode[origin], n_length[origin], label, tables,
                        misses, miss_count)
            new_node[r] = nodes
            nodes += 1
        if prune:
            kept = _prune_history(t + 1, kept, new_node, cand_from, cand_label, n_state, last, n_length, n_vnode, parent,
                                  kind, seen_slot, seen_hash, seen_frame)
        for r in range(kept):  # a new prefix's acoustic score, computed again exactly as when it was a candidate
            if cand_label[r] >= 0:
                i = cand_from[r]
                source = beam_b[i] if cand_label[r] == last[beam_node[i]] else beam_total[i]
                new_acoustic[r] = source + log_probs[t, cand_label[r]]
        for i in range(beams):
            beam_of[beam_node[i]] = -1
        for r in range(kept):
            beam_node[r] = new_node[r]
            if cand_label[r] < 0:
                beam_b[r], beam_nb[r] = next_b[cand_from[r]], next_nb[cand_from[r]]
            else:
                beam_b[r], beam_nb[r] = _NEG_INF, new_acoustic[r]
        beams = kept
    counts[0], counts[1] = nodes, beams
    keep_alive(owned_misses, *owned_tables)
    return stop, 0, (parent, last, beam_of, n_state, n_score, n_vnode, n_hnode, n_length, n_extra, child_key, child_node,
                       beam_node, beam_b, beam_nb, counts)


@njit(**NJIT)
def lm_beam_finish(tables, misses, work, out_labels, out_lengths, out_acoustic, out_extra):
    """The final beams of a search (:func:`lm_beam_run` done), best first, into ``out_labels``
    (beam_width, >= T), ``out_lengths``, ``out_acoustic`` (``log(p_b + p_nb)``) and
    ``out_extra`` (word scores with the last word completed and, if ``use_lm``,
    ``</s>``); returns ``(beams, misses)`` (with misses, :func:`lm_beam_search` asks the host
    and calls again)."""
    parent, last, _, n_state, n_score, n_vnode, n_hnode, n_length, _, _, _, beam_node, beam_b, beam_nb, counts = work
    n_words, use_lm, use_eos = tables[13][1], tables[13][2], tables[13][3]
    c_keys, c_score = tables[10], tables[11]
    beams, miss_count = counts[1], 0
    for r in range(beams):
        node = beam_node[r]
        state, score, miss_count = _finish_word(n_state[node], n_score[node], n_vnode[node], n_hnode[node], n_length[node],
                                                tables, misses, miss_count)
        if use_lm and use_eos:
            key = state * (n_words + 2) + n_words + 1
            slot = _probe(c_keys, key)
            if c_keys[slot] == key:
                score += c_score[slot]
            else:
                if miss_count < misses.shape[0]:
                    misses[miss_count] = key
                miss_count += 1
        out_extra[r] = score
        out_acoustic[r] = _lae(beam_b[r], beam_nb[r])
        length = 0
        while node > 0:
            length += 1
            node = parent[node]
        out_lengths[r] = length
        node, k = beam_node[r], length - 1
        while node > 0:
            out_labels[r, k] = last[node]
            node = parent[node]
            k -= 1
    return beams, miss_count


@njit(**NJIT)
def table_insert(keys, values, new_keys, new_values):
    """Insert ``new_keys -> new_values`` (int64) into the open-addressing table ``keys``,
    ``values``, which must have room (the caller grows it with :func:`table_grown`)."""
    for i in range(new_keys.shape[0]):
        slot = _probe(keys, new_keys[i])
        keys[slot], values[slot] = new_keys[i], new_values[i]


@njit(**NJIT)
def cache_insert(keys, scores, nexts, new_keys, new_scores, new_nexts):
    """Insert language-model scores ``(state * W + word) -> (score, next state)``."""
    for i in range(new_keys.shape[0]):
        slot = _probe(keys, new_keys[i])
        keys[slot], scores[slot], nexts[slot] = new_keys[i], new_scores[i], new_nexts[i]
