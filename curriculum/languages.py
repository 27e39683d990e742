"""Language labels → FineWeb-2-style keys `{iso639_3}_{Script}` (`fra_Latn`, `cmn_Hani`, `srp_Cyrl`).

Every language label the project meets goes through `normalize_language`: recipe entries, FineWeb-2
directory names, fastText lid.176 labels (`__label__fr`), GlotLID labels (`__label__fra_Latn`),
BCP 47 / POSIX locale tags (`fr-FR`, `pt_BR`, `sr@latin`, `fr_FR.UTF-8`), ISO 639-1, 639-2/B
(`fre`, `ger`, `chi`) and 639-3 codes, any case. Keys are FineWeb-2's subset names, so a key the
build writes for `__label__zh` and the key a recipe gets for `cmn_Hani` are the same string.

How a label becomes a key (langcodes 3.5 + language_data 1.4 hold the CLDR and IANA data):

1. Parse the tag with langcodes. The language must be a registered ISO 639 code or one of
   FineWeb-2's codes (its `tok`, `eml` post-date the bundled registry); `und`, `mis`, `mul`,
   `zxx`, private-use `qaa`-`qtz` and unparseable text raise `UnknownLanguageError`.
2. Code: CLDR's aliases (`iw`→`heb`, `tl`→`fil`, `sh`→`srp` + Latn, `fre`→`fra`), except that a
   code FineWeb-2 keeps as its own subset is never aliased away (`swc`, `daf`, `kzj` stay). Then
   `FINEWEB2_CODES` moves a macrolanguage to the individual language FineWeb-2 uses (`zh`→`cmn`,
   `ar`→`arb`, `fa` stays `fas`). An ISO 639-5 collection (`sla`) that FineWeb-2 lacks is an error.
3. Script: the label's own (`fra_Latn`, `zh-Hant`, `sr@latin`), else the first of
   a. CLDR's likely script for that language in that region, where CLDR has one (`pa_PK`→Arab,
      `sr_ME`→Latn, `uz_AF`→Arab);
   b. FineWeb-2's script for the code: its only one, or, when it has several, CLDR's likely script
      if that is among them, else the one with the most training bytes (`hin`→Deva, `arb`→Arab);
   c. CLDR's likely script for the language, else for its macrolanguage (`pes`→Arab via `fa`);
   d. `Latn`, for a registered language (not a collection) that neither CLDR nor FineWeb-2 scripts.
   Rule d is the one guess, kept because it is almost always right where it applies: of the
   1,004 FineWeb-2 languages without a CLDR likely script, 939 (93.5%) are Latin-only and 952
   (94.8%) have a Latin subset, and the 23 of mmBERT's codes it applies to are long-tail
   (mostly Bible-translation) languages from the same population. Pass a script to override it.
   Script aliases follow FineWeb-2: `Hans`/`Hant`→`Hani`, `Kore`→`Hang` (`jpn_Jpan` stays).
4. `__label__xx` without a script is read as a fastText lid.176 label; lid.176 uses Wikipedia's
   codes, where `als` is Alemannic (`gsw`), not Tosk Albanian (GlotLID's `__label__als_Latn`).

The key `code` (source code, a "language" in mmBERT's token counts) is passed through unchanged.
Bare 639-3 codes (mmBERT's counts) become keys with `default_key_for_iso3`, which applies the same
rules: a language FineWeb-2 holds in several scripts gets one of them (its counts merged them).
"""

from __future__ import annotations

import csv
import functools
import re
import unicodedata
from importlib import resources

from langcodes import Language, tag_is_valid
from langcodes.data_dicts import LIKELY_SUBTAGS, MACROLANGUAGES
from language_data.registry_parser import parse_registry

from curriculum.errors import CurriculumError

CODE_KEY = "code"
FALLBACK_SCRIPT = "Latn"
FINEWEB2_CSV = "fineweb2_language_distribution.csv"

