"""Consistency across a campaign: whether its images look like one campaign, not each image on its own.

Each image gets a *look* where it is scored (adapters/steps/rendering.py, which holds the pixels and the
product's mask): the CLIP image embedding the scorer computes anyway, a palette of its background
(k-means in CIELAB of the pixels outside the product) and its background's lighting (mean lightness
L* and the correlated colour temperature of its mean colour). Across a group of images (one style
set, or the whole campaign; each channel apart) the looks have a centre, each image a distance to it,
and the group a spread.

Every component distance is divided by a unit that is "a difference seen at a glance", so they add
up: 0.1 of cosine distance between CLIP embeddings, 10 CIEDE2000 between palettes, 10 L* of
lightness or 50 mired of colour temperature. The combined distance is the mean of the components an
image has (CLIP scoring may be off), so 1.0 is one clear difference from the centre.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from tasks.rows import Columns, Indexed, Rows, list_layout

PALETTE_COLOURS = 5
PALETTE_PIXELS = 2048  # background pixels sampled for a palette and the lighting (all of them when fewer)
KMEANS_ROUNDS = 12
EMBEDDING_UNIT = 0.1  # cosine distance between unit CLIP embeddings
PALETTES_AT_ONCE = 2048  # palettes compared with a centre in one call (`distances`)
COLOURS_AT_ONCE = 16384  # palette colours converted to CIELAB in one call
UNIT_TOLERANCE = 1e-5  # an embedding this close to unit length (float32 rounding) is used as stored
PALETTE_UNIT = 10.0  # CIEDE2000 (2.3 is just noticeable; 10 reads as another colour)
LIGHTNESS_UNIT = 10.0  # L*, 0 (black) to 100 (white)
MIRED_UNIT = 50.0  # 1e6 / kelvin: about a half CTO gel
CCT_RANGE = (1000.0, 25000.0)  # kelvin; McCamy's formula means little outside it
OUTLIER_FLOOR = 1.0  # never an outlier below one clear difference from the centre
OUTLIER_MADS = 3.0
MIN_FOR_OUTLIERS = 4  # a group needs this many images before any is called an outlier
CENTRE_SAMPLE = 64  # members the medoid palette is chosen among (their pairs: 64 x 64 palette distances)

# sRGB (D65) to XYZ
_SRGB_TO_XYZ = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])


@dataclass(frozen=True, slots=True)
class Look:
    """What an image's consistency is measured on; a part an image lacks is None."""

    embedding: np.ndarray | None = None  # unit length
    palette: np.ndarray | None = None  # (k, 3) CIELAB colours, heaviest first
    weights: np.ndarray | None = None  # (k,) shares of the background, summing to 1
    lightness: float | None = None  # mean L* of the background
    mired: float | None = None  # 1e6 / colour temperature of the background's mean colour

    @property
    def empty(self) -> bool:
        return self.embedding is None and self.palette is None and self.lightness is None


@dataclass(frozen=True)
class Distance:
    """An image's distance to a centre: each component in its unit, and their mean (None: nothing to compare)."""

    embedding: float | None
    palette: float | None
    lighting: float | None

    @property
    def combined(self) -> float | None:
        parts = [d for d in (self.embedding, self.palette, self.lighting) if d is not None]
        return float(np.mean(parts)) if parts else None


# --------------------------------------------------------------------------- one image


def background_look(image: Image.Image, background: np.ndarray) -> dict[str, object]:
    """The `generations` columns of an image's background: palette, lightness and colour temperature.

    `background` is where the background is (booleans, the image's shape): tasks.scores.background_region.
    """
    from skimage.color import rgb2lab

    rgb = np.asarray(image.convert("RGB")).reshape(-1, 3)
    where = np.flatnonzero(background)
    if not where.size:
        where = np.arange(rgb.shape[0])
    if where.size > PALETTE_PIXELS:  # a fixed-seed sample: even spacing would alias with stripes and textures
        where = where[np.random.default_rng(0).integers(0, where.size, PALETTE_PIXELS)]
    pixels = rgb[where].astype(np.float64) / 255.0
    lab = rgb2lab(pixels[None])[0]
    centres, shares = weighted_kmeans(lab, np.ones(len(lab)), PALETTE_COLOURS)
    cct = colour_temperature(pixels.mean(axis=0))
    return {
        "background_palette": palette_texts(centres, shares),
        "background_lightness": float(lab[:, 0].mean()),
        "background_cct": cct,
    }


