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
``p_b + p_nb``, dropping those more than ``-beam_prune_log_prob`` below the best and
those of probability zero. ``p_b + p_nb`` of a prefix is the total probability of its
labeling over all its paths, so with a beam that keeps every prefix and no pruning the
best hypothesis is the exact most probable labeling.

A frame's candidates are the current beams, in rank order, followed by the new prefixes
in order of creation (by beam, then label). A current beam ``l c`` receives its
extension from its parent ``l`` when that is a beam too; every other extension is a new
prefix, whose probability is complete when it is created. So the new prefixes are never
all stored: they stream through a buffer of ``2 * beam_width + 16`` candidates which,
when full, is cut back to its ``beam_width`` best by a partial selection (linear time), after
which a candidate must beat the last one kept. A frame costs ``O(beams x candidate
labels)`` plus a stable sort of the kept ones; memory is ``O(beam_width + C)``. Ties are
broken by candidate order (a later candidate must be strictly better), as a stable sort
would, so results are deterministic.

A labeling has one trie node for good (an open-addressing table maps ``(node, label)``
to the child), so an extension ``l c`` that is already a beam is found through the
beams' parent links. Only the prefixes that are kept become trie nodes: at most one per
kept prefix per frame, which bounds an item's memory by ``T * beam_width`` nodes.

NaN log-probabilities are refused by the caller; a candidate whose probability is zero
(``-inf``, e.g. through masked classes) is never kept, and a labeling whose last label is
``-inf`` at a frame simply gets no repeat term there. When every candidate is impossible
(a frame where every class is ``-inf``), the first one (the best beam so far) is kept
with probability zero, so an item always has at least one hypothesis.
"""

import numpy as np

from . import pool
from .config import NJIT
from .disk_cache import njit
from .intrinsics import is_set
from .loss.trellis import _logaddexp as _lae

_NEG_INF = -np.inf
CANCEL_FRAMES = 4
"""The search checks its cancel flag every this many frames (a frame of a wide beam can
take milliseconds)."""


@njit(**NJIT)
def _grown(array, size, fill):
    """``array`` with room for at least ``size`` entries (doubling), new entries ``fill``."""
    if array.shape[0] >= size:
        return array
    out = np.full(max(size, 2 * array.shape[0]), fill, dtype=array.dtype)
    out[: array.shape[0]] = array
    return out


_EMPTY = -1
_SPARE = 16
"""Candidates the buffer holds beyond ``2 * beam_width``, so that a narrow beam is not cut
back after every few candidates (16 was the fastest of 0-1024 for beams of 4-256)."""
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
def _candidate_labels(log_probs, t, n, blank, token_min_log_prob, labels, is_label):
    """Writes the labels that extend prefixes at frame t into ``labels`` and marks them in
    ``is_label``; returns their count: the non-blank classes with log-prob >=
    ``token_min_log_prob``, or else the best one if it is possible (above ``-inf``)."""
    count = 0
    top_class, top_value = -1, _NEG_INF
    for c in range(log_probs.shape[2]):
        is_label[c] = False
        if c == blank:
            continue
        v = np.float64(log_probs[t, n, c])
        if v >= token_min_log_prob:
            labels[count] = c
            is_label[c] = True
            count += 1
        if v > top_value:
            top_class, top_value = c, v
    if count == 0 and top_class >= 0:
        labels[0] = top_class
        is_label[top_class] = True
        count = 1
    return count


@njit(**NJIT)
def _select(values, size, k):
    """The value of rank ``k`` (0: the smallest) among ``values[:size]``, which it reorders:
    quickselect with a median-of-three pivot and a three-way partition (equal values cost
    nothing), falling back to NumPy's introselect if the pivots keep missing."""
    low, high = 0, size - 1
    for _ in range(64):
        if low >= high:
            return values[k]
        middle = (low + high) // 2
        a, b, c = values[low], values[middle], values[high]
        pivot = max(min(a, b), min(max(a, b), c))
        less, at, more = low, low, high
        while at <= more:
            v = values[at]
            if v < pivot:
                values[at], values[less] = values[less], v
                less += 1
                at += 1
            elif v > pivot:
                values[at], values[more] = values[more], v
                more -= 1
            else:
                at += 1
        if k < less:
            high = less - 1
        elif k > more:
            low = more + 1
        else:
            return pivot
    return np.partition(values[low:high + 1], k - low)[k - low]


@njit(**NJIT)
def _compact(totals, origins, labels, size, width, scratch):
    """Keep, in their order, the ``width`` best of the first ``size`` (> width) candidates,
    ties going to the earlier; returns the total of the last kept in rank (a later
    candidate must beat it). Linear time (a partial selection in ``scratch``, then one
    stable pass)."""
    scratch[:size] = totals[:size]
    threshold = _select(scratch, size, size - width)
    ties = width
    for a in range(size):
        if totals[a] > threshold:
            ties -= 1
    kept = 0
    for a in range(size):
        total = totals[a]
        if total > threshold or (total == threshold and ties > 0):
            if not total > threshold:
                ties -= 1
            totals[kept], origins[kept], labels[kept] = total, origins[a], labels[a]
            kept += 1
    return threshold


