r"""CTC prefix beam search (Graves 2012, ch. 7; Hannun et al. 2014), without a language model.

Each hypothesis is a prefix (a node of a trie of labels) with two log-probabilities:
``p_b`` of the paths so far that collapse to it and end in a blank, ``p_nb`` of those
ending in its last label. One frame extends every prefix by the blank, by a repeat of
its last label (collapsing into itself), and by each candidate label:

.. math::
    p_b(l) \mathrel{+}= (p_b(l) + p_{nb}(l))\, y_\varnothing, \qquad
    p_{nb}(l) \mathrel{+}= p_{nb}(l)\, y_{l_{-1}}, \qquad
    p_{nb}(l c) \mathrel{+}= \begin{cases} p_b(l)\, y_c & c = l_{-1} \\
                                     (p_b(l) + p_{nb}(l))\, y_c & \text{otherwise}\end{cases}

(sums in log space), then keeps the ``beam_width`` prefixes of largest
``p_b + p_nb``, dropping those more than ``-beam_prune_log_prob`` below the best.
``p_b + p_nb`` of a prefix is the total probability of its labeling over all its paths,
so with a beam that keeps every prefix and no pruning the best hypothesis is the exact
most probable labeling.

Everything lives in arrays (no typed dictionaries): a frame's candidates are the current
beams, in rank order, followed by the new prefixes in order of creation (by beam, then
label). A labeling has one trie node for good (an open-addressing table maps
``(node, label)`` to the child), so an extension ``l c`` that is already a beam is found
through the beams' parent links. Only the prefixes that are kept become trie nodes. Ties
are broken by candidate order (the selection is stable), so results are deterministic.
"""

import numpy as np
from numba import njit, prange

from .config import NJIT, PARALLEL
from .loss import _logaddexp as _lae

_NEG_INF = -np.inf


@njit(**NJIT)
def _grown(array, size, fill):
    """``array`` with room for at least ``size`` entries (doubling), new entries ``fill``."""
    if array.shape[0] >= size:
        return array
    out = np.full(max(size, 2 * array.shape[0]), fill, dtype=array.dtype)
    out[: array.shape[0]] = array
    return out


_EMPTY = -1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@njit(**NJIT)
def _probe(keys, key):
    """Slot of ``key`` in the open-addressing table ``keys`` (a power of two long), or the
    empty slot where it would go (Fibonacci hashing, linear probing)."""
    mask = keys.shape[0] - 1
    slot = np.int64((np.uint64(key) * _GOLDEN) >> np.uint64(32)) & mask
    while keys[slot] != key and keys[slot] != _EMPTY:
        slot = (slot + 1) & mask
    return slot


@njit(**NJIT)
def _rehashed(keys, values):
    """The table at twice the size."""
    new_keys = np.full(2 * keys.shape[0], _EMPTY, dtype=np.int64)
    new_values = np.empty(2 * keys.shape[0], dtype=np.int64)
    for i in range(keys.shape[0]):
        if keys[i] != _EMPTY:
            slot = _probe(new_keys, keys[i])
            new_keys[slot], new_values[slot] = keys[i], values[i]
    return new_keys, new_values


@njit(**NJIT)
def _candidate_labels(log_probs, t, n, blank, token_min_log_prob, labels):
    """Writes the labels that extend prefixes at frame t into ``labels``; returns their count:
    the non-blank classes with log-prob >= ``token_min_log_prob``, or the best one if none."""
    count = 0
    top_class, top_value = -1, _NEG_INF
    for c in range(log_probs.shape[2]):
        if c == blank:
            continue
        v = np.float64(log_probs[t, n, c])
        if v >= token_min_log_prob:
            labels[count] = c
            count += 1
        if v > top_value:
            top_class, top_value = c, v
    if count == 0 and top_class >= 0:
        labels[0] = top_class
        count = 1
    return count


