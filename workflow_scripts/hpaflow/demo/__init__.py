"""A synthetic, learnable, HPA-like demo set in the exact Kaggle layout (plus TIFF and HPAv18 JPEG variants).

Each field holds a few cells: blue nuclei, red microtubule filaments, yellow ER texture
(none depend on the label, as in real data) and, in green, the sum of one spatial
pattern per present class (`PATTERNS`, one documented function per class), drawn in the look of
the field's antibody (`Look`: per-class gains, overall gain, off-target background, texture,
smooth or granular stain), which its HPAv18 fields and test siblings share. Label sets
are drawn from the real competition's label-set frequencies (`label_sets.tsv`), so the
demo keeps the real imbalance and co-occurrence.

Modules: label_sets (which labels), geometry (cells and the label-independent channels),
patterns (the green pattern of each class, a whole field), writers (the three file layouts),
make (the set, rule demo_data).
"""

from .geometry import Field, make_field
from .label_sets import count_label_sets, load_label_sets, sample_label_sets
from .make import (
    SPLITS,
    DemoSpec,
    antibody_group,
    antibody_groups,
    antibody_look,
    antibody_number,
    field_look,
    make_demo,
    planted,
    siblings,
)
from .patterns import PATTERNS, Look, draw_look, green_plane, render
from .writers import hpav18_id, kaggle_id, write_hpav18_jpeg, write_png, write_tiff

__all__ = [
    "PATTERNS",
    "SPLITS",
    "DemoSpec",
    "Field",
    "Look",
    "antibody_group",
    "antibody_groups",
    "antibody_look",
    "antibody_number",
    "count_label_sets",
    "draw_look",
    "field_look",
    "green_plane",
    "hpav18_id",
    "kaggle_id",
    "load_label_sets",
    "make_demo",
    "make_field",
    "planted",
    "render",
    "sample_label_sets",
    "siblings",
    "write_hpav18_jpeg",
    "write_png",
    "write_tiff",
]
