"""What an attachment is, whether we keep it, and its thumbnail.

- The type comes from the bytes, never from the sender: a content type in a webhook or an upload
  is only a claim, and HTML or SVG served from our origin would run as our own page, with the
  agent's session. Markup is recognised first and refused, whatever else the bytes resemble.
- Limits are per kind, WhatsApp Cloud API's own (a file it would refuse to send is no use to
  keep); `ATTACHMENT_MAX_BYTES_<KIND>` overrides one, and a download is capped at `max_limit`
  before its type is known.
- Thumbnails are made once, by the worker that stores the file, never on a page view.
"""
from __future__ import annotations

import io
import mimetypes
import re
import unicodedata
import warnings
from collections.abc import Mapping

import filetype
from PIL import Image, ImageOps

IMAGE, AUDIO, VIDEO, DOCUMENT, STICKER = "image", "audio", "video", "document", "sticker"
KINDS = (IMAGE, AUDIO, VIDEO, DOCUMENT, STICKER)

MB = 1024 * 1024
LIMITS: dict[str, int] = {
    IMAGE: 5 * MB, AUDIO: 16 * MB, VIDEO: 16 * MB, DOCUMENT: 100 * MB, STICKER: 500 * 1024,
}
_PLURALS = {IMAGE: "images", AUDIO: "audio files", VIDEO: "videos", DOCUMENT: "documents",
            STICKER: "stickers"}

# Each type we keep, with the extensions a file of that type may carry; the first is the one we
# add. Declared here rather than asked of `mimetypes`, which reads the host's /etc/mime.types
# and calls a .bat file text/plain.
_OOXML = {
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": (".docx", ".docm", ".dotx"),
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": (".xlsx", ".xlsm", ".xltx"),
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": (".pptx", ".pptm", ".ppsx"),
    "application/vnd.oasis.opendocument.text": (".odt",),
    "application/vnd.oasis.opendocument.spreadsheet": (".ods",),
    "application/vnd.oasis.opendocument.presentation": (".odp",),
}
EXTENSIONS: dict[str, tuple[str, ...]] = {
    "image/jpeg": (".jpg", ".jpeg", ".jpe", ".jfif"),
    "image/png": (".png",),
    "image/apng": (".png", ".apng"),  # what filetype calls an animated PNG
    "image/gif": (".gif",),
    "image/webp": (".webp",),
    "audio/ogg": (".ogg", ".oga", ".opus"),  # WhatsApp voice notes: Opus in Ogg
    "audio/mpeg": (".mp3",),
    "audio/mp4": (".m4a", ".mp4", ".aac"),
    "audio/aac": (".aac",),
    "audio/amr": (".amr",),
    "audio/x-wav": (".wav",),
    "audio/wav": (".wav",),
    "audio/webm": (".webm", ".weba"),
    "video/mp4": (".mp4", ".m4v", ".m4a"),  # filetype calls an m4a without an M4A brand video/mp4
    "video/3gpp": (".3gp", ".3gpp"),
    "video/webm": (".webm", ".weba"),  # filetype cannot tell audio-only WebM from video
    "video/quicktime": (".mov", ".qt"),
    "application/pdf": (".pdf",),
    # An office file whose first entries filetype does not recognise is sniffed as a plain ZIP.
    "application/zip": (".zip", *(ext for exts in _OOXML.values() for ext in exts)),
    **_OOXML,
    "application/msword": (".doc", ".dot"),
    "application/vnd.ms-excel": (".xls", ".xlt"),
    "application/vnd.ms-powerpoint": (".ppt", ".pps", ".pot"),
    "text/plain": (".txt", ".text", ".log", ".md", ".csv", ".tsv", ".json", ".vcf", ".ics", ".srt"),
    "text/csv": (".csv", ".txt"),
}
# What may be stored; never markup (text/html, image/svg+xml, XHTML/XML), scripts or programs.
ALLOWED: frozenset[str] = frozenset(EXTENSIONS)