# CLDR's macrolanguage aliases (langcodes' NORMALIZED_MACROLANGUAGES) in whichever direction lands
# on a code FineWeb-2 has and the source code is not one of its subsets; test_languages re-derives
# this table from langcodes and the CSV. Two entries are ours, not CLDR's: `nor`→`nob` (CLDR names no
# Norwegian individual; Bokmål is the bulk of written Norwegian and of lid.176's `no`) and `pus`→`pbt`
# (CLDR names Northern Pashto `pbu`; FineWeb-2 holds Pashto only as Southern `pbt`). Left out on
# purpose: `aka` (CLDR names both `fat` and `twi`, FineWeb-2 has both) and macrolanguages FineWeb-2
# has no individual of (`kok`, `syr`, `ful`...): those keep their own code.
FINEWEB2_CODES: dict[str, str] = {
    "ara": "arb", "aym": "ayr", "aze": "azj", "bik": "bcl", "bnc": "lbk", "bua": "bxr", "chm": "mhr",
    "din": "dik", "est": "ekk", "gba": "gya", "grb": "gbo", "grn": "gug", "iku": "ike", "ipk": "esk",
    "kau": "knc", "kln": "spy", "kom": "kpv", "kon": "kng", "kur": "kmr", "lah": "pnb", "lav": "lvs",
    "man": "mnk", "mlg": "plt", "mon": "khk", "msa": "zsm", "nep": "npi", "ori": "ory", "orm": "gaz",
    "que": "quz", "raj": "mup", "rom": "rmy", "sqi": "als", "swa": "swh", "tmh": "ttq", "uzb": "uzn",
    "yid": "ydd", "zap": "zai", "zha": "zyb", "zho": "cmn", "zza": "diq",
    "bih": "bho", "dgo": "doi", "pes": "fas", "src": "srd", "xpe": "kpe",
    "nor": "nob", "pus": "pbt",
}
CLDR_OVERRIDES = frozenset({"nor", "pus"})

# FineWeb-2 writes all Chinese as Hani and Korean as Hang.
SCRIPT_ALIASES = {"Hans": "Hani", "Hant": "Hani", "Kore": "Hang"}

# glibc locale modifiers that name a script (`sr_RS@latin`, `uz_UZ@cyrillic`, `tt_RU@iqtelif`).
POSIX_SCRIPT_MODIFIERS = {
    "latin": "Latn", "cyrillic": "Cyrl", "devanagari": "Deva", "arabic": "Arab", "iqtelif": "Latn",
}

# fastText lid.176 labels are Wikipedia language codes; where one differs from ISO 639, the fix.
LID176_CODES = {"als": "gsw"}

_NOT_LANGUAGES = {"und": "undetermined", "mis": "uncoded", "mul": "multiple", "zxx": "no linguistic content"}
_HINT = (
    "use an ISO 639-1 or 639-3 code, optionally with an ISO 15924 script "
    "(e.g. 'fr', 'fra', 'fra_Latn', 'sr@latin', '__label__fra_Latn')"
)
_POSIX = re.compile(r"(?P<tag>[A-Za-z0-9_-]+)(?:\.[A-Za-z0-9_-]+)?(?:@(?P<mod>[A-Za-z0-9]+))?")
_KEY = re.compile(r"([a-z0-9]+)_([A-Z][a-z]{3})")
_ISO3 = re.compile(r"[A-Za-z]{3}")


class UnknownLanguageError(CurriculumError, ValueError):
    """A label that names no language this module can key; the message names it and the fix."""


def _unknown(label: str, why: str) -> UnknownLanguageError:
    return UnknownLanguageError(f"unknown language label {label!r}: {why}; {_HINT}")


@functools.cache
def _fineweb2_scripts() -> dict[str, tuple[str, ...]]:
    """FineWeb-2's scripts per 639-3 code, most training bytes first (`und` left out)."""
    size: dict[tuple[str, str], int] = {}
    path = resources.files("curriculum") / "data" / FINEWEB2_CSV
    with path.open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            subset = row["subset"]
            if subset.endswith("_removed"):
                continue
            code, _, script = subset.partition("_")
            if code == "und":
                continue
            bytes_ = int(row["utf8_bytes"]) if row["split"] == "train" and row["utf8_bytes"].isdigit() else 0
            size[(code, script)] = size.get((code, script), 0) + bytes_
    scripts: dict[str, list[tuple[int, str]]] = {}
    for (code, script), n in size.items():
        scripts.setdefault(code, []).append((-n, script))
    return {code: tuple(s for _, s in sorted(pairs)) for code, pairs in scripts.items()}


@functools.cache
def _collections() -> frozenset[str]:
    """ISO 639-5 collection codes (`sla`, `afa`...) from the IANA registry language_data ships."""
    return frozenset(
        e["Subtag"] for e in parse_registry() if e.get("Type") == "language" and e.get("Scope") == "collection"
    )


def _likely_script(tag: str) -> str | None:
    """CLDR's likely script for exactly this tag (no fallback to `und`), FineWeb-2 spelling."""
    filled = LIKELY_SUBTAGS.get(tag)
    if filled is None:
        return None
    script = Language.get(filled, normalize=False).script
    return SCRIPT_ALIASES.get(script, script) if script else None


def _cldr_script(code: str) -> str | None:
    """CLDR's likely script for a 639-3 code, else for its macrolanguage."""
    lang = Language.get(code).language or code  # CLDR keys use the 2-letter code where there is one
    script = _likely_script(lang)
    if script is None and lang in MACROLANGUAGES:
        script = _likely_script(MACROLANGUAGES[lang])
    return script


