"""Text normalisation for hashing: the same words give the same text whatever
the encoding, the typesetting or the vocalisation.

PDF text extraction returns Arabic as presentation forms (one code point per
glyph shape: initial, medial, final, isolated), with or without harakat and
tatweel, and spells the same letter several ways (hamza on or under alef, alef
wasla, Persian kaf and ya). `normalise` maps all of these to one spelling:

1. Unicode NFKC: presentation forms back to letters, full-width Latin to ASCII,
   ligatures (ﻻ, ﷲ, ﬁ) to their letters.
2. Remove tashkeel (harakat, tanween, shadda, sukun, superscript alef, Quranic
   annotation marks), tatweel, and invisible joiners and direction marks.
3. Unify letters: alef forms أ إ آ ٱ -> ا; alef maqsura ى -> ي; ta marbuta
   ة -> ه; Persian/Urdu kaf ک ڪ -> ك; Persian/Urdu ya ی ې ے -> ي.
4. Arabic-Indic ٠-٩ and Eastern Arabic-Indic ۰-۹ digits -> 0-9.
5. Case-fold (Latin and any other cased script).
6. Every run of whitespace and punctuation -> one space; no leading or
   trailing space. What remains is words (letters and digits) separated by
   single spaces.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterator

import numpy as np

# Tashkeel: Quranic signs 0610-061A, harakat/tanween/shadda/sukun and the other
# combining marks 064B-065F, superscript (dagger) alef 0670, Quranic annotation
# marks 06D6-06DC, 06DF-06E8 (with the small waw and ya
# that lengthen a vowel), 06EA-06ED, and the Arabic Extended-A
# combining marks 08D3-08FF that some fonts' extraction produces.
_TASHKEEL = (
    [*range(0x0610, 0x061B), *range(0x064B, 0x0660), 0x0670]
    + [*range(0x06D6, 0x06DD), *range(0x06DF, 0x06E9)]
    + [*range(0x06EA, 0x06EE), *range(0x08D3, 0x0900)]
)
_TATWEEL = 0x0640
# Zero-width joiners and non-joiners (Persian writes ZWNJ inside words, PDF
# extraction usually drops it), direction marks, soft hyphen, BOM.
_INVISIBLE = [0x200B, 0x200C, 0x200D, 0x200E, 0x200F, 0x061C, 0x00AD, 0xFEFF]
# A glyph the PDF gives no Unicode for (often a mark, or a mark stacked on
# shadda) is extracted as U+FFFD; dropping it keeps the word whole.
_UNKNOWN_GLYPH = 0xFFFD
# The presentation forms of the harakat: NFKC turns the isolated ones into a
# space and a mark, which would split the word they sit on. Removed first.
_HARAKAT_FORMS = dict.fromkeys(range(0xFE70, 0xFE80))

_LETTER_MAP = {
    # alef with hamza above / below, alef with madda, alef wasla -> bare alef
    0x0623: "\u0627",
    0x0625: "\u0627",
    0x0622: "\u0627",
    0x0671: "\u0627",
    0x0649: "\u064a",  # alef maqsura -> ya
    0x0629: "\u0647",  # ta marbuta -> ha
    0x06A9: "\u0643",  # Persian keheh -> kaf
    0x06AA: "\u0643",  # swash kaf -> kaf
    0x06CC: "\u064a",  # Farsi yeh -> ya
    0x06D0: "\u064a",  # Pashto/Uyghur yeh -> ya
    0x06D2: "\u064a",  # Urdu yeh barree -> ya
}
_DIGITS = {0x0660 + d: str(d) for d in range(10)} | {0x06F0 + d: str(d) for d in range(10)}

_TABLE = (
    dict.fromkeys([*_TASHKEEL, _TATWEEL, *_INVISIBLE, _UNKNOWN_GLYPH]) | _LETTER_MAP | _DIGITS  # type: ignore[arg-type]
)

# Anything that is not a letter or digit separates words. `\w` also keeps
# combining marks out (they are not alphanumeric), which is fine after NFKC has
# composed Latin accents; the underscore is punctuation here.
_SEPARATORS = re.compile(r"[\W_]+")


def normalise(text: str) -> str:
    """The canonical form of `text` for hashing (see the module docstring)."""
    text = unicodedata.normalize("NFKC", text.translate(_HARAKAT_FORMS))
    # NFKC composes alef + hamza into أ, so the letter map sees one code point;
    # removing marks before it would leave the decomposed hamza's base alone.
    text = text.translate(_TABLE)
    text = text.casefold()
    return _SEPARATORS.sub(" ", text).strip()


def words(text: str) -> list[str]:
    """The words of a normalised text."""
    return text.split()


def shingles(word_list: list[str], size: int) -> Iterator[str]:
    """Overlapping runs of `size` words, joined by a space. A text shorter
    than `size` words is one shingle (so a short text still has a signal)."""
    if len(word_list) <= size:
        if word_list:
            yield " ".join(word_list)
        return
    for start in range(len(word_list) - size + 1):
        yield " ".join(word_list[start : start + size])


# ------------------------------------------------------------------ text hashes


def text_sha256(normalised: str) -> bytes:
    return hashlib.sha256(normalised.encode("utf-8")).digest()


def simhash(shingle_list: list[str], bits: int) -> bytes:
    """Charikar's SimHash of a bag of shingles: each bit is the majority vote
    of that bit over the shingles' own hashes, so texts sharing most shingles
    differ in few bits. `bits` is a multiple of 8 (at most 512)."""
    nbytes = bits // 8
    digests = b"".join(
        hashlib.blake2b(s.encode("utf-8"), digest_size=nbytes).digest() for s in shingle_list
    )
    votes = np.unpackbits(np.frombuffer(digests, np.uint8).reshape(-1, nbytes), axis=1)
    # ties (an even count split evenly) go to 0, the same on both sides
    return np.packbits(votes.sum(axis=0, dtype=np.int64) * 2 > len(shingle_list)).tobytes()
