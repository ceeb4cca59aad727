r"""Word n-gram language models for :mod:`ctckit.decoder`: a built-in ARPA reader and
back-off scorer (pure Python), and KenLM through its Python binding when it is installed.

Both answer ``score(state, word) -> (log10 p(word | state), next_state)`` as KenLM's
``BaseScore`` does, with the back-off rule of Katz (1987):

.. math::
    \log p(w \mid h_1 \dots h_k) = \begin{cases}
        \log p^*(h_1 \dots h_k\, w) & \text{if the n-gram is in the model} \\
        \mathrm{bo}(h_1 \dots h_k) + \log p(w \mid h_2 \dots h_k) & \text{otherwise}
    \end{cases}

down to the unigram ``p^*(w)``; a word outside the vocabulary is scored as ``<unk>``.
A state is the longest suffix of the history (at most ``order - 1`` words) that the
model holds as an n-gram: a longer one cannot change a later score, and shorter states
make the decoder's score cache hit more often. Scores are base 10, as in the file; the
decoder converts them to natural logarithms.

References: S. Katz, "Estimation of probabilities from sparse data for the language model
component of a speech recognizer", IEEE TASSP 1987; K. Heafield, "KenLM: Faster and
smaller language model queries", WMT 2011.
"""

from __future__ import annotations

import gzip
import os

from .errors import CTCInputError

UNKNOWN_WORD = "<unk>"
SENTENCE_START = "<s>"
SENTENCE_END = "</s>"
SPECIAL_WORDS = frozenset((UNKNOWN_WORD, SENTENCE_START, SENTENCE_END))
MISSING_UNKNOWN_LOG10 = -100.0
"""The log10 probability of an unknown word when the model has no ``<unk>`` (KenLM's value)."""


def _open_text(path: str):
    opener = gzip.open if str(path).endswith(".gz") else open
    return opener(path, "rt", encoding="utf-8")


def read_arpa_unigrams(path: str) -> list[str]:
    """The words of an ARPA file's ``\\1-grams:`` section, in file order, without ``<s>``,
    ``</s>`` and ``<unk>`` (read without loading the higher orders)."""
    words, inside = [], False
    with _open_text(path) as file:
        for line in file:
            line = line.strip()
            if line == "\\1-grams:":
                inside = True
            elif inside and line.startswith("\\"):
                break
            elif inside and line:
                parts = line.split()
                if len(parts) >= 2 and parts[1] not in SPECIAL_WORDS:
                    words.append(parts[1])
    if not words:
        raise CTCInputError(f"kenlm_model_path: no unigrams found in {path!r}; is it an ARPA file?")
    return words


class ArpaLanguageModel:
    """A back-off n-gram model read from an ARPA file (plain or ``.gz``), in memory.

    Attributes:
        order: the highest n-gram order.
        path: the file it was read from.
    """

    def __init__(self, path: str):
        self.path = os.fspath(path)
        self._ngrams: dict[tuple, tuple[float, float]] = {}  # words -> (log10 prob, log10 back-off)
        counts: dict[int, int] = {}
        section = 0
        try:
            file = _open_text(self.path)
        except OSError as error:
            raise CTCInputError(f"kenlm_model_path: cannot open {self.path!r}: {error}") from None
        with file:
            for number, line in enumerate(file, 1):
                line = line.strip()
                if not line:
                    continue
                if line.startswith("\\"):
                    if line == "\\data\\" or line == "\\end\\":
                        section = 0
                    elif line.endswith("-grams:"):
                        section = int(line[1:line.index("-")])
                    continue
                if section == 0:
                    if line.startswith("ngram "):
                        order, count = line[6:].split("=")
                        counts[int(order)] = int(count)
                    continue
                parts = line.split()
                if len(parts) not in (section + 1, section + 2):
                    raise CTCInputError(f"kenlm_model_path: {self.path!r} line {number} is not a {section}-gram entry: {line!r:.80}")
                backoff = float(parts[section + 1]) if len(parts) == section + 2 else 0.0
                self._ngrams[tuple(parts[1:section + 1])] = (float(parts[0]), backoff)
        if not counts or not self._ngrams:
            raise CTCInputError(f"kenlm_model_path: {self.path!r} has no \\data\\ header or no n-grams; is it an ARPA file?")
        self.order = max(counts)
        self._vocabulary = frozenset(words[0] for words in self._ngrams if len(words) == 1)
        unknown = self._ngrams.get((UNKNOWN_WORD,))
        self._unknown_log10 = unknown[0] if unknown is not None else MISSING_UNKNOWN_LOG10

    def __contains__(self, word: str) -> bool:
        return word in self._vocabulary

    def vocabulary(self) -> list[str]:
        """The unigrams, sorted, without ``<s>``, ``</s>`` and ``<unk>``."""
        return sorted(self._vocabulary - SPECIAL_WORDS)

    def begin_state(self) -> tuple:
        """The state at the start of a sentence (after ``<s>``)."""
        return (SENTENCE_START,)

    def null_state(self) -> tuple:
        """The state without context."""
        return ()

    def score(self, state: tuple, word: str) -> tuple[float, tuple]:
        """``(log10 p(word | state), next_state)`` by the back-off rule (module docstring)."""
        if word not in self._vocabulary:
            word = UNKNOWN_WORD
        context, backoff, ngrams = state, 0.0, self._ngrams
        while True:
            entry = ngrams.get(context + (word,))
            if entry is not None:
                log10 = backoff + entry[0]
                break
            if not context:
                log10 = backoff + self._unknown_log10
                break
            entry = ngrams.get(context)
            if entry is not None:
                backoff += entry[1]
            context = context[1:]
        history = (state + (word,))[max(0, len(state) + 2 - self.order):]
        while history and history not in ngrams:
            history = history[1:]
        return log10, history


