"""Spec vocabulary: the names, limits and field types every spec model shares.

Why one place: the limits (`MAX_GRID`, `AXIS_MAX`, …) are checked before anything is
enumerated, and error texts cite them by name; the field types accept what YAML writes
(``1e3`` for an integer) and reject what it reads by accident (``true`` as a number).
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Strict
from pydantic_core import PydanticCustomError

from ..shapes import FAMILIES


#: Valid range of each hyperparameter: (low, high, low_inclusive, high_inclusive).
HPARAM_DOMAINS = {
    "lr": (0.0, math.inf, False, False),
    "weight_decay": (0.0, math.inf, True, False),
    "init_scale": (0.0, math.inf, False, False),
    "beta1": (0.0, 1.0, True, False),
    "beta2": (0.0, 1.0, True, False),
}
METRICS = ("mse", "rmse", "max_abs", "rel_l2")
#: Structural axes and the families that use them (others must leave them at the default).
AXIS_USERS = {
    "width": FAMILIES,
    "depth": FAMILIES,
    "rank": ("lowrank", "dlor_deep", "dlor_wide"),
    "branches": ("dlor_wide",),
    "diag": ("dlor_deep", "dlor_wide"),
}
#: Fields that say where a study runs/records, not what it computes (not hashed).
LOCATION_FIELDS = ("tracking_uri", "optuna_storage", "ray_address", "output_dir")
#: Shapes a family's grid may enumerate: the solver counts them vectorised (~20 ns a
#: shape) and builds only the fitting ones, so a wide width range × depth range is fine.
MAX_GRID = 500_000
#: All families' grids together (30 families of 99,999 shapes took minutes to plan).
MAX_TOTAL_GRID = 2_000_000
#: Plan-size bounds checked before anything is enumerated: a cell per (family, budget),
#: and axis values no machine could hold (``depth: 1e9`` would allocate gigabytes).
MAX_BUDGETS = 64
AXIS_MAX = {"width": 1_000_000, "depth": 10_000, "rank": 1_000_000, "branches": 10_000}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def invalid(msg: str, allowed: list[str] | None = None) -> PydanticCustomError:
    """A validation error whose text we control (pydantic's defaults are too generic)."""
    ctx: dict[str, Any] = {"msg": msg}
    if allowed:
        ctx["allowed"] = allowed
    return PydanticCustomError("dlor", "{msg}", ctx)


def as_integral(v: Any) -> Any:
    """Accept ``1e3``, ``1000.0`` or ``"1e3"`` where an integer is expected.

    YAML 1.1 (PyYAML) reads ``1e3`` as a *string*, and budgets are naturally written
    that way; integral values convert, anything else is left for strict int to reject.
    """
    if isinstance(v, bool):
        return v
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _no_bool(v: Any) -> Any:
    """``true`` is not a number (pydantic's lax float would read it as 1.0)."""
    if isinstance(v, bool):
        raise invalid("must be a number, not a boolean")
    return v


Int = Annotated[int, BeforeValidator(as_integral), Strict()]
PosInt = Annotated[Int, Field(ge=1)]
NonNegInt = Annotated[Int, Field(ge=0)]
Float = Annotated[float, BeforeValidator(_no_bool), Field(allow_inf_nan=False)]


def _int_or_auto(ge: int):
    """An integer ≥ ``ge`` or the string ``auto``, with one clear error for anything else."""

    def check(v: Any) -> Any:
        if v == "auto":
            return v
        n = as_integral(v)
        if isinstance(n, int) and not isinstance(n, bool):
            if n < ge:
                raise invalid(f"must be ≥ {ge} or 'auto'")
            return n
        raise invalid(f"must be an integer ≥ {ge} or 'auto'")

    return Annotated[Union[Annotated[int, Field(ge=ge)], Literal["auto"]], BeforeValidator(check)]


PosIntOrAuto = _int_or_auto(1)
NonNegIntOrAuto = _int_or_auto(0)


def check_name(v: str) -> str:
    """Names become folder names and Optuna/MLflow keys: no separators, no ``..``."""
    if not _NAME_RE.fullmatch(v) or ".." in v:  # fullmatch: "$" would allow a trailing newline
        raise invalid(
            "must be 1-64 letters, digits, '_', '.' or '-', start with a letter or digit "
            "and contain no '..' (it names a folder)"
        )
    return v


Name = Annotated[str, Strict(), AfterValidator(check_name)]


class SpecModel(BaseModel):
    """Base of every spec model: unknown keys are errors, values immutable once valid."""

    model_config = ConfigDict(extra="forbid", frozen=True)
