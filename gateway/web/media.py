"""How received media (a resident's MMS parts) are handed to a browser, in the console and
the sandbox: both are served on the console's origin, so a part must never run there.

Only raster images (JPEG, PNG, GIF, WebP, HEIC/HEIF) are served inline, under their own
type; everything else (SVG, HTML, JavaScript, PDF, anything unknown) is a download of type
`application/octet-stream`. Every media response also carries
`Content-Security-Policy: sandbox; default-src 'none'` (a unique origin, no script, nothing
loaded) and `X-Content-Type-Options: nosniff`, whatever the sender claimed the part was.
"""

from __future__ import annotations

from flask import Response

RASTER_IMAGE_TYPES = frozenset(
    {
        "image/jpeg",
        "image/jpg",  # not registered, but senders use it
        "image/pjpeg",
        "image/png",
        "image/gif",
        "image/webp",
        "image/heic",
        "image/heif",
    }
)
MEDIA_CONTENT_SECURITY_POLICY = "sandbox; default-src 'none'"
DOWNLOAD_TYPE = "application/octet-stream"


def base_type(content_type: str | None) -> str:
    """`image/PNG; name=x` -> `image/png`."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_inline_image(content_type: str | None) -> bool:
    """True for the raster image types a browser may show inline."""
    return base_type(content_type) in RASTER_IMAGE_TYPES


def harden(response: Response, content_type: str | None, filename: str | None = None) -> Response:
    """Set the type, disposition and isolation headers of a media `response` whose part was
    declared as `content_type`; `filename` names a download."""
    kind = base_type(content_type)
    if kind in RASTER_IMAGE_TYPES:
        response.headers["Content-Type"] = kind
        response.headers["Content-Disposition"] = "inline"
    else:
        response.headers["Content-Type"] = DOWNLOAD_TYPE
        if filename:
            response.headers.set("Content-Disposition", "attachment", filename=filename)
        else:
            response.headers["Content-Disposition"] = "attachment"
    response.headers["Content-Security-Policy"] = MEDIA_CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
