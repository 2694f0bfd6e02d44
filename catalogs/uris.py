"""A bucket prefix as a value: `s3://bucket[/prefix]`, checked where it enters (CLI, the UI's form, settings).

The one check every root URI passes (tasks/layout.py builds the bucket layouts on it): a prefix with
a `.`, `..` or empty segment is refused in one line, so no key ever lands outside the prefix a person
named (`s3://bucket/../x` would write keys that start with `../x/`).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

SCHEME = "s3://"


def check_prefix(uri: str, what: str = "bucket") -> str:
    """`uri` without a trailing "/", after checking it names a bucket and a clean prefix.

    Raises ValueError (one line, naming the URI and the bad segment) for anything else.
    """
    if not isinstance(uri, str) or not uri.startswith(SCHEME):
        raise ValueError(f"{what} URI {uri!r}: expected s3://bucket[/prefix]")
    trimmed = uri[:-1] if uri.endswith("/") else uri
    bucket, _, prefix = trimmed[len(SCHEME):].partition("/")
    if not bucket:
        raise ValueError(f"{what} URI {uri!r}: names no bucket")
    if "/" in trimmed[len(SCHEME):]:
        for segment in prefix.split("/"):
            if segment in ("", ".", ".."):
                shown = "an empty segment ('//')" if segment == "" else f"segment {segment!r}"
                raise ValueError(f"{what} URI {uri!r}: {shown} is not allowed in a prefix")
    return trimmed


def _assets(uri: str) -> str:
    return check_prefix(uri, "assets")


def _catalog(uri: str) -> str:
    return check_prefix(uri, "catalog")


AssetsUri = Annotated[str, AfterValidator(_assets)]
CatalogUri = Annotated[str, AfterValidator(_catalog)]
