"""GRU4Rec (Hidasi et al., ICLR 2016), in the form RecBole and the MDCNS authors use for sequential recommendation."""

from __future__ import annotations

import dataclasses
from typing import Any

import tensorflow as tf
import tf_keras as keras

from mdcns_tf.backbones.base import Backbone
from mdcns_tf.backbones.layers import normal_initializer

PROJECTION_INITS = ("normal", "uniform_fan_in")


@dataclasses.dataclass
class GRU4RecOptions:
    """Config block ``model.options.gru4rec``.

    hidden_size       width of the GRU state (RecBole default 128; the MDCNS authors' peer: 64), projected back to
                      ``dim`` for scoring.
    projection_init   ``normal``: N(0, .02) kernel, zero bias (RecBole's ``_init_weights``). ``uniform_fan_in``:
                      kernel and bias U(+-1/sqrt(hidden_size)), PyTorch's ``nn.Linear`` default, which the MDCNS
                      authors' peer keeps (their ``_init_weights`` never reaches its ``dense``). The bias is one
                      shared state at the start: every sequence scores items by ``bias . e(item)``, a learnable
                      popularity prior from the first step, where ``normal`` starts every state near 0 (scores
                      ~1e-4 against SASRec's ~.1).
    """

    hidden_size: int = 128
    projection_init: str = "normal"

    def __post_init__(self) -> None:
        if self.hidden_size < 1:
            raise ValueError(f"gru4rec.hidden_size must be >= 1, got {self.hidden_size}")
        if self.projection_init not in PROJECTION_INITS:
            raise ValueError(f"gru4rec.projection_init must be one of {PROJECTION_INITS}, got {self.projection_init!r}")


class GRU4Rec(Backbone):
    """Embedding -> dropout -> ``num_layers`` stacked GRUs -> Dense(hidden -> dim), as RecBole's ``GRU4Rec``.

    Follows RecBole: dropout on the input embeddings only, GRUs without bias (``nn.GRU(bias=False)``), Xavier-uniform
    input and recurrent kernels, a Dense projection from ``hidden_size`` back to ``dim`` so that states live in the
    item-embedding space. ``num_heads`` is unused. Causal by construction (a left-to-right recurrence).

    Padding: the GRUs get the padding mask, so on padded steps (all before the first item, inputs are left-padded)
    the state is carried unchanged from the zero initial state; the first real item therefore starts from the same
    zero state whatever the amount of left padding, which makes states exactly left-padding invariant.
    """

    Options = GRU4RecOptions

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.embedding_dropout = keras.layers.Dropout(self.dropout_rate)
        self.grus = [
            keras.layers.GRU(
                self.options.hidden_size,
                return_sequences=True,
                use_bias=False,
                reset_after=True,
                kernel_initializer="glorot_uniform",
                recurrent_initializer="glorot_uniform",
                name=f"gru_{i}",
            )
            for i in range(self.num_layers)
        ]
        if self.options.projection_init == "uniform_fan_in":
            bound = self.options.hidden_size**-0.5
            kernel, bias = (keras.initializers.RandomUniform(-bound, bound) for _ in range(2))
        else:
            kernel, bias = normal_initializer(), keras.initializers.Zeros()
        self.projection = keras.layers.Dense(
            self.dim, kernel_initializer=kernel, bias_initializer=bias, name="projection"
        )

    def encode(self, item_ids: tf.Tensor, training: bool = False) -> tf.Tensor:
        """item_ids `(batch, seq_len)` -> states `(batch, seq_len, dim)`, 0 at padded positions."""
        real = tf.not_equal(item_ids, 0)
        x = self.embedding_dropout(self.item_embedding(item_ids), training=training)
        for gru in self.grus:
            x = gru(x, mask=real, training=training)
        return self.projection(x) * self.padding_mask(item_ids)
