"""Family entries of a study: structural ranges the budget solver picks shapes inside."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, Discriminator, Field, Strict, Tag, field_validator, model_validator

from .. import budget as budget_solver
from ..shapes import FAMILIES, IO_KINDS, parse_diag
from .vocabulary import AXIS_MAX, AXIS_USERS, Int, NonNegInt, PosInt, SpecModel, check_name, invalid


class IntRange(SpecModel):
    """``{min, max, step}``: the inclusive integer range ``min, min+step, …, ≤ max``."""

    min: Int
    max: Int
    step: PosInt = 1

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.min > self.max:
            raise invalid(f"min ({self.min}) must be ≤ max ({self.max})")
        return self

    def values(self) -> list[int]:
        return list(range(self.min, self.max + 1, self.step))


def _axis_tag(v: Any) -> str:
    if isinstance(v, (dict, IntRange)):
        return "range"
    if isinstance(v, (list, tuple)):
        return "list"
    return "int"


#: A structural axis: one value, a list of values, or an inclusive range.
Axis = Annotated[
    Union[
        Annotated[Int, Tag("int")],
        Annotated[list[Int], Field(min_length=1), Tag("list")],
        Annotated[IntRange, Tag("range")],
    ],
    Discriminator(_axis_tag),
]


def axis_values(axis: int | list[int] | IntRange) -> tuple[int, ...]:
    """The sorted distinct values an axis allows."""
    if isinstance(axis, IntRange):
        return tuple(axis.values())
    if isinstance(axis, int):
        return (axis,)
    return tuple(sorted(set(axis)))


def _axis_min(axis) -> int:
    """Smallest value, without materialising a (possibly huge) range."""
    return axis.min if isinstance(axis, IntRange) else min(axis_values(axis))


def _axis_len(axis) -> int:
    if isinstance(axis, IntRange):
        return len(range(axis.min, axis.max + 1, axis.step))
    return len(axis_values(axis))


def _check_diag(v: str) -> str:
    try:
        parse_diag(v)
    except (ValueError, AttributeError):
        raise invalid("unknown diagonal variant", ["scalar", "full", "none", "sparse:<s≥1>"]) from None
    return v


class FamilySpec(SpecModel):
    """Structural ranges of one family label; the budget solver picks shapes inside them.

    ``family`` defaults to the label (so ``dense: {...}`` needs no ``family:``); a
    label like ``deep_full`` names a variant and must say which family it is.
    ``diag`` and ``rank``/``branches`` only apply to the families that have them
    (changing them elsewhere is an error rather than silently ignored).
    """

    family: Literal[FAMILIES]  # type: ignore[valid-type]
    width: Axis
    depth: Axis
    rank: Axis = 1
    branches: Axis = 1
    diag: Annotated[str, Strict(), AfterValidator(_check_diag)] = "scalar"
    io: Literal[IO_KINDS] = "auto"  # type: ignore[valid-type]
    max_depth: Union[NonNegInt, Literal["auto"], None] = Field(
        "auto", description="deepest hidden stack the planner may use; auto → the measured "
        "default for DLoR families (budget.DEFAULT_MAX_DEPTH), none for others; null → no cap")

    @field_validator("width", "rank", "branches")
    @classmethod
    def _at_least_one(cls, v):
        if _axis_min(v) < 1:
            raise invalid(f"values must be ≥ 1 (smallest is {_axis_min(v)})")
        return v

    @field_validator("depth")
    @classmethod
    def _non_negative(cls, v):
        if _axis_min(v) < 0:
            raise invalid(f"values must be ≥ 0 (smallest is {_axis_min(v)})")
        return v

    @field_validator("width", "depth", "rank", "branches")
    @classmethod
    def _at_most(cls, v, info):
        """Bounded before any grid is built (`AXIS_MAX`)."""
        top = v.max if isinstance(v, IntRange) else max(axis_values(v))
        if top > AXIS_MAX[info.field_name]:
            raise invalid(f"values must be ≤ {AXIS_MAX[info.field_name]:,} (limit AXIS_MAX; largest is {top:,})")
        return v

    def resolved_max_depth(self) -> int | None:
        """The depth cap in force: ``auto`` resolves per family (`budget.default_max_depth`)."""
        if self.max_depth == "auto":
            return budget_solver.default_max_depth(self.family)
        return self.max_depth

    def rules(self) -> budget_solver.ShapeRules:
        """Trainability rules the planner keeps for this family (see `budget.ShapeRules`)."""
        return budget_solver.ShapeRules(max_depth=self.resolved_max_depth())

    def grid(self) -> dict:
        """The structural keyword arguments of `budget.solve` for this family."""
        return {
            "widths": axis_values(self.width),
            "depths": axis_values(self.depth),
            "ranks": axis_values(self.rank),
            "branches": axis_values(self.branches),
            "diag": self.diag if self.family in AXIS_USERS["diag"] else "none",
            "io": self.io,
        }

    def grid_size(self) -> int:
        """Shapes the solver would enumerate (computed without enumerating them)."""
        n = _axis_len(self.width) * _axis_len(self.depth)
        if self.family in AXIS_USERS["rank"]:
            n *= _axis_len(self.rank)
        if self.family in AXIS_USERS["branches"]:
            n *= _axis_len(self.branches)
        return n


def _check_label(v: str) -> str:
    check_name(v)
    if "@" in v or "/" in v:
        raise invalid("must not contain '@' or '/' (they separate cell keys)")
    return v


Label = Annotated[str, AfterValidator(_check_label)]