@njit(**NJIT)
def _ranked(totals, origins, labels, size):
    """The first ``size`` candidates (in candidate order) sorted best first, stably: in
    place by insertion for a few, else by a merge sort."""
    if size <= 32:
        for a in range(1, size):
            total, origin, label = totals[a], origins[a], labels[a]
            r = a
            while r > 0 and totals[r - 1] < total:
                totals[r], origins[r], labels[r] = totals[r - 1], origins[r - 1], labels[r - 1]
                r -= 1
            totals[r], origins[r], labels[r] = total, origin, label
        return
    rank = np.argsort(-totals[:size], kind="mergesort")
    totals[:size], origins[:size], labels[:size] = totals[:size][rank], origins[:size][rank], labels[:size][rank]


@njit(**NJIT)
def _beam_item(log_probs, n, frames, blank, beam_width, token_min_log_prob, beam_prune_log_prob, top_k,
               out_labels, out_lengths, out_scores, cancel):
    """Prefix beam search of item n over its first ``frames`` frames (only those are read).
    Writes up to ``top_k`` hypotheses, best first, into ``out_labels`` (top_k, >= frames),
    ``out_lengths`` and ``out_scores``; returns their number (0 when ``cancel[0]`` was set
    before it finished)."""
    classes = log_probs.shape[2]
    # the trie: node 0 is the empty prefix; beam_of[node] is its rank among the current beams, or -1
    parent = np.full(64, -1, dtype=np.int64)
    last = np.full(64, -1, dtype=np.int64)
    beam_of = np.full(64, -1, dtype=np.int64)
    nodes = 1
    child_key = np.full(128, _EMPTY, dtype=np.int64)  # node * classes + label -> child node
    child_node = np.empty(128, dtype=np.int64)
    # the current beams, best first, and their values after this frame's blank, repeat and extension terms
    beam_node = np.zeros(beam_width, dtype=np.int64)
    beam_b = np.zeros(beam_width)
    beam_nb = np.full(beam_width, _NEG_INF)
    beams = 1
    next_b = np.empty(beam_width)
    next_nb = np.empty(beam_width)
    first_child = np.empty(beam_width, dtype=np.int64)  # the beams whose parent is this beam, linked
    next_sibling = np.empty(beam_width, dtype=np.int64)
    labels = np.empty(classes, dtype=np.int64)
    is_label = np.zeros(classes, dtype=np.bool_)
    is_child = np.zeros(classes, dtype=np.bool_)
    # the best candidates so far, in candidate order: cand_label -1 marks a current beam (cand_from
    # its rank), others extend beam cand_from by cand_label; compacted to beam_width when full
    room = 2 * beam_width + _SPARE
    cand_total = np.empty(room)
    cand_from = np.empty(room, dtype=np.int64)
    cand_label = np.empty(room, dtype=np.int64)
    scratch = np.empty(room)
    new_node = np.empty(beam_width, dtype=np.int64)
    for t in range(frames):
        if t % CANCEL_FRAMES == 0 and is_set(cancel):
            return 0
        count = _candidate_labels(log_probs, t, n, blank, token_min_log_prob, labels, is_label)
        log_blank = np.float64(log_probs[t, n, blank])
        for i in range(beams):
            beam_of[beam_node[i]] = i
            first_child[i] = -1
        for j in range(beams):
            p = parent[beam_node[j]]
            if p >= 0 and beam_of[p] >= 0:
                i = beam_of[p]
                next_sibling[j] = first_child[i]
                first_child[i] = j
        # the current beams: blank, repeat, and the extension from their parent if it is a beam
        best = _NEG_INF
        size = 0  # candidates held; beams come first, and never more than beam_width of them
        for j in range(beams):
            node, b, nb = beam_node[j], beam_b[j], beam_nb[j]
            previous = last[node]
            next_b[j] = _lae(b, nb) + log_blank
            next_nb[j] = _NEG_INF
            if previous >= 0:
                next_nb[j] = nb + np.float64(log_probs[t, n, previous])
                p = parent[node]
                if is_label[previous] and beam_of[p] >= 0:
                    i = beam_of[p]
                    source = beam_b[i] if previous == last[p] else _lae(beam_b[i], beam_nb[i])
                    next_nb[j] = _lae(next_nb[j], source + np.float64(log_probs[t, n, previous]))
            total = _lae(next_b[j], next_nb[j])
            if total > _NEG_INF:  # NaN and -inf are never kept
                best = max(best, total)
                cand_total[size], cand_from[size], cand_label[size] = total, j, -1
                size += 1
        # the new prefixes, in order of creation: one below the floor so far is below the final
        # floor, and one not above the threshold ranks below beam_width earlier ones
        threshold = _NEG_INF
        for i in range(beams):
            b, nb = beam_b[i], beam_nb[i]
            total = _lae(b, nb)
            previous = last[beam_node[i]]
            at = first_child[i]
            while at >= 0:
                is_child[last[beam_node[at]]] = True
                at = next_sibling[at]
            for k in range(count):
                c = labels[k]
                if is_child[c]:
                    continue
                score = (b if c == previous else total) + np.float64(log_probs[t, n, c])
                if score > threshold and not score < best + beam_prune_log_prob:
                    if size == cand_total.shape[0]:
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
        if size > beam_width:
            _compact(cand_total, cand_from, cand_label, size, beam_width, scratch)
            size = beam_width
        _ranked(cand_total, cand_from, cand_label, size)
        kept = 0
        while kept < size and not cand_total[kept] < best + beam_prune_log_prob:
            kept += 1
        if kept == 0:  # every candidate has probability zero: keep the first, as a sort would
            cand_from[0], cand_label[0], kept = 0, -1, 1
            next_b[0], next_nb[0] = _NEG_INF, _NEG_INF
        # the kept candidates become the beams; new prefixes become trie nodes
        for r in range(kept):
            if cand_label[r] < 0:
                new_node[r] = beam_node[cand_from[r]]
                continue
            origin, label = beam_node[cand_from[r]], cand_label[r]
            if 2 * nodes >= child_key.shape[0]:
                child_key, child_node = _rehashed(child_key, child_node)
            slot = _probe(child_key, origin * classes + label)
            if child_key[slot] != _EMPTY:  # the labeling had been a beam before
                new_node[r] = child_node[slot]
                continue
            if nodes == parent.shape[0]:
                parent = _grown(parent, nodes + 1, -1)
                last = _grown(last, nodes + 1, -1)
                beam_of = _grown(beam_of, nodes + 1, -1)
            child_key[slot], child_node[slot] = origin * classes + label, nodes
            parent[nodes], last[nodes] = origin, label
            new_node[r] = nodes
            nodes += 1
        for i in range(beams):
            beam_of[beam_node[i]] = -1
        for r in range(kept):  # a current beam's new values are in next_b/next_nb, a new prefix's in cand_total
            beam_node[r] = new_node[r]
            if cand_label[r] < 0:
                beam_b[r], beam_nb[r] = next_b[cand_from[r]], next_nb[cand_from[r]]
            else:
                beam_b[r], beam_nb[r] = _NEG_INF, cand_total[r]
        beams = kept
    return _write_hypotheses(parent, last, beam_node, beam_b, beam_nb, beams, top_k, out_labels, out_lengths, out_scores)


