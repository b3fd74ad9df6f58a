"""Live progress for `dlor-scale launch`: cells done, member states, ETA.

Fed from the driver through a Ray Tune callback (workers report after every finished
member), so it costs nothing in the training loop.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from .run_schema import MEMBER_STATES


class Progress:
    def __init__(self, console: Console | None = None, live: bool = True):
        self.console = console or Console(stderr=True)
        self.live_enabled = live
        self.live: Live | None = None
        self.units: dict[str, dict] = {}
        self.latest: dict[str, dict] = {}
        self.done_units: set[str] = set()
        self.t0 = time.time()
        self.total_members = 0
        self.cells: dict[str, set[str]] = {}

    # -------------------------------------------------------------- driver hooks
    def start(self, plan, units: list[dict], study) -> None:
        self.t0 = time.time()
        self.add_phase(units)
        if self.live_enabled:
            self.live = Live(self.render(), console=self.console, refresh_per_second=2, transient=False)
            self.live.start()

    def add_phase(self, units: list[dict]) -> None:
        for u in units:
            self.units[u["id"]] = u
            self.cells.setdefault(u["cell"], set()).add(u["id"])
            self.total_members += u.get("quota") or len(u.get("members", []))
        self.refresh()

    def mark_done(self, units: list[dict], study_dir: Path) -> None:
        from .studydir import UnitFiles
        for u in units:
            done = UnitFiles(study_dir, u["id"]).read_done()   # corrupt: None, set aside, logged
            if done is not None:
                self.latest[u["id"]] = done
                self.done_units.add(u["id"])
        self.refresh()

    def update(self, result: dict) -> None:
        uid = result.get("unit")
        if uid is None:
            return
        self.latest[uid] = result
        if result.get("done"):
            self.done_units.add(uid)
        self.refresh()

    def stop(self) -> None:
        if self.live is not None:
            self.live.update(self.render())
            self.live.stop()
            self.live = None

    def refresh(self) -> None:
        if self.live is not None:
            self.live.update(self.render())

    # -------------------------------------------------------------- view
    def counts(self) -> dict:
        c = {s: 0 for s in MEMBER_STATES}
        for r in self.latest.values():
            for s in MEMBER_STATES:
                c[s] += int(r.get(s, 0))
        return c

    def render(self) -> Table:
        c = self.counts()
        finished = sum(c.values())
        cells_done = sum(1 for ids in self.cells.values() if ids <= self.done_units)
        running_units = len([u for u in self.latest if u not in self.done_units])
        elapsed = time.time() - self.t0
        eta = "—"
        if 0 < finished < self.total_members:
            eta = f"{elapsed / finished * (self.total_members - finished):.0f}s"
        t = Table(title="dlor-scale study", show_header=True, expand=False)
        for col in ("cells done", "units running", "members done", "completed", "pruned", "diverged",
                    "failed", "elapsed", "ETA"):
            t.add_column(col, justify="right")
        t.add_row(f"{cells_done}/{len(self.cells)}", str(running_units), f"{finished}/{self.total_members}",
                  str(c["completed"]), str(c["pruned"]), str(c["diverged"]), str(c["failed"]),
                  f"{elapsed:.0f}s", eta)
        return t

    def tune_callback(self):
        """A Tune callback that forwards results here; holds only a registry id, so
        Tune can pickle it with the run config (the live display is not picklable)."""
        _REGISTRY[id(self)] = self
        return _make_callback(id(self))


_REGISTRY: dict[int, Progress] = {}


def _make_callback(pid: int):
    from ray.tune import Callback

    global ProgressCallback

    if ProgressCallback is None:
        class _ProgressCallback(Callback):
            def __init__(self, progress_id: int):
                self.progress_id = progress_id

            def on_trial_result(self, iteration, trials, trial, result, **info):
                prog = _REGISTRY.get(self.progress_id)
                if prog is not None:
                    prog.update(result)

        _ProgressCallback.__qualname__ = _ProgressCallback.__name__ = "ProgressCallback"
        ProgressCallback = _ProgressCallback
    return ProgressCallback(pid)


ProgressCallback = None
