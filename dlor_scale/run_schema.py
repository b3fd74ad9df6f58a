"""The MLflow run schema of a study: tag keys, run kinds, param and metric names, member states.

Why one module: the writers (`worker` builds member records, `tracking` writes them,
`tune` tags study and cell runs, `analysis` records fits) and the readers (`records`,
`units`, `tracking.describe_fit_runs`, `tune.close_member_runs`) must agree on every
name, and a name spelled in two places drifts. (The study run's data params, ``target.*``
and ``data.*``, are `units`' own; the export table's columns are `records`'.) Plain constants: importable anywhere
(the torch-free ``spec`` takes `HPARAMS` from here).

Layout: one experiment per study; a ``kind=study`` run, a ``kind=cell`` child per
(family, budget), a ``kind=member`` grandchild per member, ``kind=fit`` runs for fits.
"""

from __future__ import annotations

#: The hyperparameters every member has (searched or fixed); others ride as ``hp_<name>``.
HPARAMS = ("lr", "weight_decay", "init_scale", "beta1", "beta2")

#: How a member ended. ``completed`` and ``pruned`` runs end FINISHED, the others FAILED.
MEMBER_STATES = ("completed", "pruned", "diverged", "failed")
FINISHED_STATES = ("completed", "pruned")


class Kind:
    """Values of the ``kind`` tag."""
    STUDY, CELL, MEMBER, FIT = "study", "cell", "member", "fit"


class Tag:
    """Run tag keys."""
    KEY = "dlor.key"                   # a run's deterministic key: get-or-create, exactly-once writes
    KIND = "kind"
    COMPLETE = "dlor.complete"         # "1" once a run's record is all in (rides in the last batch)
    STATE = "state"                    # a member's state (`MEMBER_STATES`)
    STUDY = "dlor.study"
    CELL = "dlor.cell"
    FAMILY = "dlor.family"
    LABEL = "dlor.label"
    BUDGET = "dlor.budget"
    PHASE = "dlor.phase"
    UNIT = "dlor.unit"
    COHORT_ID = "cohort_id"
    SPEC_HASH = "spec_hash"
    CODE_VERSION = "code_version"
    SEED = "dlor.seed"
    OPTUNA_STUDY = "optuna.study"
    OPTUNA_TRIAL = "optuna.trial"
    CONFIRM_OF = "dlor.confirm_of"
    LR_EDGE = "dlor.lr_edge"
    STOPPED_EARLY = "dlor.stopped_early"
    PRUNED = "dlor.pruned"
    # a cell's verdict (`tune.close_cell_runs`)
    FLAGS = "dlor.flags"
    POINT_ERROR = "dlor.point_error"
    POINT_N_PARAMS = "dlor.point_n_params"
    POINT_SOURCE = "dlor.point_source"
    # a fit run
    FIT_FORM = "fit.form"
    IDENTIFIED = "dlor.identified"
    NOT_IDENTIFIED = "dlor.not_identified"
    # MLflow's own
    PARENT_RUN_ID = "mlflow.parentRunId"
    NOTE = "mlflow.note.content"
    RUN_NAME = "mlflow.runName"
    EXPERIMENT_KIND = "mlflow.experimentKind"


class Param:
    """Param names of member runs (besides `HPARAMS`, the shape's and its counts')."""
    LABEL, BUDGET, SEED = "label", "budget", "seed"
    EPOCHS, BATCH_SIZE, REPORT_EVERY, METRIC, THRESHOLD = "epochs", "batch_size", "report_every", "metric", "threshold"
    N_PARAMS_TOTAL = "n_params_total"
    SHAPE_INTS = ("width", "depth", "rank", "branches")   # the shape's (`Shape.describe`)
    SHAPE_STRS = ("diag", "activation")
    HP_PREFIX = "hp_"          # hyperparameters beyond `HPARAMS`
    TRAIN_PREFIX = "train_"    # the cohort's training settings (slots, finish, …)


class Metric:
    """Metric keys of member runs: two curves (step = epoch) and finals (step 0)."""
    TRAIN_LOSS, VAL_ERROR = "train_loss", "val_error"
    TEST_ERROR, BEST_VAL = "test_error", "best_val"
    EPOCHS_TO_THRESHOLD, EPOCHS_TRAINED = "epochs_to_threshold", "epochs_trained"
    WALL_TIME_S, BEST_EPOCH = "wall_time_s", "best_epoch"
    STOPPED_EARLY, UNDERTRAINED, BASELINE_VAL = "stopped_early", "undertrained", "baseline_val"
    #: The finals, in the order of `records`' table columns (which carry the same names).
    FINALS = (TEST_ERROR, BEST_VAL, EPOCHS_TO_THRESHOLD, EPOCHS_TRAINED, WALL_TIME_S, BEST_EPOCH,
              STOPPED_EARLY, UNDERTRAINED, BASELINE_VAL)


class Flag:
    """A scaling point's diagnostics: the cell run's ``dlor.flags`` tag (comma-joined) and the
    ``flags`` column of the points table. Flagged points are kept out of the fit."""
    UNDERTRAINED = "undertrained"      # still improving when training ended
    NOT_TRAINED = "not_trained"        # best val ≥ 90 % of the mean predictor's
    LR_EDGE = {"low": "lr_edge:low", "high": "lr_edge:high"}   # lr at an edge of its range
    ALL = (UNDERTRAINED, LR_EDGE["low"], LR_EDGE["high"], NOT_TRAINED)


class FitMetric:
    """Suffixes of a fit run's metrics: ``<family>.<suffix>`` and ``<a>_vs_<b>.<suffix>``."""
    ALPHA, ALPHA_LO, ALPHA_HI, E, A = "alpha", "alpha_lo", "alpha_hi", "E", "A"
    EXTRAPOLATION_MAX_REL_ERR, EXTRAPOLATION_OK = "extrapolation_max_rel_err", "extrapolation_ok"
    ALPHA_IDENTIFIED, N_EXCLUDED = "alpha_identified", "n_excluded"
    DELTA_ALPHA, IDENTIFIED = "delta_alpha", "identified"
    DELTA_ALPHA_LO, DELTA_ALPHA_HI = "delta_alpha_lo", "delta_alpha_hi"


def fit_metric(owner: str, suffix: str) -> str:
    """A fit run's metric key: ``deep.alpha``, ``deep_vs_wide.delta_alpha``."""
    return f"{owner}.{suffix}"


def count_metrics(counts: dict) -> dict[str, float]:
    """A cell's search counts (`search.cell_counts`) as flat metric names of its cell run
    (``search.completed``, ``search.pruned_at_20`` …)."""
    out = {f"search.{k}": float(v) for k, v in counts.items() if k != "pruned_at"}
    out.update({f"search.pruned_at_{s}": float(n) for s, n in counts.get("pruned_at", {}).items()})
    return out


def state_counts(states=()) -> dict[str, int]:
    """How many members are in each state (every `MEMBER_STATES` present, zeros included)."""
    out = dict.fromkeys(MEMBER_STATES, 0)
    for s in states:
        out[s] = out.get(s, 0) + 1
    return out
