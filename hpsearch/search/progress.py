"""A study's progress as the live display reads it: counts by state, the best value (of several
objectives, the front's size), and the trials that ended since the last reading."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.record import study_counts
from hpsearch.storage.counts import best_value, front_size

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class StudyProgress:
    """A study's counts, for the live display: read after each trial ends."""

    target: int
    complete: int
    pruned: int
    failed: int
    best_value: float | None  # None for a study of several objectives: it has a front
    started_at: float  # time.monotonic() of this run's start
    trials_this_run: int  # finished (complete or pruned) since this run started
    # Trials that finished (complete, pruned or failed) since the last reading, by number.
    new_trials: tuple[FrozenTrial, ...] = ()
    front: int | None = None  # of several objectives: the feasible Pareto-optimal trials

    @property
    def finished(self) -> int:
        return self.complete + self.pruned


@dataclass
class ProgressReader:
    """Reads a study's progress; each call also returns the trials finished since the last."""

    study: optuna.Study
    target: int
    list_trials: bool = True  # False: counts only (a worker nobody watches)
    started: float = field(default_factory=time.monotonic)
    _finished_before: int | None = field(default=None, init=False)
    _seen: set[int] | None = field(default=None, init=False)  # trials already listed
    _ended_last: int = field(default=-1, init=False)

    def __call__(self) -> StudyProgress:
        counts = study_counts(self.study)
        finished = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
        ended = finished + counts[TrialState.FAIL]
        new: list[FrozenTrial] = []
        if self.list_trials and ended != self._ended_last:  # read trials only when some ended
            self._ended_last = ended
            states = (*FINISHED, TrialState.FAIL)
            trials = self.study.get_trials(deepcopy=False, states=states)
            if self._seen is None:  # the first reading: what ended before this run
                self._seen = {t.number for t in trials}
            else:
                new = [t for t in trials if t.number not in self._seen]
                self._seen.update(t.number for t in new)
        if self._finished_before is None:
            self._finished_before = finished
        return StudyProgress(
            target=self.target,
            complete=counts[TrialState.COMPLETE],
            pruned=counts[TrialState.PRUNED],
            failed=counts[TrialState.FAIL],
            best_value=best_value(self.study) if counts[TrialState.COMPLETE] else None,
            started_at=self.started,
            trials_this_run=finished - self._finished_before,
            new_trials=tuple(new),
            front=front_size(self.study),
        )
