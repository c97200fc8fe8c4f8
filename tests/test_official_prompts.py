"""Official prompt cleaning and demographic prompts (chexgen.data.prompts)."""

from __future__ import annotations

import pytest

from chexgen.data.manifest import Record
from chexgen.data.prompts import (
    DemographicPromptConfig,
    clean_caption,
    clean_prompt,
    demographic_prompt,
    demographic_prompts,
)
from chexgen.errors import ChexgenError

# Clinical text plus every kind of input the official rules touch.
CASES = [
    "sex:Male, age:71.0, race:Black. No acute cardiopulmonary process.",
    "Small LEFT pleural effusion (new) [compared with 2019-01-02]; PA/AP views.",
    "Right upper lobe nodule 2.5x1.8 cm, previously 2.1 x 1.5 cm.",
    "ET tube tip 4 cm above the carina... NG tube in stomach!!",
    "See https://example.com/report/123 and www.radiology.org for details",
    "Heart size <normal>; <b>bold</b> mediastinum &amp; hila &quot;unremarkable&quot;",
    "Fracture of t12l1 and ab1234 codes 1234567 #12 #123456",
    "“Quoted” ‘text’ with — dashes – and ‐ hyphens",
    "this-is-a-very-long-slug_with_underscores",
    "  Moderate   cardiomegaly :  stable ,  no pneumothorax.  ",
    "Mildly low lung volumes\\nwith bibasilar atelectasis",
    "'single quoted impression'",
    "Pneumothorax size < 2 cm, PICC line at cavoatrial junction; free shipping",
    "IP 192.168.1.1 file image01.png page 3 download free",
    "Café ñandú naïve mojibake cafÃ© 中文 test",
    "@doctor cc: 10:45  ",
    "ChexGen prompt+with+plus%20and%2Fencoded",
    "",
    ".hidden",
    "- leading dash and trailing colon:",
]


def _diffusers_clean():
    pytest.importorskip("bs4", reason="diffusers' reference routine needs beautifulsoup4")
    pytest.importorskip("ftfy")
    from diffusers import PixArtAlphaPipeline

    # _clean_caption only uses the class attribute bad_punct_regex, not pipeline components.
    pipe = PixArtAlphaPipeline.__new__(PixArtAlphaPipeline)
    return pipe._clean_caption


@pytest.mark.parametrize("text", CASES)
def test_clean_caption_matches_pixart_routine(text):
    reference = _diffusers_clean()
    assert clean_caption(text) == reference(text)
    assert clean_prompt(text, "official") == reference(reference(text))


def test_clean_caption_behaviour_on_clinical_text():
    out = clean_prompt("Small LEFT pleural effusion (new) [stable]. PA/AP view.")
    assert out == out.lower()
    assert not any(c in out for c in "()[]/")
    assert "pleural effusion" in out and "pa ap" in out


def test_cleaning_modes():
    assert clean_prompt("  Mixed CASE (x)  ", "lower") == "mixed case (x)"
    assert clean_prompt("  Mixed CASE (x)  ", "none") == "  Mixed CASE (x)  "
    with pytest.raises(ChexgenError, match="official, lower, none"):
        clean_prompt("x", "fancy")


def test_demographic_prompt_official_layout():
    rec = Record(id="r1", sex="M", age=71, race="Black", impression="No acute process.")
    assert demographic_prompt(rec) == "sex:Male, age:71.0, race:Black. No acute process."
    rec2 = Record(id="r2", sex="F", age=65.5, race=None, report="Cardiomegaly.")
    assert demographic_prompt(rec2) == "sex:Female, age:65.5. Cardiomegaly."
    cfg = DemographicPromptConfig(include_missing=True)
    assert demographic_prompt(rec2, cfg) == "sex:Female, age:65.5, race:unknown. Cardiomegaly."
    assert demographic_prompt(Record(id="r3", impression="Clear lungs.")) == "Clear lungs."
    assert demographic_prompt(Record(id="r4", sex="O")) == "sex:Other."
    with pytest.raises(ChexgenError, match="r5"):
        demographic_prompt(Record(id="r5"))


def test_demographic_prompts_cleaned():
    recs = [Record(id="a", sex="M", age=71.0, race="Black", impression="Left (small) effusion.")]
    assert demographic_prompts(recs, clean="official") == [
        clean_prompt("sex:Male, age:71.0, race:Black. Left (small) effusion.")
    ]
    assert demographic_prompts(recs)[0].startswith("sex:Male, age:71.0")


def test_8bit_text_encoder_explains_what_is_missing():
    from chexgen.models.presets import TextEncoderSpec
    from chexgen.models.text_encoder_8bit import bitsandbytes_available, load_text_encoder_8bit

    spec = TextEncoderSpec(kind="t5", name_or_path="google/t5-v1_1-xxl", max_length=120, embed_dim=4096)
    with pytest.raises(ChexgenError, match="text_encoder_device='cpu'"):
        load_text_encoder_8bit(spec, device="cpu" if bitsandbytes_available() else "cuda")
    with pytest.raises(ChexgenError, match="not 'minilm'"):
        load_text_encoder_8bit(TextEncoderSpec(kind="minilm", max_length=16, embed_dim=384))
