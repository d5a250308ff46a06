"""Images as values: what kind of image a cell's text is (URL, file path, base64 data) and what
format some bytes are. Shared by the prompt side (multi_modal_context, llm_cells) and the store,
which writes an image column's base64 as files (store/partition_store.py)."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable

from dd_assets.config.columns import ImageColumnConfig
from dd_assets.config.workflow import StageConfig, column_output_name
from dd_assets.engine.expressions import CellError

# What DataDesigner 0.9.7 reads as an image file's name or an image URL (its ImageFormat).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".webp")
_DATA_URI = re.compile(r"^data:(?P<media>[^;,]+);base64,(?P<data>.*)\Z", re.DOTALL)
_MEDIA_TYPES = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}

# Reads an image file a cell names (a relative path: beside an upstream stage's rows, then the
# working directory); None when there is no such file. Supplied by the runner: the engine reads
# no data itself.
LoadImage = Callable[[str], bytes | None]


def image_format(data: bytes) -> str | None:
    """The format of image bytes by their magic number (png, jpeg, gif, webp); None: not an
    image of those formats."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"GIF8"):
        return "gif"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "webp"
    return None


def decode_image(value: str) -> tuple[bytes, str]:
    """The bytes and format of base64 image data (a data URI or bare base64). ValueError when
    it is not base64 of a png, jpeg, gif or webp image."""
    m = _DATA_URI.match(value)
    data = m["data"] if m else value
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64 data") from None
    fmt = image_format(raw)
    if fmt is None:
        raise ValueError(f"base64 data is not a png, jpeg, gif or webp image (starts {raw[:8]!r})")
    return raw, fmt


def data_uri(raw: bytes, fmt: str) -> str:
    return f"data:image/{fmt};base64,{base64.b64encode(raw).decode()}"


def is_image_path(value: str) -> bool:
    return value.lower().endswith(IMAGE_EXTENSIONS) and not is_http(value)


def is_http(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def detected_image_url(column: str, value: str, load: LoadImage | None) -> str:
    """What `data_type: null` sends for one value, by DataDesigner's rules: an image file's
    path whose file exists is read and sent as base64; an http(s) URL naming an image file is
    sent as the URL; anything else must be base64 image data (or a data URI). A value that is
    none of these is the row's error, naming the column and what was tried."""
    if is_image_path(value) and load is not None:
        raw = load(value)
        if raw is not None:
            fmt = image_format(raw)
            if fmt is None:
                raise CellError(
                    f"multi_modal_context column {column!r}: file {value!r} is not a png, jpeg,"
                    " gif or webp image"
                )
            return data_uri(raw, fmt)
    if is_http(value) and any(ext in value.lower() for ext in IMAGE_EXTENSIONS):
        return value
    m = _DATA_URI.match(value)
    if m and m["media"].lower() not in _MEDIA_TYPES:
        raise CellError(
            f"multi_modal_context column {column!r}: unsupported image media type {m['media']!r}"
        )
    try:
        raw, fmt = decode_image(value)
    except ValueError as exc:
        shown = value if len(value) <= 60 else value[:57] + "..."
        raise CellError(
            f"multi_modal_context column {column!r} (data_type: null) cannot classify {shown!r}:"
            f" not an http(s) URL of an image file, not an image file that exists, and {exc};"
            " give the context a data_type (url or base64) or fix the value"
        ) from None
    return value if m else f"data:image/{fmt};base64,{value}"


def image_columns(stage: StageConfig) -> list[str]:
    """The names the stage's own image columns have in its row groups (after drop and
    post_batch): the columns whose images the store writes as files."""
    out = []
    for c in stage.columns:
        if isinstance(c, ImageColumnConfig):
            name = column_output_name(stage, c.name)
            if name is not None:
                out.append(name)
    return out
