"""Recipe loading and validation: errors name the file, the phase and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from curriculum.errors import RecipeError
from curriculum.recipe import Anneal, LRSchedule, TopN, load_recipe

ROOT = Path(__file__).resolve().parents[2]

GOOD = """
name = "t"
[[phases]]
name = "a"
tokens = 1e6
batch_tokens = 4096
seq_len = 128
languages = { top = 3 }
tau = 0.7
mask_ratio = 0.3
[[phases]]
name = "b"
tokens = 5e5
batch_tokens = 4096
seq_len = 256
languages = ["fr", "deu_Latn"]
tau = { start = 0.5, end = 0.3 }
mask_ratio = { start = 0.15, end = 0.05 }
max_epochs = 4
lr = { decay = "inv_sqrt", final_factor = 0.02 }
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "r.toml"
    p.write_text(text)
    return p


def test_shipped_recipes_load():
    mm = load_recipe(ROOT / "manifests/recipes/mmbert.toml")
    assert [p.name for p in mm.phases] == ["pretrain", "midtrain", "decay"]
    assert [p.tokens for p in mm.phases] == [2.3e12, 6e11, 1e11]
    assert [p.seq_len for p in mm.phases] == [1024, 8192, 8192]
    assert [p.tau for p in mm.phases] == [0.7, 0.5, 0.3]
    assert [p.mask_ratio for p in mm.phases] == [0.3, 0.15, 0.05]
    assert mm.phases[0].languages == TopN(top=60) and mm.phases[1].languages == TopN(top=110)
    assert mm.phases[2].languages == "all"
    assert all(p.batch_sequences == 4608 for p in mm.phases)
    assert mm.phases[2].lr.decay == "inv_sqrt"
    demo = load_recipe(ROOT / "manifests/recipes/demo.toml")
    assert len(demo.phases) == 3 and demo.phases[2].languages == "all"


def test_good_recipe_parses_all_forms(tmp_path):
    r = load_recipe(write(tmp_path, GOOD))
    a, b = r.phases
    assert a.languages == TopN(top=3) and b.languages == ["fr", "deu_Latn"]
    assert isinstance(b.tau, Anneal) and b.tau_at(0.5) == pytest.approx(0.4)
    assert b.mask_ratio_at(1.0) == pytest.approx(0.05)
    assert len(b.segment_taus()) == b.anneal_segments and b.segment_taus()[0] == pytest.approx(0.5 - 0.2 / 32)
    assert a.steps == 245 and a.batch_sequences == 32
    assert r.fingerprint() == load_recipe(write(tmp_path, GOOD)).fingerprint()


@pytest.mark.parametrize(
    "edit, needles",
    [
        (("tau = 0.7", "tau = 1.7"), ["phase 'a'", "'tau'", "[0, 1]"]),
        (("seq_len = 256", "seq_len = 250"), ["phase 'b'", "multiple of seq_len"]),
        (("tokens = 5e5", "tokens = -1"), ["phase 'b'", "'tokens'", "greater than 0"]),
        (("languages = { top = 3 }", "languages = { top = 0 }"), ["phase 'a'", "languages"]),
        (("mask_ratio = 0.3", "mask_ratio = 1.2"), ["phase 'a'", "mask_ratio"]),
        (("max_epochs = 4", "max_epochs = 4\nbogus = 1"), ["phase 'b'", "'bogus'", "Extra inputs"]),
        (('decay = "inv_sqrt"', 'decay = "cosine"'), ["phase 'b'", "lr.decay"]),
        (('name = "b"', 'name = "a"'), ["unique", "a"]),
        # Was accepted: 2·10^26 steps, and a far step's batch walked the blend for hours.
        (("tokens = 5e5", "tokens = 1e30"), ["phase 'b'", "'tokens'", "less than or equal to 1000000000000000"]),
        # Was clipped to the phase's 5e5 tokens without a word.
        (('final_factor = 0.02 }', 'final_factor = 0.02, decay_tokens = 6e5 }'),
         ["phase 'b'", "lr.decay_tokens (600000) exceeds the phase's tokens (500000)"]),
        # Bools and numeric strings were coerced: `tokens = true` planned a 1-token phase.
        (("tokens = 1e6", "tokens = true"), ["phase 'a'", "'tokens'", "valid number"]),
        (("batch_tokens = 4096\nseq_len = 128", 'batch_tokens = "4096"\nseq_len = 128'), ["phase 'a'", "'batch_tokens'", "valid integer"]),
        (("max_epochs = 4", "max_epochs = true"), ["phase 'b'", "'max_epochs'", "valid number"]),
        (("max_epochs = 4", 'max_epochs = 4\nlanguage_weights = { fr = "3" }'), ["phase 'b'", "language_weights", "valid number"]),
        # An empty list said "none of its languages is in the manifest" at plan time.
        (('languages = ["fr", "deu_Latn"]', "languages = []"), ["phase 'b'", "languages", "at least 1 item"]),
        # decay_tokens / final_factor without a decay were accepted and ignored.
        (('lr = { decay = "inv_sqrt", final_factor = 0.02 }', "lr = { final_factor = 0.5 }"),
         ["phase 'b'", "final_factor set, but decay is \"none\""]),
        # The internal label of a resolved phase, or [[phases.variant]] for [[phases.variants]].
        (("max_epochs = 4", 'max_epochs = 4\nvariant = "x"'), ["phase 'b' (phases[1]), field 'variant'", "[[phases.variants]]"]),
        # pydantic's "Value error, " prefix leaked into every model-level message.
        (("tau = 0.7", "tau = 1.7"), ["field 'tau': tau must be in [0, 1]"]),
        # A union's failed branches were three messages naming internal classes (TopN, Anneal).
        (("languages = { top = 3 }", 'languages = "al"'),
         ["phase 'a' (phases[0]), field 'languages': expected \"all\", { top = N } or a list of language codes"]),
        (("tau = 0.7", 'tau = "0.7"'), ["field 'tau': expected a number in [0, 1] or { start = …, end = … }"]),
    ],
)
def test_validation_errors_name_file_phase_and_field(tmp_path, edit, needles):
    path = write(tmp_path, GOOD.replace(*edit))
    with pytest.raises(RecipeError) as ei:
        load_recipe(path)
    msg = str(ei.value)
    assert str(path) in msg
    for n in needles:
        assert n in msg, msg