def colour_temperature(rgb: np.ndarray) -> float | None:
    """Correlated colour temperature in kelvin of an sRGB colour (0..1), by McCamy's formula, clamped to CCT_RANGE.

    None for black, which has no chromaticity.
    """
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    x_, y_, z_ = _SRGB_TO_XYZ @ linear
    total = x_ + y_ + z_
    if total <= 1e-9:
        return None
    x, y = x_ / total, y_ / total
    if abs(0.1858 - y) < 1e-9:
        return CCT_RANGE[1]
    n = (x - 0.3320) / (0.1858 - y)
    cct = 449.0 * n**3 + 3525.0 * n**2 + 6823.3 * n + 5520.33
    return float(min(max(cct, CCT_RANGE[0]), CCT_RANGE[1]))


def weighted_kmeans(points: np.ndarray, weights: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """At most `k` weighted centres of `points` (n, 3) and their shares of the weight, heaviest first.

    Deterministic: seeded by the heaviest point, then each next seed is the point farthest from the
    seeds so far (ties: the first), then Lloyd rounds. Empty clusters are dropped.
    """
    if not len(points):
        raise ValueError("a palette needs at least one pixel")
    points = np.asarray(points, dtype=np.float64)
    seeds = [int(np.argmax(weights))]
    nearest = ((points - points[seeds[0]]) ** 2).sum(axis=1)
    while len(seeds) < k:
        far = int(np.argmax(np.where(weights > 0, nearest, -1.0)))
        if nearest[far] <= 1e-12:
            break
        seeds.append(far)
        nearest = np.minimum(nearest, ((points - points[far]) ** 2).sum(axis=1))
    centres = points[seeds]
    for _ in range(KMEANS_ROUNDS):
        labels = _nearest_centre(points, centres)
        mass = np.bincount(labels, weights=weights, minlength=len(centres))
        sums = np.stack([np.bincount(labels, weights=weights * points[:, c], minlength=len(centres))
                         for c in range(points.shape[1])], axis=1)
        moved = np.where(mass[:, None] > 0, sums / np.maximum(mass, 1e-12)[:, None], centres)
        if np.allclose(moved, centres, atol=1e-6):
            break
        centres = moved
    mass = np.bincount(_nearest_centre(points, centres), weights=weights, minlength=len(centres))
    keep = [j for j in sorted(range(len(centres)), key=lambda j: (-mass[j], j)) if mass[j] > 0]
    return centres[keep], mass[keep] / mass[keep].sum()


def _nearest_centre(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    squared = (centres**2).sum(axis=1)[None, :] - 2.0 * points @ centres.T  # + |p|^2, the same for every centre
    return squared.argmin(axis=1)


def palette_texts(lab: np.ndarray, shares: np.ndarray) -> list[str]:
    """A palette as the table stores it: `#rrggbb share` per colour, heaviest first."""
    from skimage.color import lab2rgb

    rgb = np.clip(np.rint(lab2rgb(lab[None])[0] * 255.0), 0, 255).astype(int)
    return [f"#{r:02x}{g:02x}{b:02x} {s:.3f}" for (r, g, b), s in zip(rgb, shares, strict=True)]


def _parse_texts(texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
    colours, shares = [], []
    for text in texts:
        parts = text.split()
        try:
            if len(parts) != 2 or not parts[0].startswith("#") or len(parts[0]) != 7:
                raise ValueError
            int(parts[0][1:], 16)
            shares.append(float(parts[1]))
        except ValueError:
            raise ValueError(f"palette entry {text!r} is not '#rrggbb share'") from None
        colours.append(parts[0].lower())
    weights = np.asarray(shares, dtype=np.float64)
    return colours, weights / max(weights.sum(), 1e-12)


def _lab_of(colours: Sequence[str]) -> dict[str, np.ndarray]:
    """CIELAB of `#rrggbb` colours, converted in one call."""
    unique = sorted(set(colours))
    if not unique:
        return {}
    rgb = np.asarray([[int(c[i:i + 2], 16) / 255.0 for i in (1, 3, 5)] for c in unique], dtype=np.float64)
    return dict(zip(unique, _rgb_to_lab(rgb), strict=True))


def _rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(m, 3) sRGB in 0..1 as (m, 3) CIELAB (D65), converted COLOURS_AT_ONCE at a time (each call makes a few
    temporaries of its input's size)."""
    from skimage.color import rgb2lab

    lab = np.empty((len(rgb), 3))
    for start in range(0, len(rgb), COLOURS_AT_ONCE):
        lab[start:start + COLOURS_AT_ONCE] = rgb2lab(rgb[start:start + COLOURS_AT_ONCE].reshape(1, -1, 3))[0]
    return lab


def parse_palette(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """A stored palette back as (CIELAB colours, shares); raises ValueError naming a malformed entry."""
    colours, weights = _parse_texts(texts)
    lab = _lab_of(colours)
    return np.asarray([lab[c] for c in colours]), weights


def look_of(row: dict) -> Look:
    """An image's look from its `generations` row (what scoring stored)."""
    return looks_of([row])[0]


LOOK_COLUMNS = ("clip_embedding", "background_palette", "background_lightness", "background_cct")


class Looks(Indexed[Look]):
    """The looks of a run's rows held as arrays, not an object per image: every palette colour of every row in one
    (m, 3) CIELAB array and its shares in one (m,) array, a row's colours a slice of them; the embeddings as the
    rows' own column (a row's one a view into it); lightness and colour temperature one float array each.
    `looks[i]` is row i's `Look`, made as it is read, its arrays views into these.
    """

    def __init__(self, embeddings: pa.Array, palettes: pa.Array, lightness: np.ndarray, cct: np.ndarray) -> None:
        n = len(lightness)
        self._n = n
        # Embeddings: a row's values are flat[offsets[i]:offsets[i + 1]] (Arrow's list layout, no copy).
        vectors, self._vector_offsets = list_layout(embeddings)
        self._vectors = vectors.to_numpy(zero_copy_only=False)
        lengths = np.diff(self._vector_offsets)
        valid = embeddings.is_valid().to_numpy(zero_copy_only=False) & (lengths > 0)
        rows_of = np.repeat(np.arange(n), lengths)
        norms = np.sqrt(np.bincount(rows_of, weights=self._vectors.astype(np.float64) ** 2, minlength=n))
        self._has_vector = valid & (norms > 0)
        # Stored at unit length already (float32 rounding aside): used as stored; any other is normalised here.
        self._normalised = {int(i): self._vector(int(i)) / norms[i]
                            for i in np.flatnonzero(self._has_vector & (np.abs(norms - 1.0) > UNIT_TOLERANCE))}
        # Palettes: every `#rrggbb share` of every row parsed and converted at once.
        texts, self._colour_offsets = list_layout(palettes)
        counts = np.diff(self._colour_offsets)
        self._has_palette = palettes.is_valid().to_numpy(zero_copy_only=False) & (counts > 0)
        self._lab, shares = _parse_flat(texts)
        totals = np.bincount(np.repeat(np.arange(n), counts), weights=shares, minlength=n)
        self._shares = shares / np.maximum(np.repeat(totals, counts), 1e-12)
        self._lightness = lightness
        with np.errstate(divide="ignore"):
            self._mired = 1e6 / cct

    def __len__(self) -> int:
        return self._n

    def _vector(self, i: int) -> np.ndarray:
        return self._vectors[self._vector_offsets[i]:self._vector_offsets[i + 1]]

    def _item(self, i: int) -> Look:
        embedding = None
        if self._has_vector[i]:
            embedding = self._normalised.get(i)
            if embedding is None:
                embedding = self._vector(i)
        palette = weights = None
        if self._has_palette[i]:
            start, stop = self._colour_offsets[i], self._colour_offsets[i + 1]
            palette, weights = self._lab[start:stop], self._shares[start:stop]
        lightness, mired = self._lightness[i], self._mired[i]
        return Look(embedding=embedding, palette=palette, weights=weights,
                    lightness=None if math.isnan(lightness) else float(lightness),
                    mired=None if math.isnan(mired) else float(mired))


def _parse_flat(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Every `#rrggbb share` palette entry as (CIELAB colours (m, 3), shares (m,)), all at once; raises ValueError
    naming the first malformed entry."""
    if pa.types.is_dictionary(texts.type):
        texts = texts.dictionary_decode()
    texts = texts.fill_null("")
    shape = pc.match_substring_regex(texts, r"^\s*#[0-9a-fA-F]{6}\s+\S+\s*$")
    try:
        if not pc.all(shape).as_py() and len(texts):
            raise ValueError
        trimmed = pc.utf8_trim_whitespace(texts)
        shares = pc.cast(pc.utf8_trim_whitespace(pc.utf8_slice_codeunits(trimmed, 7)), pa.float64())
    except (ValueError, pa.ArrowInvalid):
        for text in texts.to_pylist():  # the slow way, once, for the message that names the entry
            _parse_texts([text])
        raise
    # `#rrggbb` as bytes, six hex digits each, read as numbers all at once (no Python string per colour).
    colours = pc.utf8_slice_codeunits(trimmed, 1, 7).cast(pa.binary())
    offsets = np.frombuffer(colours.buffers()[1], dtype=np.int32)[colours.offset:colours.offset + len(colours) + 1]
    data = np.frombuffer(colours.buffers()[2], dtype=np.uint8) if len(colours) else np.zeros(0, np.uint8)
    digits = data[offsets[:-1, None] + np.arange(6)].astype(np.int64)
    digits = np.where(digits <= ord("9"), digits - ord("0"), (digits | 0x20) - ord("a") + 10)
    rgb = (digits[:, 0::2] * 16 + digits[:, 1::2]) / 255.0
    return _rgb_to_lab(rgb), shares.to_numpy(zero_copy_only=False).astype(np.float64)


def looks_of(rows: Sequence[dict], skip: Sequence[bool] | None = None) -> Looks:
    """Each row's look (what scoring stored), as `Looks`; a row marked in `skip` (a failed image) has none.

    Read straight from the rows' Arrow columns where they are `tasks.rows.Rows` (no Python value per image),
    else from the dicts' values.
    """
    if isinstance(rows, Rows):
        table = rows.table
        column = {name: table.column(name).combine_chunks() if name in table.column_names else None
                  for name in LOOK_COLUMNS}
    else:
        column = {name: pa.array([_plain(row.get(name)) for row in rows], type=kind, from_pandas=True)
                  if any(row.get(name) is not None for row in rows) else None
                  for name, kind in zip(LOOK_COLUMNS, LOOK_TYPES, strict=True)}
    n = len(rows)
    blank = np.zeros(n, dtype=bool) if skip is None else np.asarray(skip, dtype=bool)
    keep = pa.array(~blank)

    def listed(name: str, kind: pa.DataType) -> pa.Array:
        values = column[name]
        if values is None:
            return pa.nulls(n, kind)
        return pc.if_else(keep, values, pa.scalar(None, values.type)) if blank.any() else values

    def floats(name: str) -> np.ndarray:
        values = column[name]
        out = np.full(n, np.nan) if values is None else values.cast(pa.float64()).to_numpy(zero_copy_only=False)
        out = np.where(blank, np.nan, out) if blank.any() else out
        return out

    return Looks(listed("clip_embedding", LOOK_TYPES[0]), listed("background_palette", LOOK_TYPES[1]),
                 floats("background_lightness"), floats("background_cct"))


LOOK_TYPES = (pa.list_(pa.float64()), pa.list_(pa.string()), pa.float64(), pa.float64())


def _plain(value: object) -> object:
    """A dict row's value as Arrow takes it (a numpy array as a list)."""
    return value.tolist() if isinstance(value, np.ndarray) else value


# --------------------------------------------------------------------------- a group of images


def centre_of(looks: Sequence[Look]) -> Look | None:
    """The centre of a group's looks: the normalised mean embedding, the medoid palette (the member's
    palette nearest to the others': an outlier's colours never enter it), and the median lightness and
    colour temperature. The medoid is found among at most CENTRE_SAMPLE evenly spaced members.
    None for an empty group."""
    return centres_without(looks, [""] * len(looks), [None])[None]


def centres_without(looks: Sequence[Look], owners: Sequence[str], wanted: Sequence[str | None]) -> dict[str | None, Look | None]:
    """For each owner in `wanted`, the centre (`centre_of`) of the looks that are not its own; None
    excludes nothing. One matrix of palette distances serves every owner: a leave-one-out medoid is
    the sample's palette nearest to the rest once the owner's rows and columns are masked."""
    keep = [i for i, lk in enumerate(looks) if not lk.empty]
    looks, owners = [looks[i] for i in keep], np.asarray([owners[i] for i in keep], dtype=object)
    with_embedding = [i for i, lk in enumerate(looks) if lk.embedding is not None]
    if with_embedding:
        vectors = np.stack([looks[i].embedding for i in with_embedding])
        embedding_owner = owners[with_embedding]
    with_palette = [i for i, lk in enumerate(looks) if lk.palette is not None]
    sample = with_palette[:: max(1, math.ceil(len(with_palette) / CENTRE_SAMPLE))]
    matrix = palette_distances([looks[i] for i in sample], [looks[i] for i in sample]) if sample else None
    lightness = np.asarray([np.nan if lk.lightness is None else lk.lightness for lk in looks])
    mired = np.asarray([np.nan if lk.mired is None else lk.mired for lk in looks])
    centres: dict[str | None, Look | None] = {}
    for owner in wanted:
        others = owners != owner if owner is not None else np.ones(len(looks), dtype=bool)
        if not others.any():
            centres[owner] = None
            continue
        embedding = None
        if with_embedding:
            chosen = vectors if owner is None else vectors[embedding_owner != owner]
            if len(chosen):
                mean = chosen.mean(axis=0, dtype=np.float64)
                norm = float(np.linalg.norm(mean))
                embedding = mean / norm if norm > 0 else None
        palette = weights = None
        if matrix is not None:
            members = np.asarray([bool(others[i]) for i in sample])
            if members.any():
                best = np.flatnonzero(members)[int(np.argmin(matrix[np.ix_(members, members)].sum(axis=1)))]
                palette, weights = looks[sample[best]].palette, looks[sample[best]].weights
        centres[owner] = Look(embedding=embedding, palette=palette, weights=weights,
                              lightness=_median(lightness[others]), mired=_median(mired[others]))
    return centres


def _median(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return float(np.median(values)) if len(values) else None


def palette_distances(a: Sequence[Look], b: Sequence[Look]) -> np.ndarray:
    """CIEDE2000 between every palette of `a` and every palette of `b`, as a (len a, len b) matrix: each
    colour's difference to the nearest colour of the other palette, averaged by share, both ways, then
    halved (0 = the same colours)."""
    from skimage.color import deltaE_ciede2000

    def stack(looks: Sequence[Look]) -> tuple[np.ndarray, np.ndarray]:
        k = max(len(lk.palette) for lk in looks)
        colours, shares = np.zeros((len(looks), k, 3)), np.zeros((len(looks), k))
        for n, lk in enumerate(looks):
            colours[n, :len(lk.palette)], shares[n, :len(lk.palette)] = lk.palette, lk.weights
            colours[n, len(lk.palette):] = lk.palette[0]  # padding: a repeat of a real colour, of no weight
        return colours, shares

    ca, wa = stack(a)
    cb, wb = stack(b)
    d = deltaE_ciede2000(ca[:, None, :, None, :], cb[None, :, None, :, :])  # (a, b, ka, kb)
    return 0.5 * ((wa[:, None, :] * d.min(axis=3)).sum(axis=2) + (wb[None, :, :] * d.min(axis=2)).sum(axis=2))


def distance(look: Look, centre: Look | None) -> Distance:
    """An image's distance to a centre, by component, each in its unit."""
    return distances([look], centre)[0]


def distances(looks: Sequence[Look], centre: Look | None) -> list[Distance]:
    """Each look's distance to one centre (`distance`), the palettes compared in one call."""
    if centre is None:
        return [Distance(None, None, None) for _ in looks]
    palettes = [i for i, lk in enumerate(looks) if lk.palette is not None]
    palette = {}
    if palettes and centre.palette is not None:
        # CIEDE2000 makes a dozen temporaries per colour pair: a few thousand palettes at a time bound them.
        for start in range(0, len(palettes), PALETTES_AT_ONCE):
            some = palettes[start:start + PALETTES_AT_ONCE]
            column = palette_distances([looks[i] for i in some], [centre])[:, 0] / PALETTE_UNIT
            palette.update(zip(some, column.tolist(), strict=True))
    out = []
    for i, look in enumerate(looks):
        embedding = lighting = None
        if look.embedding is not None and centre.embedding is not None and look.embedding.shape == centre.embedding.shape:
            embedding = max(0.0, 1.0 - float(look.embedding @ centre.embedding)) / EMBEDDING_UNIT
        parts = []
        if look.lightness is not None and centre.lightness is not None:
            parts.append((look.lightness - centre.lightness) / LIGHTNESS_UNIT)
        if look.mired is not None and centre.mired is not None:
            parts.append((look.mired - centre.mired) / MIRED_UNIT)
        if parts:
            lighting = float(math.hypot(*parts))
        out.append(Distance(embedding, palette.get(i), lighting))
    return out


def outliers(distances: Sequence[float | None]) -> float | None:
    """The distance past which an image is an outlier of its group: the median plus OUTLIER_MADS scaled
    median absolute deviations (robust: the outliers themselves barely move it), never under
    OUTLIER_FLOOR; None under MIN_FOR_OUTLIERS distances."""
    present = np.asarray([d for d in distances if d is not None], dtype=np.float64)
    if len(present) < MIN_FOR_OUTLIERS:
        return None
    median = float(np.median(present))
    mad = 1.4826 * float(np.median(np.abs(present - median)))  # the standard deviation, for normal data
    return max(median + OUTLIER_MADS * mad, OUTLIER_FLOOR)


def spread(looks: Sequence[Look]) -> float | None:
    """How far a set of images is from looking alike: the mean combined distance of each to the set's
    own centre (0 = identical looks). None under two images with a look."""
    looks = [lk for lk in looks if not lk.empty]
    if len(looks) < 2:
        return None
    centre = centre_of(looks)
    values = [d for d in (m.combined for m in distances(looks, centre)) if d is not None]
    return float(np.mean(values)) if values else None


def mean_similarity(looks: Sequence[Look]) -> float | None:
    """Mean pairwise cosine similarity of the looks' CLIP embeddings, from their sum (no pairs are formed:
    for unit vectors, the sum over pairs i != j of e_i . e_j is |sum e|^2 - n). None under two embeddings."""
    embeddings = [lk.embedding for lk in looks if lk.embedding is not None]
    n = len(embeddings)
    if n < 2:
        return None
    total = np.sum(embeddings, axis=0, dtype=np.float64)
    return float((total @ total - n) / (n * (n - 1)))


# --------------------------------------------------------------------------- a run's rows

COLUMNS = ("consistency_distance", "embedding_distance", "palette_distance", "lighting_distance",
           "consistency_outlier", "consistency_within")
CENTRE_STATUSES = ("ok", "duplicate")  # the images that passed the gates make a group's centre
STYLE_SET, CAMPAIGN = "style_set", "campaign"


def group_of(row: dict, within: str) -> tuple[str | None, str | None]:
    """The group an image is measured in: its style set (or the whole campaign) and its channel."""
    from tasks.channels import channel_of

    return (row["style_id"] if within == STYLE_SET else None, channel_of(row))


def measure(rows: Sequence[dict], looks: Sequence[Look], statuses: Sequence[str], within: str) -> Columns:
    """Each row's consistency columns (`COLUMNS`): its distance to its group's centre, by component, and
    whether it is an outlier. The centre is that of the group's images that passed the gates (ok or
    duplicate); a failed image, or one without a look, gets nulls."""
    out = Columns(len(rows), {**dict.fromkeys(COLUMNS), "consistency_outlier": False})
    groups: dict[tuple, list[int]] = {}
    for i, row in enumerate(rows):
        if statuses[i] != "failed" and not looks[i].empty:
            groups.setdefault(group_of(row, within), []).append(i)
    for members in groups.values():
        eligible = [i for i in members if statuses[i] in CENTRE_STATUSES] or members
        centre = centre_of([looks[i] for i in eligible])
        measured = dict(zip(members, distances([looks[i] for i in members], centre), strict=True))
        fence = outliers([measured[i].combined for i in eligible])
        for i, d in measured.items():
            out.set(i, consistency_distance=d.combined, embedding_distance=d.embedding, palette_distance=d.palette,
                    lighting_distance=d.lighting, consistency_within=within,
                    consistency_outlier=bool(fence is not None and d.combined is not None and d.combined > fence))
    return out


def spread_label(style_id: str | None, channel: str | None) -> str:
    """How a group is named where its spread is reported: the style set (or `campaign`), `· channel` with one."""
    return " · ".join(filter(None, [style_id or CAMPAIGN, channel]))


def selected_spreads(rows: Sequence[dict], within: str) -> dict[str, float | None]:
    """The spread of the selected images of each group (each style set, or the whole campaign; per channel),
    by `spread_label`; from the rows' stored looks."""
    by_group: dict[str, list] = {}
    for r in rows:
        if r.get("selected"):
            by_group.setdefault(spread_label(*group_of(r, within)), []).append(r)
    by_group = {label: looks_of(members) for label, members in by_group.items()}
    return {label: spread(looks) for label, looks in sorted(by_group.items())}


def spread_columns(rows: Sequence[dict]) -> dict[str, object]:
    """The `runs` columns `consistency_spread` and `consistency_spreads` of a run's scored and selected rows."""
    per_style = selected_spreads(rows, STYLE_SET)
    measured = [v for v in per_style.values() if v is not None]
    spreads = {**per_style, **selected_spreads(rows, CAMPAIGN)}
    return {
        "consistency_spread": float(np.mean(measured)) if measured else None,
        "consistency_spreads": [(label, "-" if v is None else f"{v:.3f}") for label, v in spreads.items()],
    }


def swatches(look: Look | None) -> list[tuple[int, int, int]]:
    """A look's palette as sRGB colours (0..255), heaviest first; empty without one."""
    if look is None or look.palette is None:
        return []
    return [tuple(int(t[i:i + 2], 16) for i in (1, 3, 5)) for t in palette_texts(look.palette, look.weights)]
