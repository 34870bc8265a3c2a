"""Keras callbacks of the training loop (worker-mean logs, the shuffle epoch, model selection, progress lines) and
`make_callbacks`, which chooses a run's callbacks from its config and puts them in the order they must run."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable

import tensorflow as tf
import tf_keras as keras

from mdcns_tf import metrics
from mdcns_tf.config import Config, ConfigError
from mdcns_tf.runs import state as run_state
from mdcns_tf.training.distribution import num_workers

log = logging.getLogger("mdcns_tf.train")


class WorkerMeanLogs(keras.callbacks.Callback):
    """Corrects the epoch logs of a multi-worker run before the other callbacks read them.

    Keras reduces what a custom ``train_step``/``test_step`` returns with its "auto" reduction, a SUM over workers
    under `MultiWorkerMirroredStrategy`, so a mean comes out multiplied by the number of workers (Keras replaces the
    logs with the cross-worker metric results only when a step returns every metric of the model, which ours do not).
    Validation values are re-read from the ranking trackers, which outside the replicas aggregate totals and counts
    over all workers (exact); training means are divided by the worker count (exact for equal shards).
    """

    def __init__(self, workers: int) -> None:
        super().__init__()
        self.workers = workers

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is None:
            return
        trackers = {"val_" + t.name: t for t in getattr(self.model, "ranking_trackers", {}).values()}
        for key in list(logs):
            if key in trackers:
                logs[key] = float(trackers[key].result())
            elif not key.startswith("val_"):
                logs[key] = float(logs[key]) / self.workers


class ShuffleEpoch(keras.callbacks.Callback):
    """Keeps the epoch variable that seeds the training shuffle (`data.train_dataset`) at the epoch about to run.

    Keras creates an epoch's data iterator after the previous epoch's ``on_epoch_end`` and before its own
    ``on_epoch_begin``, so the next epoch is set at the end of each epoch; the first one is set before `fit`.
    """

    def __init__(self, variable: tf.Variable) -> None:
        super().__init__()
        self.variable = variable

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.variable.assign(epoch + 1)


class ModelSelection(keras.callbacks.Callback):
    """Early stopping on a validation metric with the best weights kept on disk.

    Unlike `keras.callbacks.EarlyStopping`, its state (best value, best epoch, epochs without improvement) and the
    best weights survive a killed run, so a run resumed by `BackupAndRestore` selects the same model. The state
    records the run's identity ``run`` (`mdcns_tf.runs.state.identity`: run id, config hash, data fingerprint),
    which says which run, config and data the best weights come from.
    """

    def __init__(
        self,
        monitor: str,
        patience: int,
        directory: str,
        run: dict[str, str] | None = None,
        max_seconds: float = 0.0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        super().__init__()
        self.monitor = "val_" + metrics.keras_name(monitor)
        self.patience = patience
        # train.max_minutes: the training budget in seconds (0 = none), summed over the recorded epochs' durations so
        # that a resumed run spends what is left of it, not a new one.
        self.max_seconds = max_seconds
        self.stopped_by: str | None = None  # "patience" or "time_budget" when this callback ended the run
        self.clock = clock
        # The end of the previous epoch's record: an epoch's seconds run from it, so the callbacks between two
        # epochs (BackupAndRestore writes every table and its Adam slots: seconds at 1M items) count too.
        self.last_mark = clock()
        self.directory = directory
        self.run = dict(run or {})
        self.state_path = os.path.join(directory, run_state.STATE_FILE)
        self.weights_path = os.path.join(directory, "weights")
        self.best = -math.inf
        self.best_epoch = 0
        self.wait = 0
        self.history: list[dict[str, float]] = []

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.last_mark = self.clock()
        os.makedirs(self.directory, exist_ok=True)
        state = run_state.read_best_state(self.directory, os.path.dirname(self.directory))
        if state is not None:
            self.best, self.best_epoch, self.wait = state["best"], state["best_epoch"], state["wait"]
            self.history = state["history"]
        self.resuming = True

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        # A run killed after this callback saved epoch e but before `BackupAndRestore` did resumes at epoch e
        # again: forget what was recorded for it and later epochs, and replay the selection state.
        if getattr(self, "resuming", False):
            self.resuming = False
            self.history = [h for h in self.history if h["epoch"] <= epoch]
            self.best, self.best_epoch, self.wait = -math.inf, 0, 0
            for h in self.history:
                value = h.get(self.monitor)
                if value is None:
                    continue
                if value > self.best:
                    self.best, self.best_epoch, self.wait = value, h["epoch"], 0
                else:
                    self.wait += 1

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        # wall_time (unix seconds at the epoch's end, validation included): time-to-quality curves measure from
        # the moment a benchmark launched the process, start-up included.
        now = self.clock()
        seconds, self.last_mark = now - self.last_mark, now
        self.history.append(
            {
                "epoch": epoch + 1,
                "wall_time": time.time(),
                "epoch_seconds": round(seconds, 3),
                **{k: float(v) for k, v in logs.items()},
            }
        )
        value = logs.get(self.monitor)
        if value is not None:
            if value > self.best:
                self.best, self.best_epoch, self.wait = float(value), epoch + 1, 0
                self.model.save_weights(self.weights_path)
            else:
                self.wait += 1
                if self.wait >= self.patience:
                    log.info("early stop: no %s improvement for %d evaluations", self.monitor, self.wait)
                    self.model.stop_training = True
                    self.stopped_by = "patience"
        spent = self.training_seconds()
        if self.max_seconds and spent >= self.max_seconds and not self.model.stop_training:
            log.info("time budget: %.0f s of training spent (train.max_minutes %g)", spent, self.max_seconds / 60)
            self.model.stop_training = True
            self.stopped_by = "time_budget"
        state = {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait, "history": self.history}
        tmp = self.state_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({**state, **self.run}, f)
        os.replace(tmp, self.state_path)

    def training_seconds(self) -> float:
        """Seconds of training (validation included) over the recorded epochs, before a resume too."""
        return sum(h.get("epoch_seconds", 0.0) for h in self.history)

    def restore_best(self) -> bool:
        """Loads the best validated epoch's weights; False (the model keeps its last weights) when this run
        validated no epoch that set a best value: validation_freq above the epochs run, or NaN metrics."""
        if not self.best_epoch:
            return False
        self.model.load_weights(self.weights_path).expect_partial()
        return True


class ProgressLog(keras.callbacks.Callback):
    """One log line an epoch with the epoch time and an ETA, and the sampler's end-of-epoch hook."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs = epochs
        self.epoch_seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        seconds = time.perf_counter() - self.started
        self.epoch_seconds.append(seconds)
        remaining = (self.epochs - epoch - 1) * sum(self.epoch_seconds) / len(self.epoch_seconds)
        monitored = {k: round(float(v), 4) for k, v in (logs or {}).items() if k in ("loss", "val_ndcg_20")}
        log.info("epoch %d/%d took %.1fs, ETA %.0fs at most; %s", epoch + 1, self.epochs, seconds, remaining, monitored)
        for hook in getattr(self.model, "epoch_end_hooks", lambda: [])():
            hook(epoch)


