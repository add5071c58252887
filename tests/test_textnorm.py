"""The text normaliser: the same words give the same text whatever the
encoding, vocalisation or case."""

from __future__ import annotations

import pytest

from hashsvc.base.signals import hamming
from hashsvc.media.textnorm import normalise, shingles, simhash, words

CASES = [
    # presentation forms, as PDF extraction returns them -> letters
    ("ﺑﺴﻢ ﺍﻟﻠﻪ ﺍﻟﺮﺣﻤﻦ ﺍﻟﺮﺣﻴﻢ", "بسم الله الرحمن الرحيم"),
    ("ﻻ ﺇﻟﻪ ﺇﻻ ﺍﻟﻠﻪ", "لا اله الا الله"),  # lam-alef ligatures, hamza under alef
    ("ﷲ", "الله"),  # the Allah ligature
    # harakat, tanween, shadda, sukun, superscript alef
    ("بِسْمِ اللَّهِ الرَّحْمَٰنِ الرَّحِيمِ", "بسم الله الرحمن الرحيم"),
    ("كِتَابٌ جَدِيدًا", "كتاب جديدا"),
    ("هٰذَا", "هذا"),
    # harakat as presentation forms (isolated ones would split the word)
    ("ﺑﺴ\ufe7fﻢ", "بسم"),
    # tatweel
    ("الـــرحـمـــن", "الرحمن"),
    ("بســـــم الله", "بسم الله"),
    # alef forms
    ("أحمد إبراهيم آمن ٱلعلم", "احمد ابراهيم امن العلم"),
    # alef maqsura -> ya, ta marbuta -> ha
    ("على مستشفى المدينة", "علي مستشفي المدينه"),
    ("الدولة الإسلامية", "الدوله الاسلاميه"),
    # Persian / Urdu kaf and ya
    ("کتاب یک", "كتاب يك"),
    ("پاکستان کی", "پاكستان كي"),
    # Arabic-Indic and Eastern Arabic-Indic digits
    ("العدد ١٤٣٥ هـ", "العدد 1435 ه"),
    ("سال ۱۴۰۲", "سال 1402"),
    # Latin: case-fold, full-width forms, ligatures, accents kept
    ("Dabiq ISSUE 15", "dabiq issue 15"),
    ("Ｒｕｍｉｙａｈ", "rumiyah"),
    ("ﬁnal Straße Café", "final strasse café"),
    # whitespace and punctuation collapse; joiners and marks vanish
    ("  قال:  «الحق»،\n\tوالباطل!!  ", "قال الحق والباطل"),
    ("Hello,   world...\u00a0again", "hello world again"),
    ("می\u200cخواهم", "ميخواهم"),  # ZWNJ dropped, Farsi yeh -> ya
    ("a_b-c", "a b c"),
    # a glyph without Unicode (U+FFFD) does not split the word it sits in
    ("الد\ufffdواء", "الدواء"),
    ("", ""),
    ("،؛؟ ...", ""),
]


@pytest.mark.parametrize(("raw", "expected"), CASES)
def test_normal_form(raw: str, expected: str) -> None:
    assert normalise(raw) == expected


def test_vocalised_and_plain_text_normalise_alike() -> None:
    plain = "قال الأمير إن الدولة باقية وتتمدد في العراق والشام"
    vocal = "قَالَ الأَمِيرُ إِنَّ الدَّوْلَةَ بَاقِيَـــةٌ وَتَتَمَدَّدُ فِي العِـرَاقِ وَالشَّـامِ"
    assert normalise(plain) == normalise(vocal)


def test_shingles() -> None:
    assert list(shingles(["a", "b", "c", "d"], 3)) == ["a b c", "b c d"]
    assert list(shingles(["a", "b"], 3)) == ["a b"]
    assert list(shingles([], 3)) == []
    assert words(normalise("Hello, World")) == ["hello", "world"]


def test_simhash_near_for_near_texts_far_for_others() -> None:
    base = [f"w{i % 97} x{i % 89}" for i in range(400)]
    edited = base[:]
    edited[10:14] = ["changed"] * 4
    other = [f"z{i % 83} y{i % 79}" for i in range(400)]

    def sig(ws: list[str]) -> bytes:
        return simhash(list(shingles(ws, 3)), 256)

    assert len(sig(base)) == 32
    assert hamming(sig(base), sig(edited)) < 40
    assert hamming(sig(base), sig(other)) > 90
