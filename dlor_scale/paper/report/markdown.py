"""Text of a report: number formats, Markdown tables, budget labels and the assembled summary."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

from ...run_schema import Metric

from .core import Section

def _e(v: float | None, digits: int = 2) -> str:
    """Compact scientific number for tables; NaN/None print as an en dash."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{digits}e}"



def _num(v: float) -> str:
    return "–" if not math.isfinite(v) else f"{v:,.0f}"



def _range(lo: float, hi: float, fmt: Callable[[float], str]) -> str:
    """'lo – hi', or a single dash when there is nothing to show (no successes, no finite values)."""
    return "–" if not (math.isfinite(lo) or math.isfinite(hi)) else f"{fmt(lo)} – {fmt(hi)}"



def _when(col: str, epochs, long: bool = False) -> str:
    """'val @ 500 ep' for a checkpoint column, 'test @ 5,000 ep' for the final test error."""
    if col != Metric.TEST_ERROR:
        e = int(col.rsplit("_", 1)[1])
        return f"after {e:,} epochs (val)" if long else f"val @ {e:,} ep"
    if isinstance(epochs, int):
        return f"after {epochs:,} epochs (test)" if long else f"test @ {epochs:,} ep"
    return "final (test)"



def _table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)



def _stats_table(stats) -> str:
    return _table(["family", "budget", "params", "n", "median", "IQR", "min", "best-by-val"],
                  [[s["family"], s["budget"], int(s["n_params"]), s["n"], _e(s["median"]),
                    _range(s["q25"], s["q75"], _e), _e(s["min"]), _e(s["best"])] for _, s in stats.iterrows()])



def render(title: str, sections: list[Section], base: Path, preamble: str = "") -> str:
    """The Markdown summary: title, one line per verdict, then each section."""
    lines = [f"# {title}", ""]
    if preamble:
        lines += [preamble, ""]
    verdicts = [(s.title, s.verdict.label) for s in sections if s.verdict is not None]
    if verdicts:
        lines += _table(["claim", "verdict"], [[t, v] for t, v in verdicts]).splitlines() + [""]
    for s in sections:
        lines.append(s.markdown(base))
    return "\n".join(lines).rstrip() + "\n"