class KenLMLanguageModel:
    """A KenLM model (binary or ARPA) through the ``kenlm`` binding, with the same methods
    as :class:`ArpaLanguageModel`. Pickles as its path: a copy loads the file again."""

    def __init__(self, path: str):
        self.path = os.fspath(path)
        self._load()

    def _load(self) -> None:
        try:
            import kenlm
        except ImportError:
            raise ImportError("lm_backend='kenlm' needs the kenlm binding: pip install kenlm "
                              "(or use an ARPA file with lm_backend='builtin')") from None
        self._kenlm = kenlm
        try:
            self._model = kenlm.Model(self.path)
        except (OSError, RuntimeError) as error:
            raise CTCInputError(f"kenlm_model_path: KenLM cannot load {self.path!r}: {error}") from None
        self.order = int(self._model.order)

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.path = state["path"]
        self._load()

    def __contains__(self, word: str) -> bool:
        return word in self._model

    def vocabulary(self) -> list[str]:
        """The unigrams of an ARPA file (a binary model does not list its words)."""
        if not self.path.endswith((".arpa", ".arpa.gz")):
            raise CTCInputError(f"unigrams: a binary KenLM model ({self.path!r}) does not list its words: pass unigrams")
        return sorted(set(read_arpa_unigrams(self.path)))

    def begin_state(self):
        state = self._kenlm.State()
        self._model.BeginSentenceWrite(state)
        return state

    def null_state(self):
        state = self._kenlm.State()
        self._model.NullContextWrite(state)
        return state

    def score(self, state, word: str):
        following = self._kenlm.State()
        return self._model.BaseScore(state, word, following), following


def kenlm_available() -> bool:
    """Whether the ``kenlm`` binding can be imported."""
    import importlib.util
    return importlib.util.find_spec("kenlm") is not None


def load_language_model(path, backend: str = "auto"):
    """The model at ``path``: ``backend`` ``"kenlm"``, ``"builtin"`` (ARPA only), or
    ``"auto"`` (KenLM when it is installed, else the built-in reader for ARPA files)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"kenlm_model_path must be a path (str or os.PathLike), got {type(path).__name__}")
    path = os.fspath(path)
    if backend not in ("auto", "kenlm", "builtin"):
        raise CTCInputError(f"lm_backend must be 'auto', 'kenlm' or 'builtin', got {backend!r}")
    if not os.path.isfile(path):
        raise CTCInputError(f"kenlm_model_path: no such file {path!r}")
    is_arpa = path.endswith((".arpa", ".arpa.gz"))
    if backend == "kenlm" or (backend == "auto" and kenlm_available()):
        return KenLMLanguageModel(path)
    if not is_arpa and backend == "auto":
        raise CTCInputError(f"kenlm_model_path: {path!r} is not an .arpa file, and reading binary models needs the kenlm "
                            "binding (pip install kenlm)")
    return ArpaLanguageModel(path)
