"""Generated PDFs for tests and bench/pdf.py: publications in Arabic or English
typeset with PyMuPDF's Story (real shaping with Noto Naskh Arabic), the ways
they are re-circulated, and hostile files."""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pymupdf
from PIL import Image, ImageEnhance, ImageFilter

from hashsvc.base.signals import Signal
from hashsvc_testing import vectors

SHARED = vectors.VECTORS.parent
PHOTO_DIR = vectors.VECTORS / "pdqhash-python" / "images"  # read through photo_file()
PHOTOS = sorted(p.name for p in PHOTO_DIR.glob("*.jpg"))
FONT_DIR = Path("/usr/share/fonts/truetype/noto")

# News and sermon prose vocabulary; every generated document also opens with
# the same basmala and closes with the same formula, as real ones do, so that
# unrelated documents share boilerplate.
ARABIC_WORDS = """
الله رسول المسلمين الدولة الخلافة المدينة الجيش الأرض السماء الناس القوم الحرب السلام
الإيمان الكفر الجهاد الصبر النصر العدو الأمة الإسلام القرآن الحديث الشيخ الأمير الكتاب
الرسالة الخبر الأخبار الولاية العراق الشام اليمن مصر ليبيا خراسان الصومال نيجيريا سيناء
قال كان يكون جاء ذهب رأى علم عمل قاتل فتح دخل خرج بايع هاجر صلى صام كتب قرأ سمع أطاع
في من إلى على عن مع بعد قبل حتى إذا إن أن لم لن قد ثم بل لكن هذا هذه ذلك تلك الذي التي
الذين كل بعض غير عند بين فوق تحت أمام خلف حول منذ يوم ليلة شهر سنة عام ساعة وقت زمان
الشهداء المجاهدين الإخوة الأخوات الأبناء الآباء العلماء الطلاب المعلمين الأطباء التجار
الصحيفة المجلة العدد المقال الصورة الكلمة الخطبة البيان الإصدار المكتب الإعلامي المؤسسة
عظيم كبير صغير جديد قديم أول آخر كثير قليل قريب بعيد طويل قصير حق باطل خير شر جميل
السوق المسجد البيت المدرسة المستشفى الطريق الجسر النهر البحر الجبل الصحراء القرية
الماء الخبز القمح الزيت التمر اللحم الملح الدواء الكهرباء الوقود السلاح الرصاص المال
يقاتلون يعملون يكتبون يقرؤون يسمعون يرون يعلمون يخرجون يدخلون يهاجرون ينصرون يصبرون
إلى على أيها يا أيتها فإن وإن ولا وما ومن وفي وعلى فلما فلم وقد ولقد إنما كأن لعل ليت
مؤمنة مسلمة طائفة فرقة قبيلة عشيرة جماعة كتيبة سرية غزوة معركة هدنة صلح عهد ميثاق
""".split()
ENGLISH_WORDS = """
the of and to in is was for that with as on by at from his her their they this which
people city army land state war peace faith victory enemy nation book message news
province desert river bridge market mosque school hospital road village mountain sea
said came went saw knew worked fought opened entered left pledged travelled wrote read
great small new old first last many few near far long short true false good bad
brothers sisters sons fathers scholars students teachers doctors traders soldiers
water bread wheat oil dates meat salt medicine electricity fuel weapons money time
year month day night hour season winter summer spring autumn morning evening
issue article picture statement office media foundation council assembly tribe
will would could should must may might shall can cannot never always often sometimes
""".split()
OPENING = {
    "ar": "بسم الله الرحمن الرحيم",
    "en": "In the name of God, the Most Gracious, the Most Merciful",
}
CLOSING = {
    "ar": "والحمد لله رب العالمين",
    "en": "And all praise is due to God, Lord of the worlds",
}
HARAKAT = ["\u064e", "\u064f", "\u0650", "\u0652", "\u0651\u064e", "\u064b"]
# Letters that do not join to the next one: no tatweel after them.
NON_JOINING = set("اأإآدذرزوؤةىء")


@dataclass(frozen=True)
class Publication:
    """What a document says and shows; typeset by `typeset`."""

    language: str  # "ar" or "en"
    title: str
    paragraphs: tuple[str, ...]
    photos: tuple[str, ...] = ()  # file names in photo_dir, one per few paragraphs
    photo_dir: str = str(PHOTO_DIR)
    font_size: float = 12.0
    margin: float = 50.0
    page: str = "a4"


def photo_file(name: str) -> Path:
    """A photo of ../shared/vectors (a failure naming the folder without it)."""
    vectors.require()
    return PHOTO_DIR / name