def _default_script(code: str, cldr_lang: str | None = None, territory: str | None = None) -> tuple[str, str]:
    """The script a label without one gets, and which rule (docstring step 3) chose it."""
    if cldr_lang and territory:
        script = _likely_script(f"{cldr_lang}-{territory}")
        if script is not None:
            return script, "cldr-region"
    cldr = _cldr_script(code)
    fineweb2 = _fineweb2_scripts().get(code)
    if fineweb2:
        if len(fineweb2) == 1:
            return fineweb2[0], "fineweb2"
        if cldr in fineweb2:
            return cldr, "fineweb2+cldr"
        return fineweb2[0], "fineweb2-largest"
    if cldr is not None:
        return cldr, "cldr"
    return FALLBACK_SCRIPT, "fallback"


def _is_private_use(lang: str) -> bool:
    return len(lang) == 3 and lang[0] == "q" and "a" <= lang[1] <= "t"


@functools.lru_cache(maxsize=1 << 16)
def normalize_language(label: str) -> str:
    """The FineWeb-2-style key (`fra_Latn`) for a language label, or `code` for `code`."""
    if not isinstance(label, str):
        raise TypeError(f"language label must be a str, got {type(label).__name__}: {label!r}")
    text = label.strip()
    if not text:
        raise _unknown(label, "it is empty")
    lid176 = False
    if text[:9].lower() == "__label__":
        text = text[9:]
        if not text:
            raise _unknown(label, "nothing follows '__label__'")
        lid176 = "_" not in text and "-" not in text
    if text.lower() == CODE_KEY:
        return CODE_KEY

    posix = _POSIX.fullmatch(text)
    if posix is None:
        raise _unknown(label, "it is not a language tag")
    tag, modifier_script = posix["tag"].replace("_", "-"), None
    if posix["mod"]:
        modifier = posix["mod"].lower()
        if modifier in POSIX_SCRIPT_MODIFIERS:
            modifier_script = POSIX_SCRIPT_MODIFIERS[modifier]
        elif modifier != "euro":  # `@euro` names a currency; anything else must be a registered variant
            tag = f"{tag}-{modifier}"
    first = tag.split("-", 1)[0].lower()
    if first == "x":  # BCP 47: `x-...` is a private-use tag, whatever follows
        raise _unknown(label, "an 'x-' tag is private use, not a language")
    if first in _NOT_LANGUAGES:
        raise _unknown(label, f"{first!r} is the code for '{_NOT_LANGUAGES[first]}', not a language")
    try:
        raw = Language.get(tag, normalize=False)
    except ValueError as exc:
        raise _unknown(label, f"it is not a language tag ({exc})") from None

    lang = raw.language
    if lang is None:
        raise _unknown(label, "it has no language subtag")
    if _is_private_use(lang):
        raise _unknown(label, f"{lang!r} is reserved for private use")
    if lid176 and lang in LID176_CODES:
        lang = LID176_CODES[lang]
        raw = raw.update_dict({"language": lang})
    fineweb2 = _fineweb2_scripts()
    if lang not in fineweb2 and not tag_is_valid(lang):
        raise _unknown(label, f"{lang!r} is not an ISO 639 language code")
    if not Language.make(script=raw.script, territory=raw.territory, variants=raw.variants).is_valid():
        raise _unknown(label, "its script, region or variant subtag is not a registered one")

    norm = Language.get(raw.to_tag())  # CLDR aliases: 2-letter/B codes, retired codes, sh → sr-Latn
    try:
        code = norm.to_alpha3()
    except LookupError:  # langcodes' own error for a code with no ISO 639-3 form
        raise _unknown(label, f"{norm.language!r} has no ISO 639-3 code") from None
    if lang in fineweb2 and code != lang:  # e.g. swc → sw-CD: FineWeb-2 keeps swc as its own subset
        code, norm = lang, raw
    script = norm.script
    if modifier_script is not None:
        if script is not None and script != modifier_script:
            raise _unknown(label, f"its script {script!r} contradicts its locale modifier @{posix['mod']}")
        script = modifier_script
    code = FINEWEB2_CODES.get(code, code)
    if code not in fineweb2 and code in _collections():
        raise _unknown(label, f"{code!r} is an ISO 639-5 collection of languages, not one language")
    if script is None:
        script, _ = _default_script(code, norm.language, norm.territory)
    return f"{code}_{SCRIPT_ALIASES.get(script, script)}"