class Refused(Exception):
    """An attachment we will not keep; `reason` is shown to the agent as it is."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def limit_for(kind: str | None, config: Mapping | None = None) -> int:
    """The largest file of this kind we keep: config's ATTACHMENT_MAX_BYTES_<KIND>, or WhatsApp's."""
    kind = kind if kind in LIMITS else DOCUMENT
    configured = (config or {}).get(f"ATTACHMENT_MAX_BYTES_{kind.upper()}")
    return int(configured) if configured not in (None, "") else LIMITS[kind]


def max_limit(config: Mapping | None = None) -> int:
    """The cap on a download before its type is known: the largest of the limits."""
    return max(limit_for(kind, config) for kind in KINDS)


# How browsers recognise markup (WHATWG MIME sniffing's HTML patterns, plus SVG and XML): any of
# these at the start, after whitespace or a BOM, would render as a page if it were ever served so.
_LEADING = re.compile(rb"[\s\xef\xbb\xbf]*")  # whitespace and the UTF-8 BOM
_MARKUP_START = re.compile(
    rb"<(?:!doctype|!--|\?xml|(?:html|head|body|script|iframe|svg|h1|div|font"
    rb"|table|a|style|title|b|br|p)(?=[\s>/]|$))", re.IGNORECASE)
_PROLOG = re.compile(r"\s*(?:<\?.*?\?>|<!--.*?-->|<!doctype[^>]*>)", re.DOTALL)
_ROOT = re.compile(r"\s*<([a-z][\w:.-]*)")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")  # all but \t \n \f \r
_FTYP_3GP = re.compile(rb"^.{4}ftyp3g[p2]", re.DOTALL)  # filetype 1.2.0 looks for it at offset 0


def _markup_type(head: bytes) -> str:
    """What markup this is: its root element if the prolog lets us see it, HTML otherwise."""
    text = head.decode("utf-8", "replace").lstrip("\ufeff \t\r\n\f").lower()
    pos, doctype = 0, ""
    while match := _PROLOG.match(text, pos):
        pos = match.end()
        if match.group().lstrip().startswith("<!doctype"):
            doctype = match.group()
    root = _ROOT.match(text, pos)
    root = root.group(1) if root else ""
    if root == "svg" or root.endswith(":svg") or "svg" in doctype:
        return "image/svg+xml"
    if text.startswith("<?xml") and root != "html" and "html" not in doctype:
        return "application/xml"
    return "text/html"


def sniff(data: bytes) -> str | None:
    """The content type the bytes show (markup named as such, to be refused), or None."""
    start = _LEADING.match(data).end()
    head = bytes(data[start:start + 4096])
    if _MARKUP_START.match(head):
        return _markup_type(head)
    guessed = filetype.guess_mime(data)
    if guessed:
        return guessed
    if _FTYP_3GP.match(data[:12]):
        return "video/3gpp"
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        return None
    return "text/plain" if text and not _CONTROL.search(text) else None


def kind_of(content_type: str) -> str:
    """The kind a content type is shown as: image, audio, video, or else a document."""
    major = content_type.split(";", 1)[0].strip().lower().partition("/")[0]
    return {"image": IMAGE, "audio": AUDIO, "video": VIDEO}.get(major, DOCUMENT)


def check(data: bytes, declared_kind: str | None = None, config: Mapping | None = None) -> tuple[str, str]:
    """(content type, kind) of a file we may keep, or Refused; the declared kind only names stickers."""
    if not data:
        raise Refused("empty file")
    content_type = sniff(data)
    if content_type not in ALLOWED:
        raise Refused(f"file type not allowed ({content_type or 'unknown'})")
    if declared_kind == STICKER and content_type in ("image/webp", "image/png"):
        kind = STICKER
    else:
        kind = kind_of(content_type)
    limit = limit_for(kind, config)
    if len(data) > limit:
        size, most = human_size(len(data)), human_size(limit)
        size = f"over {most}" if size == most else size  # 5 MB and one byte must not read "5 MB"
        raise Refused(f"attachment too large ({size}; {_PLURALS[kind]} may be at most {most})")
    return content_type, kind


THUMB_MAX = 320  # px, the longer side
THUMB_QUALITY = 75
# Only what ALLOWED keeps as an image is decoded: Pillow would otherwise hand EPS to Ghostscript.
_THUMB_FORMATS = ("JPEG", "PNG", "GIF", "WEBP")


def thumbnail(data: bytes) -> bytes | None:
    """A WebP of the image (first frame, upright, longer side at most THUMB_MAX), or None."""
    try:
        # Pillow warns of a decompression bomb (and raises past twice the limit) as it reads the
        # header: made an error, it stops here. The worker's greenlet does not yield in between.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=_THUMB_FORMATS) as image:
                # The box is square, so shrinking before turning upright gives the same result,
                # and lets a JPEG decode at a fraction of its size.
                image.thumbnail((THUMB_MAX, THUMB_MAX))
                image = ImageOps.exif_transpose(image)
                if image.mode not in ("RGB", "RGBA"):
                    image = image.convert("RGBA" if image.has_transparency_data else "RGB")
                out = io.BytesIO()
                image.save(out, "WEBP", quality=THUMB_QUALITY)
                return out.getvalue()
    except Exception:  # hostile bytes make Pillow's decoders raise nearly anything
        return None


def human_size(n: int) -> str:
    """A size for people: "512 B", "1.5 KB", "12 KB", "7.2 MB" (1 KB = 1024 B)."""
    if n < 1024:
        return f"{n} B"
    units, unit, value = ("KB", "MB", "GB", "TB"), 0, n / 1024
    while round(value) >= 1024 and unit < len(units) - 1:
        value, unit = value / 1024, unit + 1
    shown = f"{value:.1f}".removesuffix(".0") if value < 9.95 else f"{round(value)}"
    return f"{shown} {units[unit]}"


_UNSAFE = re.compile(r'[<>:"|?*]')  # quotes break Content-Disposition; the rest Windows refuses
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,10}$")
MAX_NAME = 120  # characters
MAX_NAME_BYTES = 240  # UTF-8: most filesystems stop at 255 bytes


def _extension_for(content_type: str) -> str:
    if content_type in EXTENSIONS:
        return EXTENSIONS[content_type][0]
    return mimetypes.guess_extension(content_type) or ""


def safe_filename(name: str | None, content_type: str) -> str:
    """A name safe for Content-Disposition and disk, whose extension agrees with the bytes."""
    name = unicodedata.normalize("NFC", name or "")
    name = re.split(r"[/\\]", name)[-1]
    # Cc: control characters; Cf: bidi overrides and zero-widths, which make "gpj.exe" look like
    # "exe.jpg".
    name = "".join(" " if ch.isspace() else ch for ch in name
                   if unicodedata.category(ch) not in ("Cc", "Cf") or ch.isspace())
    name = _UNSAFE.sub("_", " ".join(name.split())).strip(". ")
    right = _extension_for(content_type)
    stem, ext = name, ""
    if match := _EXTENSION.search(name):
        stem, ext = name[:match.start()], match.group()
    stem = stem or "attachment"
    if right and ext.lower() not in EXTENSIONS.get(content_type, (right,)):
        stem, ext = stem + ext, right
    room = MAX_NAME - len(ext)
    stem = stem[:room]
    while len((stem + ext).encode("utf-8")) > MAX_NAME_BYTES:
        stem = stem[:-1]
    return (stem.rstrip(". ") or "attachment") + ext