def publication(
    seed: int,
    language: str = "ar",
    paragraphs: int = 12,
    photos: tuple[str, ...] = (),
    photo_dir: Path = PHOTO_DIR,
) -> Publication:
    rng = random.Random(seed)
    vocab = ARABIC_WORDS if language == "ar" else ENGLISH_WORDS

    def sentence() -> str:
        return " ".join(rng.choice(vocab) for _ in range(rng.randint(6, 16))) + "."

    body = [" ".join(sentence() for _ in range(rng.randint(3, 6))) for _ in range(paragraphs)]
    title = " ".join(rng.choice(vocab) for _ in range(4))
    paras = (OPENING[language], *body, CLOSING[language])
    return Publication(language, title, paras, tuple(photos), photo_dir=str(photo_dir))


def typeset(pub: Publication) -> bytes:
    """The publication as a PDF: title, paragraphs flowing over as many pages
    as they need, a photo after every third paragraph."""
    rtl = pub.language == "ar"
    family = "naskh" if rtl else "serif"
    css = (
        "@font-face {font-family: naskh; src: url(NotoNaskhArabic-Regular.ttf);}"
        "@font-face {font-family: serif; src: url(NotoSerif-Regular.ttf);}"
        f"body {{font-family: {family}; font-size: {pub.font_size}px;"
        f" text-align: justify; direction: {'rtl' if rtl else 'ltr'};}}"
        "h1 {text-align: center;}"
    )
    attr = ' dir="rtl"' if rtl else ""
    html = [f"<h1{attr}>{pub.title}</h1>"]
    photos = list(pub.photos)
    if photos and pub.photo_dir == str(PHOTO_DIR):
        vectors.require()
    for n, para in enumerate(pub.paragraphs):
        html.append(f"<p{attr}>{para}</p>")
        if photos and n % 3 == 1:
            html.append(
                f'<p style="text-align:center"><img src="{photos.pop(0)}" width="60%"/></p>'
            )
    archive = pymupdf.Archive()
    archive.add(str(FONT_DIR))
    if pub.photos:  # the folder is read only for photos (../shared/vectors by default)
        archive.add(pub.photo_dir)
    story = pymupdf.Story(html="".join(html), user_css=css, archive=archive)
    out = io.BytesIO()
    writer = pymupdf.DocumentWriter(out)
    mediabox = pymupdf.paper_rect(pub.page)
    where = mediabox + (pub.margin, pub.margin, -pub.margin, -pub.margin)
    more = True
    while more:
        device = writer.begin_page(mediabox)
        more, _ = story.place(where)
        story.draw(device)
        writer.end_page()
    writer.close()
    return out.getvalue()


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def brute_force_pairs(
    query: list[Signal], known: list[Signal], radius: int = 80
) -> list[tuple[Signal, Signal, int]]:
    """What the index search would find: every (query, known) pair of the same
    kind within `radius` bits (exact kinds: equal values)."""
    found = []
    # local_features blobs are found by the feature index and verified, not
    # by a distance (hashsvc/matching/local_geometry.py)
    for kind in {k.kind for k in known} - {"local_features"}:
        qs = [q for q in query if q.kind == kind]
        ks = [k for k in known if k.kind == kind]
        if not qs:
            continue
        qa = np.frombuffer(b"".join(q.value for q in qs), np.uint8).reshape(len(qs), -1)
        ka = np.frombuffer(b"".join(k.value for k in ks), np.uint8).reshape(len(ks), -1)
        distances = _POPCOUNT[qa[:, None, :] ^ ka[None, :, :]].sum(axis=2, dtype=np.int32)
        limit = radius if kind in ("pdq", "text_simhash") else 0
        for i, j in zip(*np.nonzero(distances <= limit), strict=True):
            found.append((qs[i], ks[j], int(distances[i, j])))
    return found


# ------------------------------------------------------------------ transforms


def resave(pdf: bytes) -> bytes:
    """Re-saved by another tool: objects renumbered, streams recompressed."""
    with pymupdf.open(stream=pdf, filetype="pdf") as doc:
        doc.set_metadata({"producer": "another tool", "title": "re-saved"})
        return doc.tobytes(garbage=4, deflate=True, clean=True)


def retypeset(pub: Publication, font_size: float = 15.0, margin: float = 70.0) -> bytes:
    """Same text and photos, different font size and margins: new page breaks."""
    return typeset(replace(pub, font_size=font_size, margin=margin))


