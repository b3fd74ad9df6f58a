"""Pruners of a cell's Optuna study: lockstep versions of Optuna's, judged against peers.

Why not Optuna's stock pruners: Median/Percentile compare against *completed* trials
and SuccessiveHalving promotes whoever reaches a rung first. In a packed cohort every
member of a wave reaches each report step in the same round and none completes until
the wave ends, so the stock pruners never fire (or fire on arrival order). The
pruners here judge a member against every trial of the cell *at the same step* —
running peers of this cohort, members of earlier waves (pruned or finished) and
other cohorts of the cell — read from the cell's Optuna study. They are ordinary
`optuna.pruners.BasePruner`s (so ``trial.should_prune()`` works too), and
`OptunaSource.on_report_round` calls `PeerPruner.judge` once per round, after every
member of the round has reported.

The intermediate value a member reports is its *best val error so far*: the trial's
objective is best val over its training, so the value at step e is exactly what the
objective would be had training stopped at e. That makes a finished member's value
a valid stand-in at later steps (see `PeerPruner.carried`), and a pruned trial's
value (Optuna sets it from the last intermediate value) comparable for TPE.
"""

from __future__ import annotations

import math

import numpy as np
import optuna
from optuna.trial import TrialState


def report_steps(epochs: int, report_every: int) -> list[int]:
    """Epochs at which members report: multiples of ``report_every`` and the last epoch."""
    return sorted(set(range(report_every, epochs + 1, report_every)) | {epochs})


class PeerPruner(optuna.pruners.BasePruner):
    """Judge a trial against every trial of its study that reached the same step.

    Subclasses say which steps they read (`reads`) and decide (`judge`); this class
    builds the peer table. A trial that finished before ``step`` (stopped early, or
    pruned) still counts where `carried` says so, with its final value: a member that
    left the race is not a member that vanished, or each later round would compare the
    survivors only with each other and halve them again.
    """

    #: Whether pruned trials stay in the comparison after their last step.
    carry_pruned = True

    def __init__(self, *, epochs: int, report_every: int):
        self.epochs = int(epochs)
        self.steps = [s for s in report_steps(self.epochs, int(report_every)) if s < self.epochs]

    def reads(self, number: int, step: int) -> bool:
        """Whether trial ``number`` is judged at ``step`` (only these steps are told)."""
        raise NotImplementedError

    def judge(self, number: int, step: int, value: float, peers: dict[int, float]) -> bool:
        """Prune trial ``number`` (``value`` at ``step``) given ``peers`` (other trials)?"""
        raise NotImplementedError

    def carried(self, t: optuna.trial.FrozenTrial) -> float | None:
        if t.state == TrialState.COMPLETE or (self.carry_pruned and t.state == TrialState.PRUNED):
            return t.value
        return None

    def table(self, trials, step: int) -> dict[int, float]:
        """``{trial number: value at step}`` over all trials that count at ``step``."""
        out = {}
        for t in trials:
            v = t.intermediate_values.get(step)
            if v is None and t.state.is_finished() and (t.last_step is None or t.last_step < step):
                v = self.carried(t)
            if v is not None and math.isfinite(v):
                out[t.number] = float(v)
        return out

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or not self.reads(trial.number, step):
            return False
        peers = self.table(study.get_trials(deepcopy=False), step)
        peers.pop(trial.number, None)
        return self.judge(trial.number, step, trial.intermediate_values[step], peers)


class LockstepPercentilePruner(PeerPruner):
    """Prune a member whose best val so far is worse than the ``percentile`` of its peers
    at the same step (Optuna's PercentilePruner, with peers = every trial at that step).

    ``n_startup_trials`` / ``n_min_trials``: at least that many *other* trials must have a
    value at the step (stock Optuna counts completed trials, which a lockstep wave never
    has). Steps before ``n_warmup_steps`` are not judged; after it, the first report step
    of every ``interval_steps`` window is.
    """

    def __init__(self, percentile: float, *, n_startup_trials: int = 5, n_warmup_steps: int = 0,
                 interval_steps: int = 1, n_min_trials: int = 1, epochs: int, report_every: int):
        super().__init__(epochs=epochs, report_every=report_every)
        self.percentile = float(percentile)
        self.n_peers = max(int(n_startup_trials), int(n_min_trials), 1)
        read, window = set(), None
        for s in self.steps:
            if s >= n_warmup_steps and (s - n_warmup_steps) // interval_steps != window:
                window = (s - n_warmup_steps) // interval_steps
                read.add(s)
        self.read = read

    def reads(self, number: int, step: int) -> bool:
        return step in self.read

    def judge(self, number, step, value, peers) -> bool:
        if len(peers) < self.n_peers:
            return False
        return value > float(np.percentile(list(peers.values()), self.percentile))


class LockstepMedianPruner(LockstepPercentilePruner):
    """`LockstepPercentilePruner` at the median."""

    def __init__(self, **kw):
        super().__init__(50.0, **kw)


