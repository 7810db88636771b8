"""Which running trials of a shared sweep are still alive, on any Optuna storage.

A worker stamps its running trial every ``period`` seconds from a thread; a trial whose last
stamp (or, before the first one, its start) is older than three periods belongs to a worker
that died, and whichever worker looks next marks it failed. Optuna's own heartbeat exists only
for RDB storages (not for a journal file) and never fails a trial that died before its first
beat; this one needs nothing of a storage but its public trial attributes.
"""

from __future__ import annotations

import contextlib
import threading
import time

from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

KEY = "polyfocal:heartbeat"
LAPSED_PERIODS = 3


@contextlib.contextmanager
def beating(storage, trial_id: int, period: float):
    """Stamp the trial now and every ``period`` seconds until the block ends."""
    stop = threading.Event()

    def beat():
        while not stop.wait(period):
            with contextlib.suppress(UpdateFinishedTrialError):  # failed meanwhile by another worker
                storage.set_trial_system_attr(trial_id, KEY, time.time())

    storage.set_trial_system_attr(trial_id, KEY, time.time())
    thread = threading.Thread(target=beat, name=f"polyfocal-heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def last_sign_of_life(trial) -> float:
    """The trial's last stamp, or its start when it has none yet (as a Unix time)."""
    stamp = trial.system_attrs.get(KEY)
    return float(stamp) if stamp is not None else trial.datetime_start.timestamp()


def fail_lapsed(storage, study_id: int, period: float) -> list[int]:
    """Mark failed every running trial silent for more than ``LAPSED_PERIODS`` periods; their numbers."""
    now, failed = time.time(), []
    for trial in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
        if now - last_sign_of_life(trial) > LAPSED_PERIODS * period:
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            with contextlib.suppress(UpdateFinishedTrialError):  # it finished in the meantime
                storage.set_trial_state_values(trial_id, TrialState.FAIL)
                failed.append(trial.number)
    return failed