def test_a_byte_order_mark_is_not_an_error(tmp_path):
    # Some Windows editors save UTF-8 with a BOM; it was "not valid TOML: Invalid statement (at line 1, column 1)".
    p = tmp_path / "bom.toml"
    p.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    assert load_recipe(p).fingerprint() == load_recipe(write(tmp_path, GOOD)).fingerprint()


def test_not_toml_and_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(write(tmp_path, "name = [unclosed"))
    with pytest.raises(RecipeError, match="cannot read"):
        load_recipe(tmp_path / "nope.toml")


def test_lr_shapes_end_at_final_factor():
    for decay in ("linear", "one_minus_sqrt", "inv_sqrt"):
        lr = LRSchedule(warmup_tokens=10, decay=decay, final_factor=0.02)
        assert lr.factor(0, 100) == 0.0
        assert lr.factor(5, 100) == pytest.approx(0.5)
        assert lr.factor(100, 100) == pytest.approx(0.02)
        vals = [lr.factor(t, 100) for t in range(10, 101)]
        assert all(x >= y - 1e-12 for x, y in zip(vals, vals[1:])), decay  # monotone after warm-up
    stable = LRSchedule(decay="linear", decay_tokens=20, final_factor=0.1)
    assert stable.factor(80, 100) == 1.0 and stable.factor(90, 100) == pytest.approx(0.55)


def two_phases(pre: str = "", decay: str = "") -> str:
    """A two-phase recipe with `pre` / `decay` appended to each phase's body (e.g. variants)."""
    body = "tokens = 1e6\nbatch_tokens = 4096\nseq_len = 128\n"
    return f'name = "v"\n[[phases]]\nname = "pre"\n{body}{pre}[[phases]]\nname = "decay"\n{body}{decay}'


VARIANTS = two_phases(decay='[[phases.variants]]\nname = "big"\ntokens = 4e6\n[[phases.variants]]\nname = "small"\n')


def test_variant_lengths_totals_and_what_a_variant_may_set(tmp_path):
    r = load_recipe(write(tmp_path, VARIANTS))
    assert r.total_tokens == 5e6  # the default variant's (was the phase template's 2e6)
    assert r.resolve("small").total_tokens == 2e6
    # A variant of an earlier phase may not change its length: the later phases would start at
    # another step in each variant, and the plan shows one schedule for them.
    bad = write(tmp_path, two_phases(pre='[[phases.variants]]\nname = "x"\ntokens = 2e6\n'))
    with pytest.raises(RecipeError, match=r"phase 'pre': variant\(s\) x set their own tokens, but phases follow it"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match=r"a variant cannot set 'seq_len'; it may set description, tokens, languages"):
        load_recipe(write(tmp_path, VARIANTS.replace('name = "small"', 'name = "small"\nseq_len = 256')))


def test_a_variant_can_drop_the_phases_epoch_cap(tmp_path):
    # TOML has no null: max_epochs = 0 in a variant was "greater than 0" and the cap could not go.
    r = load_recipe(write(tmp_path, two_phases(decay='max_epochs = 3\n[[phases.variants]]\nname = "capped"\n'
                                                      '[[phases.variants]]\nname = "free"\nmax_epochs = 0\n')))
    assert r.resolve("capped").phases[1].max_epochs == 3 and r.resolve("free").phases[1].max_epochs is None