@njit(**NJIT)
def _write_hypotheses(parent, last, beam_node, beam_b, beam_nb, beams, top_k, out_labels, out_lengths, out_scores):
    """The labels and log-probability of the first ``min(top_k, beams)`` beams; returns their number."""
    found = min(top_k, beams)
    for r in range(found):
        node = beam_node[r]
        length = 0
        while node > 0:
            length += 1
            node = parent[node]
        out_lengths[r] = length
        out_scores[r] = _lae(beam_b[r], beam_nb[r])
        node, k = beam_node[r], length - 1
        while node > 0:
            out_labels[r, k] = last[node]
            node = parent[node]
            k -= 1
    return found


BEAM_NS = 4.0
"""Estimated ns per beam and class of a frame (one core), to split a batch between threads."""


def beam_search_batch(log_probs, input_lengths, blank, beam_width, token_min_log_prob, beam_prune_log_prob, top_k,
                      out_labels, out_lengths, out_scores, found):
    """Prefix beam search for every item, in parallel (:mod:`.pool`). ``out_labels``
    (N, top_k, >= max(input_lengths)) int64, ``out_lengths`` (N, top_k), ``out_scores`` (N,
    top_k), ``found`` (N,): the number of hypotheses written for each item (fewer than
    ``top_k`` when fewer prefixes exist)."""
    arguments = (log_probs, input_lengths, blank, beam_width, token_min_log_prob, beam_prune_log_prob, top_k, out_labels,
                 out_lengths, out_scores, found)
    pool.run_kernel(_beam_items, np.arange(found.shape[0]), arguments, BEAM_NS * input_lengths * beam_width * log_probs.shape[2])


@njit(**NJIT)
def _beam_items(items, cancel, log_probs, input_lengths, blank, beam_width, token_min_log_prob, beam_prune_log_prob, top_k,
                out_labels, out_lengths, out_scores, found):
    """:func:`beam_search_batch` over the item indices ``items``, until ``cancel[0]`` is set."""
    for i in range(items.shape[0]):
        if is_set(cancel):
            return
        n = items[i]
        found[n] = _beam_item(log_probs, n, input_lengths[n], blank, beam_width, token_min_log_prob, beam_prune_log_prob,
                              top_k, out_labels[n], out_lengths[n], out_scores[n], cancel)