def vocalised(pub: Publication, seed: int = 0) -> Publication:
    """Harakat on a third of the letters and tatweel in a fifth of the words."""
    rng = random.Random(seed)

    def word(w: str) -> str:
        out = []
        for i, ch in enumerate(w):
            out.append(ch)
            if "\u0621" <= ch <= "\u064a" and rng.random() < 0.35:
                out.append(rng.choice(HARAKAT))
            if i + 1 < len(w) and ch not in NON_JOINING and rng.random() < 0.06:
                out.append("\u0640" * rng.randint(1, 3))
        return "".join(out)

    def text(t: str) -> str:
        return " ".join(word(w) for w in t.split(" "))

    return replace(pub, title=text(pub.title), paragraphs=tuple(text(p) for p in pub.paragraphs))


def page_subset(pdf: bytes, pages: list[int]) -> bytes:
    """The given pages (0-based), in that order."""
    with pymupdf.open(stream=pdf, filetype="pdf") as doc:
        doc.select(pages)
        return doc.tobytes(garbage=3, deflate=True)


def with_cover(pdf: bytes, cover: Publication) -> bytes:
    """A new first page (the first page of `cover`), then the document."""
    with (
        pymupdf.open(stream=typeset(cover), filetype="pdf") as front,
        pymupdf.open(stream=pdf, filetype="pdf") as doc,
    ):
        doc.insert_pdf(front, from_page=0, to_page=0, start_at=0)
        return doc.tobytes(garbage=3, deflate=True)


def scanned(pdf: bytes, dpi: int = 100, skew: float = 0.6, quality: int = 60) -> bytes:
    """Printed and scanned: each page a grey, slightly skewed, blurred JPEG on a
    page of the same size, with no text layer."""
    out = pymupdf.open()
    with pymupdf.open(stream=pdf, filetype="pdf") as doc:
        for page in doc:
            pix = page.get_pixmap(dpi=dpi, colorspace="gray")
            img = Image.frombytes("L", (pix.width, pix.height), pix.samples)
            img = img.rotate(skew, resample=Image.BILINEAR, fillcolor=255)
            img = img.filter(ImageFilter.GaussianBlur(0.6))
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=quality)
            new = out.new_page(width=page.rect.width, height=page.rect.height)
            new.insert_image(new.rect, stream=buf.getvalue())
    data = out.tobytes(garbage=3, deflate=True)
    out.close()
    return data


# ------------------------------------------------------------------ hostile files


def encrypted(pdf: bytes) -> bytes:
    with pymupdf.open(stream=pdf, filetype="pdf") as doc:
        return doc.tobytes(
            encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="secret", owner_pw="owner"
        )


def broken_xref(pdf: bytes) -> bytes:
    """Cross-reference offsets all wrong and startxref pointing nowhere: a
    reader must rebuild the table by scanning the objects."""
    head, sep, tail = pdf.rpartition(b"startxref")
    body = head
    xref_at = body.rfind(b"xref")
    if xref_at > 0:
        table = bytearray(body[xref_at:])
        for i, byte in enumerate(table):
            if 0x30 <= byte <= 0x39 and i > 20:
                table[i] = 0x37
        body = body[:xref_at] + bytes(table)
    return body + sep + b"\n999999999\n%%EOF\n"


def many_pages(count: int) -> bytes:
    """A file of `count` pages sharing one content stream (small on disk)."""
    kids = b" ".join(b"%d 0 R" % (n + 4) for n in range(count))
    page = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 3 0 R >>"
    return raw_pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, count),
            _CONTENT,
            *[page] * count,
        ]
    )


def absurd_page(width: float, height: float) -> bytes:
    """One normal page and one page of the given size in points, written by
    hand because PyMuPDF itself refuses to create pages past PDF's limits."""
    with pymupdf.open() as doc:
        doc.new_page().insert_text((72, 72), "a normal page", fontsize=12)
        page = doc.new_page()
        doc.xref_set_key(page.xref, "MediaBox", f"[0 0 {width} {height}]")
        return doc.tobytes()


def raw_pdf(objects: list[bytes]) -> bytes:
    """A PDF written by hand from object bodies (object n is objects[n - 1],
    object 1 the catalog), with a correct cross-reference table: for
    structures PyMuPDF refuses to create."""
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % at for at in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


_PAGE = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R >>"
_CONTENT = b"<< /Length 44 >>\nstream\nBT /F1 12 Tf 72 720 Td (a page of text) Tj ET\nendstream"


def deep_nesting(depth: int = 200_000) -> bytes:
    """A page whose dictionary holds an array nested `depth` deep."""
    deep = b"[" * depth + b"]" * depth
    page = _PAGE[:-2] + b" /Deep " + deep + b" >>"
    return raw_pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            page,
            _CONTENT,
        ]
    )


