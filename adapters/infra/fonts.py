"""The font contact sheets are drawn in: Noto Sans CJK, so Chinese, Japanese and Korean axis values,
prompts and titles show as text.

PIL's default font has no CJK glyphs (nor `é` or `×`): `大理石台面` came out as five empty boxes.
The font is the OpenType collection of the `noto-cjk-sans-otc` package (SIL OFL 1.1), a dependency
of the project, so every install has it; no font file is kept in this repository. Without it (an
install that skipped it) sheets still render, in PIL's default font, with a warning logged once:
`tasks.sheets.contact_sheet` then draws `?` for each character the font lacks and says so on the sheet.
"""

from __future__ import annotations

import functools
import logging
from importlib import resources
from pathlib import Path

from PIL import ImageFont

from tasks.sheets import FONT_SIZE

log = logging.getLogger(__name__)

FONT_PACKAGE, FONT_FILE = "noto_cjk_sans_otc", "NotoSansCJK-Regular.ttc"
# The collection holds one face per region (JP, KR, SC, TC, HK, then the Mono ones); they share every
# glyph and differ only in the regional forms of some Han characters. Simplified Chinese is the default.
FACE = "Noto Sans CJK SC"


def cjk_font_path() -> Path | None:
    """The Noto Sans CJK collection installed with the project, or None when it is missing."""
    try:
        path = resources.files(FONT_PACKAGE).joinpath(FONT_FILE)
    except ModuleNotFoundError:
        return None
    return Path(str(path)) if path.is_file() else None


@functools.cache
def sheet_font(size: int = FONT_SIZE) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The font contact sheets are drawn in, at `size` pixels: Noto Sans CJK SC, or PIL's default font
    (no CJK glyphs) with a warning, logged once, when the font package is not installed."""
    path = cjk_font_path()
    if path is None:
        log.warning("contact sheets: the CJK font package %s is not installed (pip install noto-cjk-sans-otc); "
                    "using PIL's default font, which draws Chinese, Japanese and Korean text as '?'",
                    FONT_PACKAGE.replace("_", "-"))
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(str(path), size, index=_face_index(path, FACE))


def _face_index(path: Path, family: str) -> int:
    """The index of `family` in a font collection; 0 (its first face) when it has none of that name."""
    index = 0
    while True:
        try:
            face = ImageFont.truetype(str(path), FONT_SIZE, index=index)
        except OSError:  # past the collection's last face
            return 0
        if face.getname()[0] == family:
            return index
        index += 1