def halving_rungs(epochs: int, report_every: int, min_resource: int | str, eta: int,
                  rate: int = 0, max_resource: int | None = None) -> list[int]:
    """Rung epochs ``min_resource · ηᵏ`` (k ≥ ``rate``), each moved up to the next report
    step, below ``max_resource`` (default: the last epoch, where nobody is pruned).

    ``min_resource: auto`` puts the first rung at a fifth of the epochs (`AUTO_FIRST_RUNG`;
    at η = 3 the rungs are 1/5 and 3/5 of training). Measured on the quickstart cells
    (benchmarks/README.md, search section): rungs at 2/15 and 1/3 saved more but lost a
    cell's winner to an early misranking twice as often.
    """
    top = min(epochs, max_resource or epochs)
    steps = [s for s in report_steps(epochs, report_every) if s < top]
    r = max(1.0, epochs * AUTO_FIRST_RUNG) if min_resource == "auto" else float(min_resource)
    r *= eta ** rate
    out = []
    while steps and r <= steps[-1]:
        s = next(x for x in steps if x >= r - 1e-9)
        if not out or s > out[-1]:
            out.append(s)
        r *= eta
    return out


#: ``min_resource: auto``: the first rung's share of the epochs.
AUTO_FIRST_RUNG = 0.2


class LockstepHalvingPruner(PeerPruner):
    """Cohort-synchronous successive halving (ASHA rule): at each rung, keep a member iff
    it is in the top ``1/η`` (at least one) of every trial that reached that rung.

    A lockstep wave reaches a rung together, so the first wave is a true synchronous
    bracket; refilled members are judged against the rung's whole history, as in ASHA.
    Pruned trials do not count at later rungs (they did not reach them); members that
    finished early do, with their final value.
    """

    carry_pruned = False

    def __init__(self, *, min_resource: int | str = "auto", reduction_factor: int = 3,
                 min_early_stopping_rate: int = 0, epochs: int, report_every: int):
        super().__init__(epochs=epochs, report_every=report_every)
        self.eta = int(reduction_factor)
        self.rungs = halving_rungs(self.epochs, report_every, min_resource, self.eta,
                                   int(min_early_stopping_rate))

    def reads(self, number: int, step: int) -> bool:
        return step in self.rungs

    def judge(self, number, step, value, peers) -> bool:
        keep = max(1, (len(peers) + 1) // self.eta)
        return sum(v < value for v in peers.values()) >= keep


class LockstepHyperbandPruner(PeerPruner):
    """Hyperband over lockstep halving: brackets with later and later first rungs
    (the last one never prunes), trials dealt round-robin by number, each judged only
    against its own bracket. A hedge for cells where early curves mislead."""

    carry_pruned = False

    def __init__(self, *, min_resource: int = 1, max_resource: int | str = "auto",
                 reduction_factor: int = 3, epochs: int, report_every: int):
        super().__init__(epochs=epochs, report_every=report_every)
        self.eta = int(reduction_factor)
        top = self.epochs if max_resource == "auto" else int(max_resource)
        n = int(math.floor(math.log(max(top / min_resource, 1.0), self.eta) + 1e-9)) + 1
        self.brackets = [halving_rungs(self.epochs, report_every, min_resource, self.eta, s, top)
                         for s in range(n)]

    def bracket(self, number: int) -> int:
        return number % len(self.brackets)

    def reads(self, number: int, step: int) -> bool:
        return step in self.brackets[self.bracket(number)]

    def judge(self, number, step, value, peers) -> bool:
        b = self.bracket(number)
        same = [v for n, v in peers.items() if self.bracket(n) == b]
        keep = max(1, (len(same) + 1) // self.eta)
        return sum(v < value for v in same) >= keep


def make_pruner(cfg, *, epochs: int | None = None, report_every: int | None = None
                ) -> optuna.pruners.BasePruner:
    """The cell's pruner. Median, percentile, successive halving and hyperband are the
    lockstep versions above (they need the study's ``epochs`` and ``report_every`` to
    place their steps); wilcoxon is Optuna's own; none never prunes."""
    kind = cfg.kind
    p = cfg.model_dump(exclude={"kind"})
    if kind == "none":
        return optuna.pruners.NopPruner()
    if kind == "wilcoxon":
        return optuna.pruners.WilcoxonPruner(**p)
    if epochs is None or report_every is None:
        raise ValueError(f"the {kind} pruner needs epochs and report_every")
    at = {"epochs": epochs, "report_every": report_every}
    if kind == "median":
        return LockstepMedianPruner(**p, **at)
    if kind == "percentile":
        return LockstepPercentilePruner(**p, **at)
    if kind == "successive_halving":
        return LockstepHalvingPruner(**p, **at)
    if kind == "hyperband":
        return LockstepHyperbandPruner(**p, **at)
    raise ValueError(f"unknown pruner {kind!r}")


def pruner_steps(pruner) -> list[int] | None:
    """The steps a lockstep pruner can prune at (for plans and guard rails); None if
    it is not a lockstep pruner."""
    if isinstance(pruner, LockstepHyperbandPruner):
        return sorted({s for b in pruner.brackets for s in b})
    if isinstance(pruner, LockstepHalvingPruner):
        return list(pruner.rungs)
    if isinstance(pruner, LockstepPercentilePruner):
        return sorted(pruner.read)
    return None
