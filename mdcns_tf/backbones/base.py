"""The backbone contract: `(batch, seq_len)` item ids -> `(batch, seq_len, dim)` causal states."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import tensorflow as tf
import tf_keras as keras


@dataclasses.dataclass
class NoOptions:
    """Backbones without options of their own beyond the shared sizes."""


class Backbone(keras.layers.Layer):
    """Base class of every sequence encoder.

    A backbone owns its item embedding table ``(n_items + 1, dim)`` (row 0 = padding) and uses it both to embed
    the input and, through `item_embeddings`, to score items: ``score(state, item) = state . E[item]``.
    ``call(item_ids)`` maps left-padded ids ``(batch, seq_len)`` (0 = padding) to states
    ``(batch, seq_len, dim)``; the state at position t depends only on items at positions <= t (causal).

    Subclasses set ``Options`` to a dataclass of their own hyperparameters (read from the config block
    ``model.<name>``) and implement `encode`.
    """

    Options: ClassVar[type] = NoOptions

    def __init__(
        self,
        n_items: int,
        max_len: int,
        dim: int = 64,
        num_layers: int = 2,
        num_heads: int = 2,
        dropout: float = 0.2,
        options: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.n_items = n_items
        self.max_len = max_len
        self.dim = dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.dropout_rate = dropout
        self.options = options if options is not None else self.Options()
        self.item_embedding = keras.layers.Embedding(
            n_items + 1,
            dim,
            embeddings_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            name="item_embedding",
        )

    @property
    def item_embeddings(self) -> tf.Tensor:
        """The item table `(n_items + 1, dim)`; row 0 is padding and is never a valid recommendation."""
        if not self.item_embedding.built:
            self.item_embedding.build((None,))
        return self.item_embedding.embeddings

    def item_indexed_weights(self) -> list[tf.Variable]:
        """The weights with one row per item id, `(n_items + 1, ...)` with row 0 the padding item: the item table, and
        in a subclass any other such weight (an output bias). A warm start (`mdcns_tf.training.warm_start`) maps their
        rows by item key; every other weight it copies whole."""
        return [self.item_embedding.embeddings]

    def padding_mask(self, item_ids: tf.Tensor) -> tf.Tensor:
        """`(batch, seq_len, 1)` float mask, 1 for real items."""
        return tf.cast(tf.not_equal(item_ids, 0), self.compute_dtype)[..., tf.newaxis]

    def call(self, item_ids: tf.Tensor, training: bool = False) -> tf.Tensor:
        return self.encode(item_ids, training=training)

    def encode(self, item_ids: tf.Tensor, training: bool = False) -> tf.Tensor:  # pragma: no cover
        raise NotImplementedError
