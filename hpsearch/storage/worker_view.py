"""``WorkerStorage``: one worker's view of a shared storage, on Optuna's storage interface,
that makes a trial's bookkeeping cheap (its writes batched, the study read once per claim)."""

from __future__ import annotations

import copy
import datetime
import time
from collections.abc import Container, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from hpsearch.storage import optuna_internals as internals
from hpsearch.storage.errors import with_db_retries

# The longest a running trial's reports wait before they reach the database (and the
# dashboard); the first report and the tell are written at once.
FLUSH_S = 2.0
# The user attribute that holds the learning curve of a study of several objectives, which
# Optuna's reports do not take (``search.pareto_pruning``): written as reports are.
CURVE = "curve"


@dataclass
class _Pending:
    """A running trial's rows not yet written, and when they last were."""

    params: dict[str, tuple[float, BaseDistribution]] = field(default_factory=dict)
    values: dict[int, float] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    flushed_at: float | None = None


class WorkerStorage(optuna.storages.BaseStorage):
    """One worker's view of a shared storage, built on Optuna's storage interface.

    - The running trials' params, reports and user attributes (one trial, or a group's
      several) are kept here and written in one transaction per trial: at its first report,
      then at most every ``FLUSH_S``, and before its tell
      (``optuna_internals.write_trial_rows``). A killed worker loses at most the last
      ``FLUSH_S`` of reports (its checkpoint has them anyway); one killed before its trial's
      first report leaves a trial without params, whose retry samples afresh.
    - The study's trials are read at most once per claim (``refresh``), and only when
      another worker has finished one since: the sampler and the pruner see the study as
      it was when the trial started, plus this worker's own trials and reports.
    - Trials this worker finished stay finished in its view (Optuna 5.0's trial cache can
      keep showing them RUNNING once a later trial has finished).

    Every other call passes straight to ``backend``; readers (the dashboard, ``optuna``)
    see ordinary Optuna rows.
    """

    def __init__(self, backend: optuna.storages.BaseStorage, flush_s: float = FLUSH_S) -> None:
        self.backend = optuna.storages.get_storage(backend)
        rdb = internals.rdb_of(self.backend)
        if rdb is None:
            raise TypeError("WorkerStorage batches writes to a database storage only")
        self.rdb = rdb
        self.flush_s = flush_s
        self._trials: dict[int, list[FrozenTrial]] = {}  # study id -> trials at last refresh
        self._finished: dict[int, FrozenTrial] = {}  # trial id -> as this worker told it
        self._running: dict[int, FrozenTrial] = {}  # trial id -> as this worker has it
        self._pending: dict[int, _Pending] = {}

    # Reading the study.

    def refresh(self, study_id: int) -> None:
        """Read the study's trials (only those changed since the last read)."""
        self._trials[study_id] = self.backend.get_all_trials(study_id, deepcopy=False)

    def _view(self, trial: FrozenTrial) -> FrozenTrial:
        id_ = internals.trial_id(trial)
        return self._own(id_) or self._finished.get(id_, trial)

    def get_all_trials(
        self,
        study_id: int,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        if study_id not in self._trials:
            self.refresh(study_id)
        trials = self._with_own(study_id)
        if trials and trials[-1].number != len(trials) - 1:
            # Other workers' trials numbered below this worker's newest are missing: read
            # them, so that trial n is the list's n-th (Optuna's GA samplers index it so).
            self.refresh(study_id)
            trials = self._with_own(study_id)
        if states is not None:
            trials = [t for t in trials if t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    def _with_own(self, study_id: int) -> list[FrozenTrial]:
        """The snapshot, as this worker has its own trials, plus those created since it."""
        snapshot = self._trials[study_id]
        known = {internals.trial_id(t) for t in snapshot}
        own = [*self._finished.values(), *self._running.values()]
        trials = [self._view(t) for t in snapshot]
        trials += [t for t in own if internals.trial_id(t) not in known]
        trials.sort(key=lambda t: t.number)
        return trials

    def get_trial(self, trial_id: int) -> FrozenTrial:
        mine = self._own(trial_id) or self._finished.get(trial_id)
        return copy.deepcopy(mine) if mine is not None else self.backend.get_trial(trial_id)

    # The running trials: kept here, written in batches.

    def _start(self, trial: FrozenTrial) -> None:
        id_ = internals.trial_id(trial)
        self._running[id_] = trial
        self._pending[id_] = _Pending()

    def _own(self, id_: int) -> FrozenTrial | None:
        """This worker's running trial ``id_``, if it is one."""
        return self._running.get(id_)

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        created = self.backend.create_new_trial(study_id, template_trial)
        if template_trial is None:  # Study.ask: a RUNNING trial for this worker
            self._start(internals.new_trial(self.rdb.engine, created))
        return created

    def set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: BaseDistribution,
    ) -> None:
        running = self._own(trial_id)
        if running is None:
            self.backend.set_trial_param(trial_id, param_name, param_value_internal, distribution)
            return
        running.params[param_name] = distribution.to_external_repr(param_value_internal)
        running.distributions[param_name] = distribution
        self._pending[trial_id].params[param_name] = (param_value_internal, distribution)

    def set_trial_intermediate_value(
        self, trial_id: int, step: int, intermediate_value: float
    ) -> None:
        running = self._own(trial_id)
        if running is None:
            self.backend.set_trial_intermediate_value(trial_id, step, intermediate_value)
            return
        running.intermediate_values[step] = intermediate_value
        self._pending[trial_id].values[step] = intermediate_value
        self._flush_if_due(trial_id)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        running = self._own(trial_id)
        if running is None:
            self.backend.set_trial_user_attr(trial_id, key, value)
            return
        running.user_attrs[key] = value
        self._pending[trial_id].attrs[key] = value
        if key == CURVE:
            self._flush_if_due(trial_id)

    def _flush_if_due(self, trial_id: int) -> None:
        """A report: written at once if it is the trial's first, else every ``flush_s``."""
        flushed_at = self._pending[trial_id].flushed_at
        if flushed_at is None or time.monotonic() - flushed_at >= self.flush_s:
            self.flush(trial_id)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        # Rare (the successive-halving pruner's rungs), and read by other workers: at once.
        self.backend.set_trial_system_attr(trial_id, key, value)
        running = self._own(trial_id)
        if running is not None:
            running.system_attrs[key] = value

    def flush(self, trial_id: int) -> None:
        """Write the running trial ``trial_id``'s pending rows in one transaction.

        Raises:
            UpdateFinishedTrialError: another worker has failed the trial (it went stale).
        """
        running, pending = self._running.get(trial_id), self._pending.get(trial_id)
        if running is None or pending is None:
            return
        rows = (pending.params, pending.values, pending.attrs)
        if any(rows):
            engine = self.rdb.engine
            written = with_db_retries(
                lambda: internals.write_trial_rows(engine, trial_id, *rows), "writing reports"
            )
            if not written:
                raise optuna.exceptions.UpdateFinishedTrialError(
                    f"trial {running.number} was finished by another worker"
                )
            for written_rows in rows:
                written_rows.clear()
        pending.flushed_at = time.monotonic()

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        running = self._own(trial_id)
        if running is None:
            changed = self.backend.set_trial_state_values(trial_id, state, values)
            if changed and state == TrialState.RUNNING:  # Study.ask took a waiting trial
                self._start(self.backend.get_trial(trial_id))
            return changed
        try:
            self.flush(trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            del self._running[trial_id], self._pending[trial_id]  # another worker failed it
            raise
        changed = self.backend.set_trial_state_values(trial_id, state, values)
        if changed and state.is_finished():
            finished = copy.deepcopy(running)
            finished.state = state
            finished.values = list(values) if values is not None else None
            finished.datetime_complete = datetime.datetime.now()
            self._finished[trial_id] = finished
            del self._running[trial_id], self._pending[trial_id]
        return changed

    # Everything else: straight through.

    def create_new_study(
        self, directions: Sequence[optuna.study.StudyDirection], study_name: str | None = None
    ) -> int:
        return self.backend.create_new_study(directions, study_name)

    def delete_study(self, study_id: int) -> None:
        self.backend.delete_study(study_id)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self.backend.set_study_user_attr(study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self.backend.set_study_system_attr(study_id, key, value)

    def get_study_id_from_name(self, study_name: str) -> int:
        return self.backend.get_study_id_from_name(study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self.backend.get_study_name_from_id(study_id)

    def get_study_directions(self, study_id: int) -> list[optuna.study.StudyDirection]:
        return self.backend.get_study_directions(study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self.backend.get_study_user_attrs(study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self.backend.get_study_system_attrs(study_id)

    def get_all_studies(self) -> list[Any]:  # FrozenStudy, which Optuna does not export
        return self.backend.get_all_studies()

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self.backend.get_trial_id_from_study_id_trial_number(study_id, trial_number)