class TrainingDiverged(ConfigError):
    """The training loss stopped being a finite number: the run stops, reports no metric and exports nothing. A
    `ConfigError`: the fix is in the config (the learning rate), and the entry point reports it as one line."""


class StopOnDivergence(keras.callbacks.Callback):
    """Stops `fit` at the first batch whose loss is NaN or infinite (Keras's `TerminateOnNaN` does the same, but
    leaves no record of it): ``diverged`` then holds the epoch and the loss, and the run fails with
    `TrainingDiverged` instead of evaluating, writing metrics or exporting weights that are not numbers."""

    def __init__(self) -> None:
        super().__init__()
        self.diverged: tuple[int, float] | None = None
        self.epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)) and self.diverged is None:
            self.diverged = (self.epoch, float(loss))
            self.model.stop_training = True

    def check(self, learning_rate: float) -> None:
        """Raises `TrainingDiverged` when the loss diverged, with what to change."""
        if self.diverged is not None:
            epoch, loss = self.diverged
            raise TrainingDiverged(
                f"training diverged in epoch {epoch} (loss {loss}): no metric is reported and nothing is exported; "
                f"lower train.learning_rate (now {learning_rate:g}), and start again with --restart"
            )


def make_callbacks(
    config: Config,
    strategy: tf.distribute.Strategy,
    selection: ModelSelection,
    progress: ProgressLog,
    divergence: StopOnDivergence,
    shuffle_epoch: tf.Variable | None,
) -> list[keras.callbacks.Callback]:
    """The fit callbacks, in the order their ``on_epoch_end`` must run (logs fixed first, backup last)."""
    callbacks: list[keras.callbacks.Callback] = [divergence, progress, selection]
    if num_workers(strategy) > 1:
        callbacks.insert(0, WorkerMeanLogs(num_workers(strategy)))
    if shuffle_epoch is not None:
        callbacks.append(ShuffleEpoch(shuffle_epoch))
    if config.train.backup_and_restore:
        # Epoch-level: a run killed mid-epoch redoes that epoch from its start (Keras handles the chief/worker dirs).
        callbacks.append(keras.callbacks.BackupAndRestore(os.path.join(config.output_dir, "backup")))
    if config.train.tensorboard:
        callbacks.append(
            keras.callbacks.TensorBoard(os.path.join(config.output_dir, "tensorboard"), update_freq="epoch")
        )
    return callbacks