def deep_page_tree(depth: int = 5_000) -> bytes:
    """A page tree `depth` levels deep with one page at the bottom."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>"]
    for level in range(depth):
        parent = b" /Parent %d 0 R" % (level + 1) if level else b""
        objects.append(b"<< /Type /Pages /Kids [%d 0 R] /Count 1%s >>" % (level + 3, parent))
    content_no = depth + 3
    objects.append(
        b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 595 842] /Contents %d 0 R >>"
        % (depth + 1, content_no)
    )
    objects.append(_CONTENT)
    return raw_pdf(objects)


def cyclic_page_tree() -> bytes:
    """A page tree whose /Kids contains its own root, and a page whose parent
    chain loops."""
    return raw_pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R 2 0 R] /Count 2 /Parent 2 0 R >>",
            _PAGE,
            _CONTENT,
        ]
    )


def slow_text_page(operators: int = 400_000) -> bytes:
    """One page whose content stream shows many tiny text runs: slow to extract."""
    with pymupdf.open() as doc:
        page = doc.new_page()
        page.insert_text((72, 72), "x", fontsize=1)
        font = [k for k in doc.get_page_fonts(0)][0][4]
        run = b"".join(
            b"BT /%s 1 Tf %d %d Td (ab) Tj ET\n" % (font.encode(), i % 500, i % 700)
            for i in range(operators)
        )
        xref = page.get_contents()[0]
        doc.update_stream(xref, run)
        return doc.tobytes(deflate=True)


# ------------------------------------------------------------------ templates

# One agency's page template: a dark header band with its name, a photo in a
# fixed frame at the top, text below, a footer band. Unrelated documents of the
# same agency share it and nothing else.
TEMPLATE_BAND = (0.06, 0.22, 0.16)
TEMPLATE_NAME = {"ar": "مؤسسة الإعلام - إصدار", "en": "Media Foundation - Release"}


def dark_photos(photo_dir: Path, names: list[str]) -> list[str]:
    """Dark, low-contrast copies ("dark-<name>", beside the originals) of
    photos in photo_dir: in a template's frame they let the frame and bands
    dominate the page's look, as night shots and smoke do in real ones."""
    dark = []
    for name in names:
        img = Image.open(Path(photo_dir) / name).convert("RGB")
        img = ImageEnhance.Contrast(ImageEnhance.Brightness(img).enhance(0.3)).enhance(0.3)
        img.save(Path(photo_dir) / f"dark-{name}", quality=90)
        dark.append(f"dark-{name}")
    return dark


def template_document(
    seed: int,
    photos: tuple[str, ...],
    language: str = "ar",
    photo_dir: Path = PHOTO_DIR,
    paragraphs_per_page: int = 4,
) -> bytes:
    """One page per photo, all in the template: the photo in the frame at the
    top, paragraphs of the publication `seed` below it."""
    per_page = paragraphs_per_page
    pub = publication(seed, language, paragraphs=per_page * len(photos), photo_dir=photo_dir)
    rtl = language == "ar"
    family = "naskh" if rtl else "serif"
    css = (
        "@font-face {font-family: naskh; src: url(NotoNaskhArabic-Regular.ttf);}"
        "@font-face {font-family: serif; src: url(NotoSerif-Regular.ttf);}"
        f"body {{font-family: {family}; font-size: 12px; text-align: justify;"
        f" direction: {'rtl' if rtl else 'ltr'};}}"
        "h2 {color: white; text-align: center;}"
    )
    attr = ' dir="rtl"' if rtl else ""
    archive = pymupdf.Archive()
    archive.add(str(FONT_DIR))
    doc = pymupdf.open()
    body = pub.paragraphs[1:-1]
    for n, photo in enumerate(photos):
        page = doc.new_page(width=595, height=842)
        page.draw_rect(pymupdf.Rect(0, 0, 595, 80), color=None, fill=TEMPLATE_BAND)
        page.insert_htmlbox(
            pymupdf.Rect(40, 15, 555, 75),
            f"<h2{attr}>{TEMPLATE_NAME[language]}</h2>",
            css=css,
            archive=archive,
        )
        frame = pymupdf.Rect(70, 100, 525, 400)
        page.draw_rect(frame + (-8, -8, 8, 8), color=None, fill=TEMPLATE_BAND)
        page.insert_image(frame, filename=str(Path(photo_dir) / photo), keep_proportion=False)
        text = "".join(f"<p{attr}>{p}</p>" for p in body[per_page * n : per_page * (n + 1)])
        page.insert_htmlbox(pymupdf.Rect(50, 420, 545, 790), text, css=css, archive=archive)
        page.draw_rect(pymupdf.Rect(0, 805, 595, 842), color=None, fill=TEMPLATE_BAND)
    out = doc.tobytes(garbage=3, deflate=True)
    doc.close()
    return out
