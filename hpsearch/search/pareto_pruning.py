"""Pruning for studies of several objectives, which Optuna's pruners do not take
(``Trial.report`` and ``should_prune`` raise for them): ``DominatedPruner``.

Written here because no library offers it. The rule is MO-ASHA-like: the learning curve
(the study's validation metric) is recorded every evaluated epoch, in the trial's ``curve``
user attribute (``{"epoch": value}``; not as Optuna's intermediate values, which Optuna 5.1's
TPE sampler fails on in a study of several objectives), and a trial is stopped at
an epoch where enough trials of no greater cost, compared at that same epoch, were better.
Costs known before training (parameters, size, FLOPs, latency; ``training.costs``) are
known for every trial from its start, so a cheap trial is only compared with trials at
least as cheap: a small model that learns slowly is not stopped by big ones that learn
fast, and the cheap end of the front keeps being explored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch import record

# The costs every trial records before its first epoch (``training.costs.model_costs``'s;
# named here, since the search's bookkeeping imports no torch).
KNOWN_BEFORE_TRAINING = ("params", "size_bytes", "flops", "latency_ms")


class DominatedPruner(optuna.pruners.BasePruner):
    """Stop a trial at epoch ``e`` when, among the finished trials that reached ``e`` and
    cost no more on each objective known before training, at least ``min_peers`` exist
    and more than ``fraction`` of them had a better learning-curve value at ``e``: there,
    it is dominated by them.

    ``metrics``/``directions`` are the study's objectives, ``curve`` the one reported every
    epoch (``StudyConfig.metric``: the first validation metric). Objectives known only
    after training (another validation metric, training seconds) take no part. With no cost
    among the objectives, the rule is a median rule on the learning curve (``fraction``
    0.5).
    """

    def __init__(
        self,
        metrics: Sequence[str],
        directions: Sequence[str],
        curve: str,
        *,
        n_startup_trials: int = 5,
        n_warmup_steps: int = 1,
        min_peers: int = 3,
        fraction: float = 0.5,
    ) -> None:
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"fraction must be in [0, 1), got {fraction}")
        if min(n_startup_trials, n_warmup_steps, min_peers) < 0:
            raise ValueError("n_startup_trials, n_warmup_steps and min_peers must be >= 0")
        self.curve = curve
        self.maximize = directions[list(metrics).index(curve)] == "maximize"
        self.costs = [
            (m, d == "maximize")
            for m, d in zip(metrics, directions, strict=True)
            if m in KNOWN_BEFORE_TRAINING
        ]
        self.n_startup_trials = n_startup_trials
        self.n_warmup_steps = n_warmup_steps
        self.min_peers = max(min_peers, 1)
        self.fraction = fraction

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        """Optuna's pruner interface, on a trial's stored ``curve``."""
        curve = trial.user_attrs.get(record.CURVE, {})
        if not curve:
            return False
        step = max(curve, key=int)
        return self.dominated(study, int(step), float(curve[step]), trial.user_attrs)

    def dominated(
        self, study: optuna.Study, step: int, value: float, costs: Mapping[str, Any]
    ) -> bool:
        """Whether a trial of ``costs`` whose learning curve is at ``value`` at epoch
        ``step`` is stopped there."""
        if step < self.n_warmup_steps:
            return False
        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        if sum(t.state == TrialState.COMPLETE for t in finished) < self.n_startup_trials:
            return False
        key = str(step)
        peers = [
            float(t.user_attrs[record.CURVE][key])
            for t in finished
            if key in t.user_attrs.get(record.CURVE, {}) and self._no_costlier(t.user_attrs, costs)
        ]
        if len(peers) < self.min_peers:
            return False
        better = sum((v > value) if self.maximize else (v < value) for v in peers)
        return better > self.fraction * len(peers)

    def _no_costlier(self, peer: Mapping[str, Any], costs: Mapping[str, Any]) -> bool:
        for name, maximize in self.costs:
            mine, theirs = costs.get(name), peer.get(name)
            if mine is None or theirs is None:
                return False
            if (theirs < mine) if maximize else (theirs > mine):
                return False
        return True
