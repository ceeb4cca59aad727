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
``p_b + p_nb``. ``p_b + p_nb`` of a prefix is the total probability of its labeling over
all its paths, so with a beam that keeps every prefix and no candidate pruning the best
hypothesis is the exact most probable labeling. Ties are broken by the order in which
prefixes were created (stable sort), so results are deterministic.
"""

import numpy as np
from numba import njit, prange, types
from numba.typed import Dict, List

from .config import NJIT, PARALLEL
from .loss import _logaddexp as _lae

_NEG_INF = -np.inf


@njit(**NJIT)
def _slot(index, nodes, p_b, p_nb, node):
    """Index of ``node`` among the next beams, appending it with zero probability if new."""
    if node in index:
        return index[node]
    at = np.int64(len(nodes))
    index[node] = at
    nodes.append(node)
    p_b.append(_NEG_INF)
    p_nb.append(_NEG_INF)
    return at


@njit(**NJIT)
def _beam_item(log_probs, n, frames, blank, beam_width, token_min_log_prob, top_k, out_labels, out_lengths, out_scores):
    classes = log_probs.shape[2]
    parent = List([np.int64(-1)])
    last_label = List([np.int64(-1)])
    depth = List([np.int64(0)])
    children = Dict.empty(key_type=types.int64, value_type=types.int64)
    beams = np.zeros(1, dtype=np.int64)
    beam_b = np.zeros(1)
    beam_nb = np.full(1, _NEG_INF)
    candidates = np.empty(classes, dtype=np.int64)
    for t in range(frames):
        count = 0
        top_class, top_value = -1, _NEG_INF
        for c in range(classes):
            v = np.float64(log_probs[t, n, c])
            if c != blank:
                if v >= token_min_log_prob:
                    candidates[count] = c
                    count += 1
                if v > top_value:
                    top_class, top_value = c, v
        if count == 0 and top_class >= 0:  # always extend by the most probable label
            candidates[0] = top_class
            count = 1
        log_blank = np.float64(log_probs[t, n, blank])
        index = Dict.empty(key_type=types.int64, value_type=types.int64)
        nodes = List.empty_list(types.int64)
        p_b = List.empty_list(types.float64)
        p_nb = List.empty_list(types.float64)
        for i in range(beams.shape[0]):
            node, b, nb = beams[i], beam_b[i], beam_nb[i]
            total = _lae(b, nb)
            at = _slot(index, nodes, p_b, p_nb, node)
            p_b[at] = _lae(p_b[at], total + log_blank)
            last = last_label[node]
            if last >= 0:
                p_nb[at] = _lae(p_nb[at], nb + np.float64(log_probs[t, n, last]))
            for j in range(count):
                c = candidates[j]
                key = node * classes + c
                if key in children:
                    child = children[key]
                else:
                    child = np.int64(len(parent))
                    children[key] = child
                    parent.append(node)
                    last_label.append(c)
                    depth.append(depth[node] + 1)
                at = _slot(index, nodes, p_b, p_nb, child)
                source = b if c == last else total
                p_nb[at] = _lae(p_nb[at], source + np.float64(log_probs[t, n, c]))
        size = len(nodes)
        totals = np.empty(size)
        for i in range(size):
            totals[i] = -_lae(p_b[i], p_nb[i])
        order = np.argsort(totals, kind="mergesort")[:beam_width]
        beams = np.empty(order.shape[0], dtype=np.int64)
        beam_b = np.empty(order.shape[0])
        beam_nb = np.empty(order.shape[0])
        for i in range(order.shape[0]):
            beams[i], beam_b[i], beam_nb[i] = nodes[order[i]], p_b[order[i]], p_nb[order[i]]
    totals = np.empty(beams.shape[0])
    for i in range(beams.shape[0]):
        totals[i] = -_lae(beam_b[i], beam_nb[i])
    order = np.argsort(totals, kind="mergesort")
    found = min(top_k, order.shape[0])
    for r in range(found):
        node = beams[order[r]]
        out_lengths[r] = depth[node]
        out_scores[r] = -totals[order[r]]
        k = depth[node] - 1
        while node > 0:
            out_labels[r, k] = last_label[node]
            node = parent[node]
            k -= 1
    return found


@njit(**PARALLEL)
def beam_search_batch(log_probs, input_lengths, blank, beam_width, token_min_log_prob, top_k, out_labels, out_lengths, out_scores, found):
    """Prefix beam search for every item, in parallel. ``out_labels`` (N, top_k, T) int64,
    ``out_lengths`` (N, top_k), ``out_scores`` (N, top_k), ``found`` (N,): the number of
    hypotheses written for each item (fewer than ``top_k`` when fewer prefixes exist)."""
    for n in prange(found.shape[0]):
        found[n] = _beam_item(log_probs, n, input_lengths[n], blank, beam_width, token_min_log_prob, top_k,
                              out_labels[n], out_lengths[n], out_scores[n])
