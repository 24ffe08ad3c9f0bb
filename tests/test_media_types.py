"""Media types: the type comes from the bytes (markup and programs refused in every disguise),
limits per kind with their overrides, stickers, thumbnails that survive hostile images, sizes
for people and filenames that cannot lie about what they hold."""
from __future__ import annotations

import io
import resource
import struct
import warnings
import zipfile
import zlib

import pytest
from PIL import Image

from chat import media_types as mt
from chat.media_types import AUDIO, DOCUMENT, IMAGE, STICKER, VIDEO, Refused

MB = 1024 * 1024


# Real samples, made here rather than kept as opaque files.

def image_bytes(fmt: str, size=(40, 30), mode="RGB", color="red", **save) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, color).save(out, fmt, **save)
    return out.getvalue()


def animated(fmt: str, colors=("red", "blue")) -> bytes:
    frames = [Image.new("RGB", (60, 40), color) for color in colors]
    out = io.BytesIO()
    frames[0].save(out, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return out.getvalue()


def ogg_opus() -> bytes:
    """The first page of a WhatsApp voice note: an Ogg page carrying the OpusHead packet."""
    head = b"OpusHead" + struct.pack("<BBHIhB", 1, 1, 312, 48000, 0, 0)
    page = struct.pack("<4sBBqIII", b"OggS", 0, 2, 0, 0x1234, 0, 0) + bytes([1, len(head)]) + head
    return page


def ftyp(major: bytes, *compatible: bytes) -> bytes:
    """An ISO-BMFF file's first box (ftyp), then an empty free box, as MP4/M4A/3GP/MOV begin."""
    body = major + b"\0\0\0\0" + b"".join(compatible)
    return struct.pack(">I", 8 + len(body)) + b"ftyp" + body + b"\0\0\0\x08free"


def zip_bytes(*names: str) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name in names:
            archive.writestr(name, "<x/>")
    return out.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int, bit_depth=8, color_type=2, idat: bytes = b"") -> bytes:
    """A PNG whose IHDR (with a correct CRC) claims these dimensions, whatever follows."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    body = png_chunk(b"IHDR", ihdr) + (png_chunk(b"IDAT", idat) if idat else b"")
    return b"\x89PNG\r\n\x1a\n" + body + png_chunk(b"IEND", b"")


JPEG = image_bytes("JPEG")
PNG = image_bytes("PNG")
WEBP = image_bytes("WEBP")
GIF_ANIMATED = animated("GIF")
WEBP_ANIMATED = animated("WEBP")
PNG_ANIMATED = animated("PNG")
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
DOCX = zip_bytes("[Content_Types].xml", "_rels/.rels", "word/document.xml")
XLSX = zip_bytes("[Content_Types].xml", "_rels/.rels", "xl/workbook.xml")
PPTX = zip_bytes("[Content_Types].xml", "_rels/.rels", "ppt/presentation.xml")
ZIP = zip_bytes("notes.txt")
ELF = b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 56
PE = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff" + b"\x00" * 48
WEBM = (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\xf7\x81\x01\x42\xf2\x81\x04\x42\xf3\x81\x08"
        b"\x42\x82\x84webm\x42\x87\x81\x04\x42\x85\x81\x02")
WAV = b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00\x40\x1f\x00\x00" + b"\x00" * 16
MP3 = b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x00" + b"\x00" * 32
AMR = b"#!AMR\n" + b"\x3c" + b"\x00" * 31
TEXT = "Olá! A encomenda chegou? 👋\r\n\tObrigado.\f\n".encode()
CSV = b"name,phone,city\nAna,+351912345678,Lisboa\nRui,+351934567890,Porto\n"


@pytest.mark.parametrize("data, content_type, kind", [
    (JPEG, "image/jpeg", IMAGE),
    (PNG, "image/png", IMAGE),
    (WEBP, "image/webp", IMAGE),
    (GIF_ANIMATED, "image/gif", IMAGE),
    (WEBP_ANIMATED, "image/webp", IMAGE),
    (PNG_ANIMATED, "image/apng", IMAGE),  # filetype's name for an animated PNG
    (ogg_opus(), "audio/ogg", AUDIO),
    (MP3, "audio/mpeg", AUDIO),
    (WAV, "audio/x-wav", AUDIO),
    (AMR, "audio/amr", AUDIO),
    (b"\xff\xf1\x50\x80\x02\x1f\xfc" + b"\x00" * 16, "audio/aac", AUDIO),  # ADTS
    (ftyp(b"M4A ", b"M4A ", b"mp42", b"isom"), "audio/mp4", AUDIO),
    (ftyp(b"isom", b"isom", b"iso2", b"avc1", b"mp41"), "video/mp4", VIDEO),
    (ftyp(b"mp42", b"mp42", b"isom"), "video/mp4", VIDEO),
    (ftyp(b"mp42", b"M4A ", b"mp42"), "video/mp4", VIDEO),  # an m4a branded mp42: filetype says video
    (ftyp(b"3gp4", b"3gp4", b"3gp5"), "video/3gpp", VIDEO),  # filetype misses it; our fallback
    (ftyp(b"3gp4", b"isom", b"3gp4"), "video/mp4", VIDEO),
    (ftyp(b"qt  ", b"qt  "), "video/quicktime", VIDEO),
    (WEBM, "video/webm", VIDEO),  # audio-only WebM too: filetype cannot tell them apart
    (PDF, "application/pdf", DOCUMENT),
    (DOCX, "application/vnd.openxmlformats-officedocument.wordprocessingml.document", DOCUMENT),
    (XLSX, "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", DOCUMENT),
    (PPTX, "application/vnd.openxmlformats-officedocument.presentationml.presentation", DOCUMENT),
    (ZIP, "application/zip", DOCUMENT),
    (TEXT, "text/plain", DOCUMENT),
    (CSV, "text/plain", DOCUMENT),  # text is text: sniffing does not guess at CSV
    (b"\xef\xbb\xbfcom BOM\n", "text/plain", DOCUMENT),
    (b"<3 you, see you at 5\n", "text/plain", DOCUMENT),
    (b"Reply with <b>bold</b> later in the text\n", "text/plain", DOCUMENT),
])
def test_a_file_we_keep_is_typed_by_its_bytes(data, content_type, kind):
    assert mt.sniff(data) == content_type
    assert content_type in mt.ALLOWED
    assert mt.check(data) == (content_type, kind)


@pytest.mark.parametrize("data, content_type", [
    (b"<!DOCTYPE html><html><body><script>alert(1)</script>", "text/html"),
    (b"<!doctype HTML>\n<title>x</title>", "text/html"),
    (b"  <html>\n<body>hi</body></html>", "text/html"),
    (b"\r\n\t<HTML><HEAD>", "text/html"),
    (b"\n" * 5000 + b"<html>", "text/html"),  # however much whitespace comes first
    (b"<script>fetch('/api/conversations')</script>", "text/html"),
    (b"<body onload=alert(1)>", "text/html"),
    (b"<iframe src=//evil.example>", "text/html"),
    (b"<!-- note --><p>hello", "text/html"),
    (b"<b>bold", "text/html"),
    (b"\xef\xbb\xbf<svg xmlns='http://www.w3.org/2000/svg' onload='alert(1)'/>", "image/svg+xml"),
    (b"<?xml version='1.0' encoding='UTF-8'?>\n<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml"),
    (b"<?xml version='1.0'?><!DOCTYPE svg PUBLIC '-//W3C//DTD SVG 1.1//EN' 'x'>\n<svg/>", "image/svg+xml"),
    (b"<?xml version='1.0'?><!-- made by hand -->\n<svg:svg xmlns:svg='http://www.w3.org/2000/svg'/>",
     "image/svg+xml"),
    (b"<?xml version='1.0'?><html xmlns='http://www.w3.org/1999/xhtml'><script/>", "text/html"),
    (b"<?xml version='1.0'?><note><to>Ana</to></note>", "application/xml"),
])
def test_markup_is_named_and_refused_in_every_disguise(data, content_type):
    assert mt.sniff(data) == content_type
    with pytest.raises(Refused) as refused:
        mt.check(data, declared_kind=DOCUMENT)
    assert refused.value.reason == f"file type not allowed ({content_type})"


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"),
    (ELF, "file type not allowed (application/x-executable)"),
    (PE, "file type not allowed (application/x-msdownload)"),
    (b"\x00\x01\x02\x03 random binary \xfe\xfd", "file type not allowed (unknown)"),
    ("caf\xe9 em latin-1".encode("latin-1"), "file type not allowed (unknown)"),  # not UTF-8
    (b"text with an escape \x1b[31m red", "file type not allowed (unknown)"),
    (b"text with a NUL \x00 inside", "file type not allowed (unknown)"),
    (b"\x1f\x8b\x08\x00" + b"\x00" * 16, "file type not allowed (application/gzip)"),
    (b"{\\rtf1\\ansi hello}", "file type not allowed (application/rtf)"),
])
def test_what_we_do_not_keep_is_refused_with_a_reason(data, reason):
    with pytest.raises(Refused) as refused:
        mt.check(data)
    assert refused.value.reason == reason
    assert str(refused.value) == reason


@pytest.mark.parametrize("content_type", [
    "text/html", "image/svg+xml", "application/xhtml+xml", "application/xml", "text/xml",
    "application/javascript", "text/javascript", "application/x-msdownload",
    "application/x-executable", "application/java-archive", "application/x-sh",
])
def test_no_markup_script_or_program_is_ever_allowed(content_type):
    assert content_type not in mt.ALLOWED


@pytest.mark.parametrize("content_type, kind", [
    ("image/jpeg", IMAGE), ("image/webp", IMAGE), ("IMAGE/PNG", IMAGE),
    ("audio/ogg; codecs=opus", AUDIO), ("audio/mp4", AUDIO),
    ("video/mp4", VIDEO), ("video/3gpp", VIDEO),
    ("application/pdf", DOCUMENT), ("text/plain", DOCUMENT), ("application/zip", DOCUMENT),
    ("nonsense", DOCUMENT),
])
def test_the_kind_follows_the_type(content_type, kind):
    assert mt.kind_of(content_type) == kind


def test_the_declared_kind_never_changes_the_type():
    assert mt.check(PDF, declared_kind=IMAGE) == ("application/pdf", DOCUMENT)
    assert mt.check(JPEG, declared_kind=DOCUMENT) == ("image/jpeg", IMAGE)
    assert mt.check(ogg_opus(), declared_kind=VIDEO) == ("audio/ogg", AUDIO)


@pytest.mark.parametrize("data, declared, expected", [
    (WEBP, STICKER, ("image/webp", STICKER)),
    (WEBP_ANIMATED, STICKER, ("image/webp", STICKER)),
    (PNG, STICKER, ("image/png", STICKER)),
    (JPEG, STICKER, ("image/jpeg", IMAGE)),  # not a sticker format: an image like any other
    (PDF, STICKER, ("application/pdf", DOCUMENT)),
    (WEBP, IMAGE, ("image/webp", IMAGE)),
    (WEBP, None, ("image/webp", IMAGE)),
])
def test_a_sticker_is_a_declared_sticker_in_a_sticker_format(data, declared, expected):
    assert mt.check(data, declared_kind=declared) == expected


def padded(data: bytes, size: int) -> bytes:
    return data + b"\x00" * (size - len(data))


def test_limits_are_whatsapps_per_kind():
    assert mt.LIMITS == {IMAGE: 5 * MB, AUDIO: 16 * MB, VIDEO: 16 * MB, DOCUMENT: 100 * MB,
                         STICKER: 500 * 1024}
    assert set(mt.LIMITS) == set(mt.KINDS)
    assert mt.limit_for(IMAGE) == 5 * MB
    assert mt.limit_for(None) == mt.limit_for("hologram") == 100 * MB
    assert mt.max_limit() == 100 * MB


def test_an_image_over_five_megabytes_is_refused_naming_the_limit():
    with pytest.raises(Refused) as refused:
        mt.check(padded(JPEG, 6 * MB))
    assert refused.value.reason == "attachment too large (6 MB; images may be at most 5 MB)"
    assert mt.check(padded(JPEG, 5 * MB)) == ("image/jpeg", IMAGE)  # exactly the limit is fine


def test_one_byte_over_never_reads_as_the_limit_itself():
    with pytest.raises(Refused) as refused:
        mt.check(padded(JPEG, 5 * MB + 1))
    assert refused.value.reason == "attachment too large (over 5 MB; images may be at most 5 MB)"


def test_a_sticker_is_held_to_the_sticker_limit_and_a_pdf_to_the_document_one():
    with pytest.raises(Refused) as refused:
        mt.check(padded(WEBP, 600 * 1024), declared_kind=STICKER)
    assert refused.value.reason == "attachment too large (600 KB; stickers may be at most 500 KB)"
    assert mt.check(padded(WEBP, 600 * 1024), declared_kind=IMAGE) == ("image/webp", IMAGE)
    assert mt.check(padded(PDF, 20 * MB), declared_kind=IMAGE) == ("application/pdf", DOCUMENT)


def test_config_raises_or_lowers_a_limit():
    raised = {"ATTACHMENT_MAX_BYTES_IMAGE": 10 * MB}
    assert mt.limit_for(IMAGE, raised) == 10 * MB
    assert mt.check(padded(JPEG, 6 * MB), config=raised) == ("image/jpeg", IMAGE)

    lowered = {"ATTACHMENT_MAX_BYTES_IMAGE": "1024"}  # as the environment gives it
    with pytest.raises(Refused) as refused:
        mt.check(padded(JPEG, 2048), config=lowered)
    assert refused.value.reason == "attachment too large (2 KB; images may be at most 1 KB)"

    unset = {"ATTACHMENT_MAX_BYTES_IMAGE": None, "ATTACHMENT_MAX_BYTES_AUDIO": ""}
    assert mt.limit_for(IMAGE, unset) == 5 * MB and mt.limit_for(AUDIO, unset) == 16 * MB
    assert mt.limit_for("hologram", {"ATTACHMENT_MAX_BYTES_DOCUMENT": 50 * MB}) == 50 * MB


def test_the_first_cap_on_a_download_is_the_largest_limit():
    assert mt.max_limit({"ATTACHMENT_MAX_BYTES_VIDEO": 200 * MB}) == 200 * MB
    assert mt.max_limit({"ATTACHMENT_MAX_BYTES_DOCUMENT": 20 * MB}) == 20 * MB  # video's 16 MB is below
    assert mt.max_limit({"ATTACHMENT_MAX_BYTES_DOCUMENT": 10 * MB}) == 16 * MB


# Thumbnails

def open_thumbnail(data: bytes) -> Image.Image:
    thumb = mt.thumbnail(data)
    assert thumb is not None
    image = Image.open(io.BytesIO(thumb))
    assert image.format == "WEBP"
    return image


@pytest.mark.parametrize("size, expected", [
    ((1600, 900), (320, 180)),
    ((900, 1600), (180, 320)),
    ((1000, 1000), (320, 320)),
    ((100, 50), (100, 50)),  # never upscaled
])
def test_a_thumbnail_keeps_the_aspect_within_the_longer_side(size, expected):
    assert open_thumbnail(image_bytes("JPEG", size=size)).size == expected


@pytest.mark.parametrize("data", [
    image_bytes("PNG", size=(800, 400)),
    image_bytes("PNG", size=(800, 400), mode="P"),
    image_bytes("PNG", size=(800, 400), mode="L"),
    image_bytes("WEBP", size=(800, 400)),
    image_bytes("GIF", size=(800, 400)),
    image_bytes("JPEG", size=(800, 400), mode="CMYK", color=(0, 255, 255, 0)),
])
def test_every_image_format_we_keep_makes_a_thumbnail(data):
    image = open_thumbnail(data)
    assert image.size == (320, 160) and image.mode in ("RGB", "RGBA")


def test_a_transparent_image_keeps_its_transparency():
    image = open_thumbnail(image_bytes("PNG", size=(400, 400), mode="RGBA", color=(255, 0, 0, 0)))
    assert image.mode == "RGBA" and image.getpixel((10, 10))[3] == 0


def test_a_cmyk_jpeg_comes_out_in_rgb_colours():
    red, green, blue = open_thumbnail(
        image_bytes("JPEG", size=(400, 400), mode="CMYK", color=(0, 255, 255, 0))).convert("RGB").getpixel((200, 200))
    assert red > 200 and green < 60 and blue < 60


def test_a_phone_photo_comes_out_the_way_up_it_was_taken():
    """Orientation 6: the camera was turned a quarter; the pixels are stored sideways."""
    image = Image.new("RGB", (800, 400), "blue")
    image.paste((255, 0, 0), (0, 0, 400, 400))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif.tobytes())

    thumb = open_thumbnail(out.getvalue())
    assert thumb.size == (160, 320)  # portrait, as seen on the phone
    top, bottom = thumb.getpixel((80, 40)), thumb.getpixel((80, 280))
    assert top[0] > 200 and top[2] < 60  # the stored left side, turned clockwise, is on top
    assert bottom[2] > 200 and bottom[0] < 60


@pytest.mark.parametrize("data", [GIF_ANIMATED, WEBP_ANIMATED, PNG_ANIMATED])
def test_an_animation_is_thumbnailed_by_its_first_frame(data):
    image = open_thumbnail(data)
    assert getattr(image, "n_frames", 1) == 1
    red, green, blue = image.convert("RGB").getpixel((20, 20))
    assert red > 200 and blue < 60


@pytest.mark.parametrize("data", [
    b"",
    b"not an image at all",
    JPEG[:40],  # a truncated JPEG
    PNG[:60],  # a PNG cut inside its image data
    PDF,
    b"\xef\xbb\xbf<svg xmlns='http://www.w3.org/2000/svg'/>",
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",  # never handed to Ghostscript
    image_bytes("BMP"),  # Pillow reads it, but we do not keep BMPs
    png_declaring(40, 30, idat=b"garbage"),
], ids=["empty", "words", "truncated-jpeg", "truncated-png", "pdf", "svg", "eps", "bmp", "bad-idat"])
def test_bytes_pillow_cannot_or_must_not_decode_give_no_thumbnail(data):
    assert mt.thumbnail(data) is None


def test_a_decompression_bomb_gives_no_thumbnail_without_allocating_it():
    """100000 x 100000 RGB would be 30 GB decoded: Pillow must refuse at the header."""
    bomb = png_declaring(100_000, 100_000, idat=zlib.compress(b"\x00" * 1000))
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(bomb))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert mt.thumbnail(bomb) is None
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 50 * 1024


def test_an_image_just_past_the_pixel_limit_is_refused_though_pillow_only_warns():
    """10000 x 10000 (100 M pixels) is over MAX_IMAGE_PIXELS but under twice it: a real, decodable
    1-bit PNG, so a thumbnail would come back if the warning were let through."""
    side = 10_000
    assert Image.MAX_IMAGE_PIXELS < side * side < 2 * Image.MAX_IMAGE_PIXELS
    rows = (b"\x00" + b"\xff" * (side // 8)) * side
    bomb = png_declaring(side, side, bit_depth=1, color_type=0, idat=zlib.compress(rows, 1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # a warning let through would be seen here
        assert mt.thumbnail(bomb) is None
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert not any(f[2] is Image.DecompressionBombWarning for f in warnings.filters)  # filter undone


@pytest.mark.parametrize("n, shown", [
    (0, "0 B"),
    (512, "512 B"),
    (1023, "1023 B"),
    (1024, "1 KB"),
    (1536, "1.5 KB"),
    (12 * 1024 + 300, "12 KB"),
    (500 * 1024, "500 KB"),
    (MB - 1, "1 MB"),  # 1023.999 KB rounds to the next unit, never "1024 KB"
    (5 * MB, "5 MB"),
    (int(7.2 * MB), "7.2 MB"),
    (100 * MB, "100 MB"),
    (3 * 1024 * MB, "3 GB"),
])
def test_sizes_read_as_people_say_them(n, shown):
    assert mt.human_size(n) == shown


@pytest.mark.parametrize("name, content_type, expected", [
    ("photo.jpg", "image/jpeg", "photo.jpg"),
    ("IMG_0001.JPEG", "image/jpeg", "IMG_0001.JPEG"),
    (None, "image/jpeg", "attachment.jpg"),
    ("", "audio/ogg", "attachment.ogg"),
    (None, "application/pdf", "attachment.pdf"),
    (None, "application/vnd.openxmlformats-officedocument.wordprocessingml.document", "attachment.docx"),
    (None, "text/plain", "attachment.txt"),
    ("invoice.pdf.exe", "application/pdf", "invoice.pdf.exe.pdf"),
    ("photo.html", "image/png", "photo.html.png"),
    ("photo", "image/png", "photo.png"),
    ("notes.bat", "text/plain", "notes.bat.txt"),  # text that Windows would run
    ("data.csv", "text/plain", "data.csv"),
    ("voice.m4a", "video/mp4", "voice.m4a"),
    ("report.docx", "application/zip", "report.docx"),
    ("app.jar", "application/zip", "app.jar.zip"),
    ("../../etc/passwd", "text/plain", "passwd.txt"),
    ("C:\\Users\\ana\\report.pdf", "application/pdf", "report.pdf"),
    ("  my   holiday\tphoto.jpg ", "image/jpeg", "my holiday photo.jpg"),
    ("line\r\nbreak.txt", "text/plain", "line break.txt"),
    ("bell\x07\x00.txt", "text/plain", "bell.txt"),
    ('say "hi" <now>.txt', "text/plain", "say _hi_ _now_.txt"),
    ("invoice\u202egpj.exe", "image/jpeg", "invoicegpj.exe.jpg"),  # right-to-left override
    ("cafe\u0301.txt", "text/plain", "café.txt"),  # one form on every disk
    ("...", "application/pdf", "attachment.pdf"),
    (".htaccess", "text/plain", "htaccess.txt"),
])
def test_a_filename_is_safe_and_agrees_with_the_bytes(name, content_type, expected):
    assert mt.safe_filename(name, content_type) == expected


def test_a_long_filename_is_cut_keeping_its_extension():
    name = mt.safe_filename("a" * 300 + ".pdf", "application/pdf")
    assert len(name) == 120 and name.endswith("a.pdf")
    wrong = mt.safe_filename("b" * 300 + ".exe", "application/pdf")
    assert len(wrong) <= 120 and wrong.endswith(".pdf")


def test_a_long_filename_fits_a_filesystem_in_bytes_too():
    name = mt.safe_filename("😀" * 200 + ".jpg", "image/jpeg")
    assert name.endswith("😀.jpg") and len(name.encode()) <= 240