def language_script(key: str) -> tuple[str, str]:
    """(language, script) of a normalized key: `fra_Latn` → (`fra`, `Latn`); `code` → (`code`, ``)."""
    if key == CODE_KEY:
        return CODE_KEY, ""
    match = _KEY.fullmatch(key)
    if match is None:
        raise UnknownLanguageError(
            f"{key!r} is not a normalized language key like 'fra_Latn'; pass the label through normalize_language"
        )
    return match[1], match[2]


def default_key_for_iso3(code: str) -> str:
    """The key for a bare ISO 639-3 code (`eng` → `eng_Latn`, `rus` → `rus_Cyrl`, `code` → `code`)."""
    text = code.strip()
    if text.lower() == CODE_KEY:
        return CODE_KEY
    if _ISO3.fullmatch(text) is None:
        raise UnknownLanguageError(
            f"{code!r} is not a bare ISO 639-3 code like 'eng'; use normalize_language for tags with a script or region"
        )
    return normalize_language(text.lower())


# -- the script of a text ------------------------------------------------------------------------

# Unicode character names start with their script's name ("CYRILLIC SMALL LETTER A"): the first
# word, as an ISO 15924 code, for every script FineWeb-2 holds a multi-script language in (and a
# few more). `CJK` covers the unified ideographs.
_SCRIPT_OF_NAME = {
    "LATIN": "Latn", "CYRILLIC": "Cyrl", "ARABIC": "Arab", "DEVANAGARI": "Deva", "BENGALI": "Beng", "CANADIAN": "Cans",
    "ETHIOPIC": "Ethi", "TIFINAGH": "Tfng", "CHEROKEE": "Cher", "GUJARATI": "Gujr", "CJK": "Hani", "KANNADA": "Knda",
    "KAYAH": "Kali", "MYANMAR": "Mymr", "HEBREW": "Hebr", "LIMBU": "Limb", "MALAYALAM": "Mlym", "MEETEI": "Mtei",
    "ORIYA": "Orya", "GURMUKHI": "Guru", "GREEK": "Grek", "OL": "Olck", "TAMIL": "Taml", "TELUGU": "Telu",
    "GEORGIAN": "Geor", "ARMENIAN": "Armn", "THAI": "Thai", "HANGUL": "Hang", "SYRIAC": "Syrc", "THAANA": "Thaa",
    "MONGOLIAN": "Mong", "TIBETAN": "Tibt", "SINHALA": "Sinh", "KHMER": "Khmr", "LAO": "Laoo",
}


@functools.lru_cache(maxsize=1 << 16)
def char_script(ch: str) -> str | None:
    """ISO 15924 code of a letter's script (None: not a letter, or a script not in the table)."""
    if not ch.isalpha():
        return None
    return _SCRIPT_OF_NAME.get(unicodedata.name(ch, "").split(" ", 1)[0])


# Web addresses and e-mail addresses are Latin whatever the text's language: their letters must
# not decide a script (Cyrillic Serbian with two URLs was taken for Latin Serbian).
_ADDRESS_MARKS = ("://", "www.", "@")


def dominant_script(text: str, candidates: tuple[str, ...]) -> str | None:
    """Which of `candidates` most letters of `text` are written in (ties: the earlier candidate),
    not counting web or e-mail addresses; None when no letter is in any of them."""
    counts = dict.fromkeys(candidates, 0)
    if "://" in text or "@" in text or "www." in text:  # split, not a regex: linear in long runs
        text = " ".join(w for w in text.split() if not any(m in w for m in _ADDRESS_MARKS))
    for ch in text:
        s = char_script(ch)
        if s in counts:
            counts[s] += 1
    best = max(candidates, key=lambda s: counts[s]) if candidates else None
    return best if best is not None and counts[best] > 0 else None


def script_from_text(key: str, text: str) -> str:
    """`key` with the script most letters of `text` are written in, when FineWeb-2 holds its
    language in several scripts (Serbian, Uzbek, Punjabi...) and the key's script is one of them;
    for a label that names no script (`sr`), whose usual script is only a guess."""
    code, _, script = key.partition("_")
    scripts = fineweb2_scripts(code)
    if len(scripts) < 2 or script not in scripts:
        return key
    found = dominant_script(text, scripts)
    return key if found is None else f"{code}_{found}"


def fineweb2_scripts(code: str) -> tuple[str, ...]:
    """FineWeb-2's scripts for a 639-3 code, most training bytes first (() when it has none)."""
    return _fineweb2_scripts().get(code, ())


# A label that names its script: GlotLID's `fra_Latn`, `sr-Latn`, `zh-Hant-TW`, `sr@latin`.
_SCRIPTED = re.compile(r"[-_][A-Za-z]{4}(?:$|[-_.@])|@")


def names_script(label: str) -> bool:
    """Whether a language label carries its script (then nothing about the script is guessed)."""
    return _SCRIPTED.search(label.removeprefix("__label__")) is not None
