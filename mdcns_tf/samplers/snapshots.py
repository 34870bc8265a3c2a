"""Per-epoch snapshots of the model, for samplers that compare a user's scores across epochs (SRNS, GDNS).

The SRNS authors (dingjingtao/SRNS, ``SRNS_main.py``) score a fixed monitor set of 3000 items a user at every epoch
end and keep the last 5 epochs of those scores (60 MB per 1000 users). What produces the scores is much smaller:
the item table at the end of an epoch and the user's representation in that epoch. Both are kept here, so that
``score^e(u, j) = state_u^e . E^e[j]`` of epoch e is available for *any* item j, a monitor set of the whole
catalogue: a candidate seen for the first time today already has its score history.

* ``table``: the item table, written at every training step into the current epoch's slot; the epoch's last write
  stays, i.e. the table at the end of the epoch (the authors' snapshot time).
* ``user_state``: the user's reference state (its dropout-free state at its last trained position, the state the
  user's latest item is predicted from) at its visit in the epoch. With ``train_positions: all`` a user is visited
  once an epoch; with prefix samples (``last``) the epoch's latest visit wins.

A ring of ``window + 1`` slots: epochs ``e - window .. e - 1`` are read while epoch e is written. A slot counts
only when both its table and the user's state carry the epoch it is read for (stamps), so a user not visited in an
epoch, or a run younger than the window, simply has fewer snapshots.

Size: the tables ``(window + 1) x (n_items + 1) x dim`` float32 (Beauty, 12,101 items, dim 64, window 5: 18.6 MB)
plus ``(window + 1) x (dim + 1)`` 4-byte values a user (1,560 bytes with dim 64 and window 5).
"""

from __future__ import annotations

import tensorflow as tf


class ModelSnapshots(tf.Module):
    """Item tables and user reference states of the last ``window`` epochs (tf.Variables, checkpointed)."""

    def __init__(self, n_users: int, n_items: int, dim: int | None, window: int, name: str | None = None) -> None:
        super().__init__(name=name)
        if dim is None or dim < 1:
            raise ValueError("score snapshots need the item table's width (embedding_dim = model.dim)")
        if window < 1:
            raise ValueError(f"score snapshots need window >= 1, got {window}")
        self.window = window
        slots = window + 1
        self.table = tf.Variable(tf.zeros([slots, n_items + 1, dim]), trainable=False, name="table")
        self.table_epoch = tf.Variable(tf.fill([slots], -1), trainable=False, name="table_epoch")
        # Row 0 unused: user_index is 1-based.
        self.user_state = tf.Variable(tf.zeros([n_users + 1, slots, dim]), trainable=False, name="user_state")
        self.user_epoch = tf.Variable(tf.fill([n_users + 1, slots], -1), trainable=False, name="user_epoch")

    @staticmethod
    def bytes_per_user(dim: int, window: int) -> int:
        return 4 * (window + 1) * (dim + 1)

    def record(self, users: tf.Tensor, states: tf.Tensor, table: tf.Tensor, epoch: tf.Tensor) -> None:
        """Writes epoch's slot: users `(batch,)` with their reference states `(batch, dim)`, and the item table
        `(n_items + 1, dim)`. Duplicate users in a batch write once (which write wins is unspecified)."""
        epoch = tf.cast(epoch, tf.int32)
        slot = tf.math.floormod(epoch, self.window + 1)
        self.table.scatter_nd_update([[slot]], tf.stop_gradient(table)[tf.newaxis])
        self.table_epoch.scatter_nd_update([[slot]], [epoch])
        where = tf.stack([users, tf.fill(tf.shape(users), slot)], axis=1)
        self.user_state.scatter_nd_update(where, tf.stop_gradient(states))
        self.user_epoch.scatter_nd_update(where, tf.fill(tf.shape(users), epoch))

    def past_scores(self, users: tf.Tensor, item_ids: tf.Tensor, epoch: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Scores of ``item_ids`` `(batch, n)` by each user's snapshots of epochs ``epoch - window .. epoch - 1``,
        oldest first: -> scores `(batch, window, n)` and valid bool `(batch, window)` (the snapshot exists)."""
        epoch = tf.cast(epoch, tf.int32)
        states = tf.gather(self.user_state, users)  # (B, S, d)
        stamps = tf.gather(self.user_epoch, users)  # (B, S)
        scores, valid = [], []
        for k in range(self.window):  # a static loop over the window (a handful of epochs), not over examples
            past = epoch - self.window + k
            slot = tf.math.floormod(past, self.window + 1)
            where = tf.stack([tf.fill(tf.shape(item_ids), slot), item_ids], axis=-1)
            items = tf.gather_nd(self.table, where)  # (B, n, d), without copying the whole slot
            scores.append(tf.einsum("bd,bnd->bn", tf.gather(states, slot, axis=1), items))
            exists = tf.logical_and(
                tf.equal(tf.gather(stamps, slot, axis=1), past), tf.equal(tf.gather(self.table_epoch, slot), past)
            )
            valid.append(tf.logical_and(exists, past >= 0))
        return tf.stack(scores, axis=1), tf.stack(valid, axis=1)
