"""Scale-aware recipes: settings tuned on a small model that transfer to a large one."""

from __future__ import annotations

from trimtab.scaling.attention import attention_scale
from trimtab.scaling.coord import CoordCheck, coord_check
from trimtab.scaling.init import InitRecord, init_
from trimtab.scaling.recipe import recipe
from trimtab.scaling.report import GroupChoice, RecipeReport
from trimtab.scaling.structure import ParamInfo, classify

__all__ = [
    "CoordCheck",
    "GroupChoice",
    "InitRecord",
    "ParamInfo",
    "RecipeReport",
    "attention_scale",
    "classify",
    "coord_check",
    "init_",
    "recipe",
]