@njit(**NJIT)
def _beam_item(log_probs, n, frames, blank, beam_width, token_min_log_prob, beam_prune_log_prob, top_k,
               out_labels, out_lengths, out_scores):
    classes = log_probs.shape[2]
    # the trie: node 0 is the empty prefix
    parent = np.full(64, -1, dtype=np.int64)
    last = np.full(64, -1, dtype=np.int64)
    depth = np.zeros(64, dtype=np.int64)
    beam_of = np.full(64, -1, dtype=np.int64)  # node -> its rank among the current beams ...
    seen_at = np.full(64, -1, dtype=np.int64)  # ... valid when seen_at[node] == frame
    nodes = 1
    child_key = np.full(128, _EMPTY, dtype=np.int64)  # node * classes + label -> child node
    child_node = np.empty(128, dtype=np.int64)
    # the current beams, best first
    beam_node = np.zeros(beam_width, dtype=np.int64)
    beam_b = np.zeros(beam_width)
    beam_nb = np.full(beam_width, _NEG_INF)
    beams = 1
    first_child = np.empty(beam_width, dtype=np.int64)  # beams whose parent is this beam, linked
    next_sibling = np.empty(beam_width, dtype=np.int64)
    labels = np.empty(classes, dtype=np.int64)
    # a frame's candidates: the first ``beams`` are the current beams, then new prefixes
    cand_b = np.empty(beam_width * 2)
    cand_nb = np.empty(beam_width * 2)
    cand_from = np.empty(beam_width * 2, dtype=np.int64)   # the beam it extends (new prefixes)
    cand_label = np.empty(beam_width * 2, dtype=np.int64)  # its last label (new prefixes)
    cand_total = np.empty(beam_width * 2)                   # log(p_b + p_nb)
    keep = np.empty(beam_width, dtype=np.int64)
    keep_total = np.empty(beam_width)
    new_node = np.empty(beam_width, dtype=np.int64)
    for t in range(frames):
        count = _candidate_labels(log_probs, t, n, blank, token_min_log_prob, labels)
        log_blank = np.float64(log_probs[t, n, blank])
        for i in range(beams):
            beam_of[beam_node[i]] = i
            seen_at[beam_node[i]] = t
            first_child[i] = -1
        for j in range(beams):
            p = parent[beam_node[j]]
            if p >= 0 and seen_at[p] == t:
                i = beam_of[p]
                next_sibling[j] = first_child[i]
                first_child[i] = j
        size = beams * (count + 1)
        if cand_b.shape[0] < size:
            cand_b = np.empty(2 * size)
            cand_nb = np.empty(2 * size)
            cand_from = np.empty(2 * size, dtype=np.int64)
            cand_label = np.empty(2 * size, dtype=np.int64)
            cand_total = np.empty(2 * size)
        for i in range(beams):
            cand_b[i] = _NEG_INF
            cand_nb[i] = _NEG_INF
        created = beams
        for i in range(beams):
            node, b, nb = beam_node[i], beam_b[i], beam_nb[i]
            total = _lae(b, nb)
            previous = last[node]
            cand_b[i] = _lae(cand_b[i], total + log_blank)
            if previous >= 0:
                cand_nb[i] = _lae(cand_nb[i], nb + np.float64(log_probs[t, n, previous]))
            for k in range(count):
                c = labels[k]
                at = first_child[i]
                while at >= 0 and last[beam_node[at]] != c:
                    at = next_sibling[at]
                if at < 0:
                    at = created
                    created += 1
                    cand_b[at] = _NEG_INF
                    cand_nb[at] = _NEG_INF
                    cand_from[at] = i
                    cand_label[at] = c
                source = b if c == previous else total
                cand_nb[at] = _lae(cand_nb[at], source + np.float64(log_probs[t, n, c]))
        # keep the beam_width best of the possible ones (stable: a later candidate must be strictly better)
        best = _NEG_INF
        for a in range(created):
            cand_total[a] = _lae(cand_b[a], cand_nb[a])
            best = max(best, cand_total[a])
        floor = best + beam_prune_log_prob if best > _NEG_INF else _NEG_INF
        kept = 0
        for a in range(created):
            total = cand_total[a]
            if total == _NEG_INF or total < floor or (kept == beam_width and total <= keep_total[kept - 1]):
                continue
            r = min(kept, beam_width - 1)
            while r > 0 and keep_total[r - 1] < total:
                keep[r], keep_total[r] = keep[r - 1], keep_total[r - 1]
                r -= 1
            keep[r], keep_total[r] = a, total
            kept = min(kept + 1, beam_width)
        if kept == 0:  # every candidate has probability zero: keep the first, as the sort would
            keep[0], kept = 0, 1
        # the kept candidates become the beams; new prefixes become trie nodes
        for r in range(kept):
            a = keep[r]
            if a < beams:
                new_node[r] = beam_node[a]
            else:
                if nodes == parent.shape[0]:
                    parent = _grown(parent, nodes + 1, -1)
                    last = _grown(last, nodes + 1, -1)
                    depth = _grown(depth, nodes + 1, 0)
                    beam_of = _grown(beam_of, nodes + 1, -1)
                    seen_at = _grown(seen_at, nodes + 1, -1)
                origin, label = beam_node[cand_from[a]], cand_label[a]
                if 2 * nodes >= child_key.shape[0]:
                    child_key, child_node = _rehashed(child_key, child_node)
                slot = _probe(child_key, origin * classes + label)
                if child_key[slot] != _EMPTY:  # the labeling had been a beam before
                    new_node[r] = child_node[slot]
                    continue
                child_key[slot], child_node[slot] = origin * classes + label, nodes
                parent[nodes], last[nodes], depth[nodes] = origin, label, depth[origin] + 1
                new_node[r] = nodes
                nodes += 1
        for r in range(kept):
            beam_node[r], beam_b[r], beam_nb[r] = new_node[r], cand_b[keep[r]], cand_nb[keep[r]]
        beams = kept
    found = min(top_k, beams)
    for r in range(found):
        node = beam_node[r]
        out_lengths[r] = depth[node]
        out_scores[r] = _lae(beam_b[r], beam_nb[r])
        k = depth[node] - 1
        while node > 0:
            out_labels[r, k] = last[node]
            node = parent[node]
            k -= 1
    return found


@njit(**PARALLEL)
def beam_search_batch(log_probs, input_lengths, blank, beam_width, token_min_log_prob, beam_prune_log_prob, top_k,
                      out_labels, out_lengths, out_scores, found):
    """Prefix beam search for every item, in parallel. ``out_labels`` (N, top_k, T) int64,
    ``out_lengths`` (N, top_k), ``out_scores`` (N, top_k), ``found`` (N,): the number of
    hypotheses written for each item (fewer than ``top_k`` when fewer prefixes exist)."""
    for n in prange(found.shape[0]):
        found[n] = _beam_item(log_probs, np.int64(n), input_lengths[n], blank, beam_width, token_min_log_prob,
                              beam_prune_log_prob, top_k, out_labels[n], out_lengths[n], out_scores[n])
