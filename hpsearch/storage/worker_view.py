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


@dataclass
class _Pending:
    """A running trial's rows not yet written, those already written (a second write of a
    param or a step replaces its row), and when they last were."""

    params: dict[str, tuple[float, BaseDistribution]] = field(default_factory=dict)
    values: dict[int, float] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    written_params: set[str] = field(default_factory=set)
    written_steps: set[int] = field(default_factory=set)
    flushed_at: float | None = None


@dataclass
class _Own:
    """A trial this worker started: its study, the trial as this worker has it, its pending
    rows (None once this worker has finished it), and for a new trial the study's slots
    taken before it when it was created (``optuna_internals.trials_before``)."""

    study_id: int
    trial: FrozenTrial
    pending: _Pending | None
    taken_before: int | None = None


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

    Otherwise it keeps Optuna's storage contract (``optuna.testing.pytest_storages``, run
    in tests/storage/test_optuna_conformance.py): what is written through the view reads
    back through it at once, a param's distribution must agree with the study's, a second
    report of a step replaces the first. The one deviation, by design: other processes'
    writes show at the next ``refresh``, not at once. The claim refreshes whenever a trial
    has ended elsewhere, and Optuna's samplers read the study only at the ask, so each sees
    every trial finished until then; a pruner judges a running trial against the others as
    they were at its claim (tests/search/test_coordinator.py,
    ``test_a_claim_shows_the_sampler_every_trial_finished_elsewhere``).

    Every other call passes straight to ``backend``; readers (the dashboard, ``optuna``)
    see ordinary Optuna rows.
    """

    def __init__(
        self,
        backend: optuna.storages.BaseStorage,
        flush_s: float = FLUSH_S,
        report_attrs: Container[str] = (),
    ) -> None:
        """``report_attrs``: user attributes that are reports, written as reports are (a
        learning curve kept as an attribute)."""
        self.backend = optuna.storages.get_storage(backend)
        rdb = internals.rdb_of(self.backend)
        if rdb is None:
            raise TypeError("WorkerStorage batches writes to a database storage only")
        self.rdb = rdb
        self.flush_s = flush_s
        self.report_attrs = report_attrs
        self._trials: dict[int, list[FrozenTrial]] = {}  # study id -> trials at last refresh
        self._own: dict[int, _Own] = {}  # trial id -> a trial this worker started
        # study id -> each param's distribution in the study (built when first needed)
        self._distributions: dict[int, dict[str, BaseDistribution]] = {}

    # Reading the study.

    def refresh(self, study_id: int) -> None:
        """Read the study's trials (only those changed since the last read)."""
        self._forget(study_id)
        self._trials[study_id] = self.backend.get_all_trials(study_id, deepcopy=False)
        # Finished trials the read shows finished need no copy of this worker's any more.
        ended = {internals.trial_id(t) for t in self._trials[study_id] if t.state.is_finished()}
        for id_ in [i for i, own in self._own.items() if own.pending is None and i in ended]:
            del self._own[id_]

    def _forget(self, study_id: int | None = None) -> None:
        """Drop the snapshot of ``study_id`` (of every study if None): written through this
        view, it is read again when next needed."""
        for cache in (self._trials, self._distributions):
            if study_id is None:
                cache.clear()
            else:
                cache.pop(study_id, None)

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
        """The snapshot, as this worker has its own trials, plus those created since it.
        Running trials are copies: later writes must not change a list handed out."""

        def mine(trial: FrozenTrial) -> FrozenTrial:
            own = self._own.get(internals.trial_id(trial))
            if own is None:
                return trial
            return copy.deepcopy(own.trial) if own.pending is not None else own.trial

        snapshot = self._trials[study_id]
        known = {internals.trial_id(t) for t in snapshot}
        trials = [mine(t) for t in snapshot]
        trials += [
            mine(own.trial)
            for id_, own in self._own.items()
            if own.study_id == study_id and id_ not in known
        ]
        trials.sort(key=lambda t: t.number)
        return trials

    def get_trial(self, trial_id: int) -> FrozenTrial:
        own = self._own.get(trial_id)
        return copy.deepcopy(own.trial) if own is not None else self.backend.get_trial(trial_id)

    def _study_distributions(self, study_id: int) -> dict[str, BaseDistribution]:
        """Each param's distribution in the study, as the first trial that has it set it."""
        if study_id not in self._distributions:
            known: dict[str, BaseDistribution] = {}
            for trial in self.get_all_trials(study_id, deepcopy=False):
                for name, distribution in trial.distributions.items():
                    known.setdefault(name, distribution)
            self._distributions[study_id] = known
        return self._distributions[study_id]

    # The running trials: kept here, written in batches.

    def _start(self, study_id: int, trial: FrozenTrial, taken_before: int | None = None) -> None:
        # A trial taken from the queue (a retry) may have rows already: those are replaced.
        pending = _Pending(
            written_params=set(trial.params), written_steps=set(trial.intermediate_values)
        )
        self._own[internals.trial_id(trial)] = _Own(study_id, trial, pending, taken_before)

    def taken_before(self, trial_id: int) -> int | None:
        """The slots of its study taken before the trial ``trial_id`` when this worker created
        it (read with the new trial, for the claim's check); None for a trial taken from the
        queue."""
        own = self._own.get(trial_id)
        return own.taken_before if own is not None else None

    def _running(self, trial_id: int) -> tuple[FrozenTrial, _Pending] | None:
        """This worker's running trial ``trial_id`` and its pending rows, if it is one."""
        own = self._own.get(trial_id)
        if own is None or own.pending is None:
            return None
        return own.trial, own.pending

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        created = self.backend.create_new_trial(study_id, template_trial)
        if template_trial is None:  # Study.ask: a RUNNING trial for this worker
            self._start(study_id, *internals.new_trial(self.rdb.engine, created))
        else:  # Study.add_trial, enqueue_trial: read with the study next time
            self._forget(study_id)
        return created

    def set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: BaseDistribution,
    ) -> None:
        running = self._running(trial_id)
        if running is None:
            self.backend.set_trial_param(trial_id, param_name, param_value_internal, distribution)
            self._forget()
            return
        trial, pending = running
        known = self._study_distributions(self._own[trial_id].study_id)
        if param_name in known:  # raises ValueError, as Optuna's storages do
            optuna.distributions.check_distribution_compatibility(known[param_name], distribution)
        else:
            known[param_name] = distribution
        trial.params[param_name] = distribution.to_external_repr(param_value_internal)
        trial.distributions[param_name] = distribution
        pending.params[param_name] = (param_value_internal, distribution)

    def set_trial_intermediate_value(
        self, trial_id: int, step: int, intermediate_value: float
    ) -> None:
        running = self._running(trial_id)
        if running is None:
            self.backend.set_trial_intermediate_value(trial_id, step, intermediate_value)
            self._forget()
            return
        trial, pending = running
        trial.intermediate_values[step] = intermediate_value
        pending.values[step] = intermediate_value
        self._flush_if_due(trial_id, pending)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        running = self._running(trial_id)
        if running is None:
            self.backend.set_trial_user_attr(trial_id, key, value)
            self._forget()
            return
        trial, pending = running
        trial.user_attrs[key] = value
        pending.attrs[key] = value
        if key in self.report_attrs:
            self._flush_if_due(trial_id, pending)

    def _flush_if_due(self, trial_id: int, pending: _Pending) -> None:
        """A report: written at once if it is the trial's first, else every ``flush_s``."""
        flushed_at = pending.flushed_at
        if flushed_at is None or time.monotonic() - flushed_at >= self.flush_s:
            self.flush(trial_id)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        # Rare (the successive-halving pruner's rungs), and read by other workers: at once.
        self.backend.set_trial_system_attr(trial_id, key, value)
        running = self._running(trial_id)
        if running is None:
            self._forget()
        else:
            running[0].system_attrs[key] = value

    def flush(self, trial_id: int) -> None:
        """Write the running trial ``trial_id``'s pending rows in one transaction.

        Raises:
            UpdateFinishedTrialError: another worker has failed the trial (it went stale).
        """
        running = self._running(trial_id)
        if running is None:
            return
        trial, pending = running
        if pending.params or pending.values or pending.attrs:
            engine = self.rdb.engine
            replace = (pending.written_params & set(pending.params),
                       pending.written_steps & set(pending.values))  # fmt: skip

            def write() -> bool:
                return internals.write_trial_rows(
                    engine, trial_id, pending.params, pending.values, pending.attrs, *replace
                )

            if not with_db_retries(write, "writing reports"):
                raise optuna.exceptions.UpdateFinishedTrialError(
                    f"trial {trial.number} was finished by another worker"
                )
            pending.written_params.update(pending.params)
            pending.written_steps.update(pending.values)
            for rows in (pending.params, pending.values, pending.attrs):
                rows.clear()
        pending.flushed_at = time.monotonic()

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        running = self._running(trial_id)
        if running is None:
            changed = self.backend.set_trial_state_values(trial_id, state, values)
            self._forget()
            if changed and state == TrialState.RUNNING:  # Study.ask took a waiting trial
                study_id = internals.study_of_trial(self.rdb.engine, trial_id)
                self._start(study_id, self.backend.get_trial(trial_id))
            return changed
        try:
            self.flush(trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            del self._own[trial_id]  # another worker failed it
            raise
        changed = self.backend.set_trial_state_values(trial_id, state, values)
        if changed and state.is_finished():
            trial = running[0]
            trial.state = state
            trial.values = list(values) if values is not None else None
            trial.datetime_complete = datetime.datetime.now()
            self._own[trial_id].pending = None
        return changed

    # Everything else: straight through.

    def create_new_study(
        self, directions: Sequence[optuna.study.StudyDirection], study_name: str | None = None
    ) -> int:
        return self.backend.create_new_study(directions, study_name)

    def delete_study(self, study_id: int) -> None:
        self.backend.delete_study(study_id)
        self._forget(study_id)  # the id may be reused by a new study
        for id_ in [i for i, own in self._own.items() if own.study_id == study_id]:
            del self._own[id_]

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
