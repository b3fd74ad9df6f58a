"""Study specification: the YAML a researcher writes, validated before anything runs.

Why so strict: a scaling study is hours of cluster time. A typo (``widht``), an
impossible budget or a pruner that can never prune must fail in the first second,
with a message that says *where* in the file and *what* is allowed, not as a stack
trace an hour later. So every model forbids unknown keys, every error is rewritten as

    <file>: <yaml.path>: <what is wrong> (got <value>); allowed: <values>

and after field validation the cross-field rules run, ending with the budget solver:
every (family, budget) cell must be realisable by at least one concrete shape.

Entry points: `load_study` (a file), `parse_study` (an already-parsed mapping),
`study_json_schema` (for ``dlor-scale schema``).

Modules: `vocabulary` (names, limits, field types), `families`, `distributions` (search
space), `sampler_pruner` (their settings), `study` (the `Study` model), `locations` (where
a study may land), `problems` (error texts), `checks` (cross-field rules and search
guard rails), `loading` (YAML → `Study`). Torch-free and Ray-free: `validate` runs here.
"""

from ..run_schema import HPARAMS
from .checks import search_problems, search_warnings
from .distributions import Distribution, SearchParam
from .families import FamilySpec, IntRange, axis_values
from .loading import MAX_SPEC_BYTES, MAX_YAML_DEPTH, MAX_YAML_NODES, load_study, parse_study
from .locations import check_locations, check_study_folder, read_study_marker, system_folder
from .problems import Problem
from .sampler_pruner import PrunerSpec, SamplerSpec
from .study import Study, study_json_schema, target_io
from .vocabulary import (AXIS_MAX, HPARAM_DOMAINS, LOCATION_FIELDS, MAX_BUDGETS, MAX_GRID,
                         MAX_TOTAL_GRID, METRICS)

__all__ = [
    "AXIS_MAX", "Distribution", "FamilySpec", "HPARAMS", "HPARAM_DOMAINS", "IntRange", "LOCATION_FIELDS",
    "MAX_BUDGETS", "MAX_GRID", "MAX_SPEC_BYTES", "MAX_TOTAL_GRID", "MAX_YAML_DEPTH", "MAX_YAML_NODES",
    "METRICS", "Problem", "PrunerSpec", "SamplerSpec", "SearchParam", "Study", "axis_values",
    "check_locations", "check_study_folder", "load_study", "parse_study", "read_study_marker",
    "search_problems", "search_warnings", "study_json_schema", "system_folder", "target_io",
]
