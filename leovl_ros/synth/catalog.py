"""What synthetic rooms are made of: object categories, their size ranges, colours.

Pure data. Every category name is one lower-case word so that questions, answers and the
independent checks in the tests can refer to objects without multi-word parsing.
Sizes are (width along the object's own x, depth along its y, height) in metres; an object
"faces" its local -y, so wall objects turn their front towards the room.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Category:
    """One kind of object.

    placement: "wall" (back against a wall), "centre" (free-standing in the middle zone),
    "floor" (anywhere on the floor outside the walkway) or "surface" (on a supporter).
    supports: categories that may be placed on this one's flat top (empty = not a supporter).
    """

    name: str
    plural: str
    placement: str
    size_min: tuple[float, float, float]
    size_max: tuple[float, float, float]
    supports: tuple[str, ...] = ()
    colours: tuple[str, ...] = ()  # empty = any colour of COLOURS
    variant: str = ""  # shape variant when one name has two builds (floor vs table lamp)


_SMALL_ITEMS = ("mug", "book", "bottle", "vase", "bowl", "laptop", "plant", "lamp", "box")

CATEGORIES: tuple[Category, ...] = (
    Category("bed", "beds", "wall", (1.9, 0.9, 0.45), (2.1, 1.05, 0.6), ("pillow", "book")),
    Category("sofa", "sofas", "wall", (1.6, 0.8, 0.75), (2.2, 0.95, 0.9)),
    Category("armchair", "armchairs", "floor", (0.7, 0.7, 0.75), (0.9, 0.9, 0.9)),
    Category("cabinet", "cabinets", "wall", (0.6, 0.4, 0.7), (1.2, 0.55, 1.0), _SMALL_ITEMS),
    Category("shelf", "shelves", "wall", (0.6, 0.3, 1.0), (1.0, 0.4, 1.5), _SMALL_ITEMS),
    Category("desk", "desks", "wall", (1.0, 0.6, 0.72), (1.5, 0.75, 0.78),
             ("monitor", "laptop", "mug", "book", "lamp", "bottle", "plant")),
    Category("wardrobe", "wardrobes", "wall", (1.0, 0.55, 1.8), (1.6, 0.65, 2.2)),
    Category("table", "tables", "centre", (1.0, 0.7, 0.72), (1.4, 0.9, 0.78),
             ("mug", "book", "bottle", "vase", "bowl", "laptop", "plant", "box", "monitor")),
    Category("chair", "chairs", "centre", (0.42, 0.42, 0.8), (0.5, 0.5, 1.0)),
    Category("stool", "stools", "centre", (0.3, 0.3, 0.45), (0.4, 0.4, 0.7), ("mug", "book", "bowl")),
    Category("bin", "bins", "floor", (0.25, 0.25, 0.3), (0.4, 0.4, 0.5)),
    Category("plant", "plants", "floor", (0.35, 0.35, 0.6), (0.6, 0.6, 1.3), (), ("green",), "floor"),
    Category("lamp", "lamps", "floor", (0.3, 0.3, 1.4), (0.45, 0.45, 1.8), (), (), "floor"),
    Category("box", "boxes", "floor", (0.3, 0.3, 0.25), (0.6, 0.5, 0.5), ("box", "book", "bottle"),
             (), "floor"),
    Category("mug", "mugs", "surface", (0.08, 0.08, 0.09), (0.1, 0.1, 0.12)),
    Category("book", "books", "surface", (0.15, 0.2, 0.03), (0.22, 0.3, 0.06)),
    Category("bottle", "bottles", "surface", (0.06, 0.06, 0.2), (0.09, 0.09, 0.32)),
    Category("vase", "vases", "surface", (0.1, 0.1, 0.2), (0.18, 0.18, 0.4)),
    Category("bowl", "bowls", "surface", (0.15, 0.15, 0.06), (0.25, 0.25, 0.1)),
    Category("laptop", "laptops", "surface", (0.3, 0.22, 0.2), (0.38, 0.26, 0.25)),
    Category("monitor", "monitors", "surface", (0.45, 0.18, 0.35), (0.7, 0.22, 0.5), (), ("black", "white", "gray")),
    Category("pillow", "pillows", "surface", (0.4, 0.3, 0.1), (0.6, 0.45, 0.15)),
    # Second builds of the same names, used when they stand on a supporter.
    Category("plant", "plants", "surface", (0.15, 0.15, 0.2), (0.25, 0.25, 0.4), (), ("green",), "small"),
    Category("lamp", "lamps", "surface", (0.2, 0.2, 0.35), (0.3, 0.3, 0.55), (), (), "table"),
    Category("box", "boxes", "surface", (0.15, 0.15, 0.1), (0.3, 0.3, 0.25), ("book", "mug", "bottle"),
             (), "small"),
)

CATEGORY_NAMES: tuple[str, ...] = tuple(dict.fromkeys(c.name for c in CATEGORIES))
PLURALS: dict[str, str] = {c.name: c.plural for c in CATEGORIES}

# Albedo in [0, 1]. Distinct hues plus three greys so that colour is learnable from pixels
# but shading and texture noise keep it from being a single exact RGB value.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.78, 0.12, 0.12),
    "orange": (0.93, 0.48, 0.10),
    "yellow": (0.92, 0.82, 0.15),
    "green": (0.18, 0.60, 0.20),
    "blue": (0.15, 0.30, 0.80),
    "purple": (0.50, 0.20, 0.65),
    "pink": (0.95, 0.55, 0.70),
    "brown": (0.45, 0.28, 0.14),
    "black": (0.08, 0.08, 0.08),
    "white": (0.92, 0.92, 0.90),
    "gray": (0.50, 0.50, 0.50),
    "cyan": (0.15, 0.75, 0.80),
}
COLOUR_SYNONYMS: dict[str, tuple[str, ...]] = {"gray": ("grey",), "cyan": ("turquoise",)}

SUPPORTED_ON_FLOOR = "floor"


def categories_by_placement(placement: str) -> list[Category]:
    """All categories whose build is placed as `placement`."""
    return [c for c in CATEGORIES if c.placement == placement]


def surface_category(name: str) -> Category:
    """The build of `name` that stands on a supporter."""
    for c in CATEGORIES:
        if c.name == name and c.placement == "surface":
            return c
    raise KeyError(f"no surface build of category {name!r}")


def number_word(n: int) -> str:
    """English word for small counts (captions read better with words than digits)."""
    words = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
    return words[n] if 0 <= n < len(words) else str(n)
