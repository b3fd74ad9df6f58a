"""A lockstep cohort in miniature, for driving `search.OptunaSource` without torch."""

from __future__ import annotations

import math

from dlor_scale.cohort import MemberResult, Report


def curve(lr: float, epoch: int) -> float:
    """A val-error curve whose quality is set by lr: best near lr = 1e-2, with an early
    ranking that matches the final one (so a correct pruner keeps the good ones)."""
    quality = abs(math.log10(lr) + 2.0)
    return (0.1 + quality) * (1.0 + 5.0 / (1.0 + epoch))


def run_lockstep(source, **kw):
    """Run `lockstep_rounds` to the end: ``(results, rounds)``."""
    rounds = lockstep_rounds(source, **kw)
    while True:
        try:
            next(rounds)
        except StopIteration as done:
            return done.value


def lockstep_rounds(source, *, slots, epochs, report_every, val=curve, patience_stop=None):
    """A lockstep cohort in miniature: same refill / report / finish order as `Cohort`.
    A generator that yields after every report round (so tests can interleave cohorts)
    and returns ``(results, rounds)``."""
    members = {}
    results = {}

    def refill():
        while len(members) < slots:
            spec = source.next_member()
            if spec is None:
                return
            members[spec.key] = {"spec": spec, "epoch": 0, "curve": [], "best": math.inf}

    refill()
    rounds = []
    while members:
        for m in members.values():
            m["epoch"] += 1
        due = [k for k, m in members.items() if m["epoch"] % report_every == 0 or m["epoch"] >= epochs]
        if not due:
            continue
        reports = []
        for k in due:
            m = members[k]
            v = val(m["spec"].lr, m["epoch"])
            m["curve"].append((m["epoch"], v))
            m["best"] = min(m["best"], v)
            reports.append(Report(k, m["epoch"], v, v))
        pruned = set(source.on_report_round(reports))
        rounds.append((sorted(r.epoch for r in reports), pruned))
        for k in due:
            m = members[k]
            state = ("pruned" if k in pruned else "completed" if m["epoch"] >= epochs
                     else "stopped" if patience_stop and patience_stop(m) else None)
            if state is None:
                continue
            del members[k]
            res = MemberResult(key=k, state="completed" if state == "stopped" else state, epochs=m["epoch"],
                               train_loss=m["curve"], val_error=m["curve"], best_val=m["best"],
                               test_error=m["best"], epochs_to_threshold=None, wall_time_s=0.0,
                               spec=m["spec"], stopped_early=state == "stopped")
            results[k] = res
            source.on_finish(res)
        refill()
        yield
    return results, rounds
