"""The search space: one Optuna distribution (or a fixed value) per hyperparameter."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Tag, model_validator

from ..run_schema import HPARAMS
from .vocabulary import HPARAM_DOMAINS, Float, SpecModel, invalid


class Distribution(SpecModel):
    """One Optuna distribution. Field names follow ``trial.suggest_*`` on purpose."""

    type: Literal["float", "int", "categorical"]
    low: Float | None = None
    high: Float | None = None
    log: bool = False
    step: Float | None = None
    choices: list[Float] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Distribution:
        if self.type == "categorical":
            if not self.choices:
                raise invalid("categorical needs a non-empty 'choices' list")
            if len(set(self.choices)) != len(self.choices):
                raise invalid(f"choices contain duplicates: {self.choices}")
            extra = [k for k in ("low", "high", "step") if getattr(self, k) is not None]
            if extra or self.log:
                raise invalid(f"categorical takes only 'choices' (drop {', '.join(extra) or 'log'})")
            return self
        if self.choices is not None:
            raise invalid(f"'choices' is only for type categorical (this is {self.type})")
        if self.low is None or self.high is None:
            raise invalid(f"type {self.type} needs both 'low' and 'high'")
        if not self.low < self.high:
            raise invalid(f"low ({self.low}) must be < high ({self.high})")
        if self.log and self.low <= 0:
            raise invalid(f"log scale needs low > 0 (low is {self.low})")
        if self.step is not None:
            if self.step <= 0:
                raise invalid(f"step must be > 0 (step is {self.step})")
            if self.log:
                raise invalid("Optuna cannot combine log with step; drop one of them")
        if self.type == "int":
            bad = [k for k in ("low", "high", "step") if getattr(self, k) is not None
                   and float(getattr(self, k)) != int(getattr(self, k))]
            if bad:
                raise invalid(f"type int needs integer {', '.join(bad)}")
            for k in ("low", "high", "step"):
                if getattr(self, k) is not None:
                    object.__setattr__(self, k, int(getattr(self, k)))
        return self

    def bounds(self) -> tuple[float, float]:
        """Smallest and largest value it can produce (for domain checks)."""
        if self.type == "categorical":
            return min(self.choices), max(self.choices)
        return float(self.low), float(self.high)


def _param_tag(v: Any) -> str:
    return "distribution" if isinstance(v, (dict, Distribution)) else "constant"


#: A search-space entry: a distribution to sample, or a plain number held fixed.
SearchParam = Annotated[
    Union[Annotated[Distribution, Tag("distribution")], Annotated[Float, Tag("constant")]],
    Discriminator(_param_tag),
]
HParam = Literal[HPARAMS]  # type: ignore[valid-type]


def in_domain(name: str, lo: float, hi: float) -> bool:
    d_lo, d_hi, lo_inc, hi_inc = HPARAM_DOMAINS[name]
    ok_lo = lo >= d_lo if lo_inc else lo > d_lo
    ok_hi = hi <= d_hi if hi_inc else hi < d_hi
    return ok_lo and ok_hi


def domain_text(name: str) -> str:
    lo, hi, lo_inc, hi_inc = HPARAM_DOMAINS[name]
    return f"{'[' if lo_inc else '('}{lo:g}, {hi:g}{']' if hi_inc else ')'}"
