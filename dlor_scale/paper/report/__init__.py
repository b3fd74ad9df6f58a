"""Reproduction reports for arXiv 2605.05659: figures, numbers and a verdict per paper claim.

Why a separate package: the paper's claims come in two kinds, and both must end in the
same place (a Markdown summary with PNG figures, also logged to MLflow as a run tagged
``kind=report``) so REPRODUCTION.md can cite one artefact per claim:

* **Analytic** claims need no training; they are checked by the explicit constructions
  of `construct` (float64, deterministic, seconds): ``reconstruction``, ``construction``
  and ``rank1`` (`analytic`).
* **Trained** claims come from studies launched with ``dlor-scale launch`` (the specs are
  in ``studies/paper/``); the member table of `records.member_runs` is summarised by
  one section per claim (`studies`, `scaling`): fixed epoch budget (Fig. 4a/b), time to
  threshold and success rate (Fig. 4c/d), rank-1 floor with training, generalisation
  (Fig. 6) and the fitted scaling curves (the "parameter-to-expressivity" claim).

Entry point: `make_report` (``dlor-scale report TARGET [--out DIR]``,
``python -m dlor_scale.paper.report``).  The section functions take plain data (an Arrow or
pandas member table plus the study's spec values) so they can be tested on hand-built
tables without MLflow.

Every section ends in a `Verdict` built from named, numeric `Check`s, so "reproduced"
always says which inequality held with which numbers.  The thresholds of the checks are
our reading of the paper's wording (it publishes few numbers; REPRODUCTION.md lists each
reading) and are stated in each check's text.

Modules: `core` (constants, Check/Verdict/Section), `stats` (member tables → per-cell
statistics), `analytic`, `studies`, `scaling` (the sections), `figures` (study figures,
matplotlib helpers), `markdown` (tables, number formats, the summary), `mlflow_io`
(reading a study back, logging a report), `build` (`make_report`, `main`).
"""

#: Resolution of the PNG figures (tests lower it: rendering dominates their run time).
#: `figures._save` reads it from here at call time, so setting it on the package works.
FIG_DPI = 110

from .analytic import (  # noqa: E402
    ANALYTIC_BUILDERS, CONSTRUCTION_ACTIVATIONS, CONSTRUCTION_HS, _pwl_product, construction_section,
    rank1_section, reconstruction_section,
)
from .build import ANALYTIC, ANALYTIC_EXPERIMENT, ANALYTIC_URI, main, make_report  # noqa: E402
from .core import (  # noqa: E402
    COLORS, PAPER_DEEP_ERROR, PAPER_THRESHOLD, ROLES, X1X2_FLOOR_RMS, Check, Section, Verdict, verdict,
)
from .markdown import render  # noqa: E402
from .mlflow_io import (  # noqa: E402
    _step_scale, add_checkpoint_errors, add_final_train_loss, log_report, study_meta,
)
from .scaling import scaling_section  # noqa: E402
from .stats import (  # noqa: E402
    TRAINED_STATES, cell_stats, clopper_pearson, final_rows, member_frame, roles, threshold_stats, trained,
)
from .studies import (  # noqa: E402
    SECTIONS, STUDY_KINDS, analytic_floor, fixed_budget_section, generalization_section, rank1_floor_section,
    study_kind, study_sections, time_to_threshold_section,
)

__all__ = [
    "ANALYTIC", "ANALYTIC_BUILDERS", "ANALYTIC_EXPERIMENT", "ANALYTIC_URI", "COLORS", "CONSTRUCTION_ACTIVATIONS",
    "CONSTRUCTION_HS", "FIG_DPI", "PAPER_DEEP_ERROR", "PAPER_THRESHOLD", "ROLES", "SECTIONS", "STUDY_KINDS",
    "TRAINED_STATES", "X1X2_FLOOR_RMS", "Check", "Section", "Verdict", "add_checkpoint_errors",
    "add_final_train_loss", "analytic_floor", "cell_stats", "clopper_pearson", "construction_section",
    "final_rows", "fixed_budget_section", "generalization_section", "log_report", "main", "make_report",
    "member_frame", "rank1_floor_section", "rank1_section", "reconstruction_section", "render", "roles",
    "scaling_section", "study_kind", "study_meta", "study_sections", "threshold_stats",
    "time_to_threshold_section", "trained", "verdict",
]
