"""``train.max_minutes``: `ModelSelection` stops a run after the first epoch that ends past the wall-clock budget,
counting the epochs recorded before a resume, and says so (``stopped_by``)."""

from __future__ import annotations

import tf_keras as keras

from mdcns_tf.training.callbacks import ModelSelection


class StepClock:
    """A clock that moves only when told: each epoch lasts what the test says, whatever the machine."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def selection(tmp_path, max_seconds: float, patience: int = 100) -> ModelSelection:
    clock = StepClock()
    callback = ModelSelection("ndcg@20", patience, str(tmp_path / "best"), max_seconds=max_seconds, clock=clock)
    callback.test_clock = clock
    model = keras.Sequential([keras.layers.Dense(1, input_shape=(2,))])
    callback.set_model(model)
    model.stop_training = False
    return callback


def run_epochs(callback: ModelSelection, start: int, values: list[float], seconds: float, between: float = 0.0) -> int:
    """Runs epochs ``start``.. of ``seconds`` each, ``between`` seconds of other callbacks (a backup) after each,
    until the callback stops the model; returns the epochs run."""
    callback.on_train_begin()
    run = 0
    for epoch, value in enumerate(values, start=start):
        callback.on_epoch_begin(epoch)
        callback.test_clock.now += seconds
        callback.on_epoch_end(epoch, {"val_ndcg_20": value})
        callback.test_clock.now += between
        run += 1
        if callback.model.stop_training:
            break
    return run


def test_the_epoch_that_crosses_the_budget_is_the_last(tmp_path) -> None:
    callback = selection(tmp_path, max_seconds=100.0)
    assert run_epochs(callback, 0, [0.1, 0.2, 0.3, 0.4], seconds=40.0) == 3  # 40, 80, 120 >= 100
    assert callback.stopped_by == "time_budget"
    assert callback.best_epoch == 3


def test_no_budget_never_stops_the_run(tmp_path) -> None:
    callback = selection(tmp_path, max_seconds=0.0)
    assert run_epochs(callback, 0, [0.1, 0.2, 0.3, 0.4], seconds=1e6) == 4
    assert callback.stopped_by is None


def test_patience_is_reported_as_such(tmp_path) -> None:
    callback = selection(tmp_path, max_seconds=1e6, patience=2)
    assert run_epochs(callback, 0, [0.3, 0.2, 0.1, 0.05, 0.01], seconds=1.0) == 3
    assert callback.stopped_by == "patience"


def test_a_resumed_run_spends_only_what_is_left(tmp_path) -> None:
    first = selection(tmp_path, max_seconds=100.0)
    assert run_epochs(first, 0, [0.1, 0.2], seconds=40.0) == 2  # 80 s spent, then the process is killed
    assert first.stopped_by is None
    resumed = selection(tmp_path, max_seconds=100.0)
    assert run_epochs(resumed, 2, [0.3, 0.4], seconds=40.0) == 1  # 120 s >= 100 after one more epoch, not three
    assert resumed.stopped_by == "time_budget"
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert [h["epoch_seconds"] for h in resumed.history] == [40.0, 40.0, 40.0]


def test_the_time_between_epochs_counts_against_the_budget(tmp_path) -> None:
    # 30 s epochs and 10 s of backup after each: 30, 70, 110 >= 100 at the third epoch (not 90 at the third)
    callback = selection(tmp_path, max_seconds=100.0)
    assert run_epochs(callback, 0, [0.1, 0.2, 0.3, 0.4], seconds=30.0, between=10.0) == 3
    assert [h["epoch_seconds"] for h in callback.history] == [30.0, 40.0, 40.0]
