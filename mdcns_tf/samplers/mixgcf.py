"""MixGCF (Huang et al. KDD 2021) as the MDCNS authors port it to sequential models ("posmix"), and MixGCF+.

Selection rule of the authors' code (``Baselines/Neg_samples_posmix/trainers.py``, ``new_pos_mixing``), per
training sample with state h, positive item v+ and N uniform candidates c_1..c_N from outside the sequence:

1. alpha ~ U(0, 1), one per sample, shared by its N candidates;
2. synthetic candidates e'_n = alpha . e(v+) + (1 - alpha) . e(c_n) (positive mixing);
3. score s'_n = h . e'_n, take the top-M, pick one of them uniformly (M = 1: the hardest, as MixGCF; M > 1 is
   the DNS(M,N) "+" variant, MixGCF+: Table 3 of the MDCNS paper lists both, and the authors' run script
   sweeps M in {1..10, 15, 20, ..., 50, 100} with N = 100);
4. the negative is the picked **synthetic embedding** e'_n, scored as h . e'_n; the gradient flows into both
   e(v+) and e(c_n) (the mix is built from the trainable item table; only the choice of n is not differentiated);
5. the loss is BPR (``run_finetune_full.py``: ``--loss_type`` default BPR, their only change from the DNS+ copy),
   for which the mix only scales the margin: h.e'_n - h.e(v+) = (1 - alpha)(s_n - s+). Under BCE the mixed
   negative's term also pushes the positive's own logit down with weight alpha, against its positive term, so
   choose ``loss.name: bpr`` with these samplers to run them as the authors did.

Because alpha is shared by the candidates of a sample and 1 - alpha > 0, s'_n = alpha . h.e(v+) + (1 - alpha) .
h.e(c_n) ranks the candidates exactly as their raw scores h.e(c_n) do: the top-M of the mixes are the mixes of the
top-M raw candidates. The pick therefore reuses the DNS(M,N) mechanism (`candidates.PooledHardNegativeSampler`) and
only the picked candidate is mixed, with no `(batch, seq_len, N, dim)` tensor.

Differences from the MixGCF paper: no hop mixing (a sequential backbone has no GNN layers whose per-hop
embeddings could be pooled; the authors' port drops it), the mix uses one alpha per sample for the whole vector
(MixGCF draws alpha per dimension and per layer), and the pick may be uniform among the top-M (MixGCF+).
Assumptions of this port: with ``train_positions: all`` every trained position is a sample (its own alpha and
its own pick, from the sequence's shared candidate pool by default or from its own with ``pool_scope: position``,
as DNS(M,N) here); candidates are drawn with replacement
(the authors draw N distinct ones; with N << n_items the difference is negligible); ``Negatives.ids`` are the
candidates the picked mixes were built from.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from mdcns_tf.samplers.base import Negatives, SamplingContext
from mdcns_tf.samplers.candidates import PooledHardNegativeSampler


@dataclasses.dataclass
class MixGCFParams:
    """Config block ``sampler.mixgcf``.

    pool_size  N, uniform candidates (outside the user's sequence) per negative. 100: ``N=100`` in the authors'
               ``Baselines/Neg_samples_posmix/run_finetune.bash``.
    pool_scope as ``sampler.dns_mn.pool_scope``: ``sequence`` (one pool per sequence, shared by its positions) or
               ``position`` (a fresh pool for every position, as each of the authors' prefix samples draws its own).
    """

    pool_size: int = 100
    pool_scope: str = "sequence"


@dataclasses.dataclass
class MixGCFPlusParams:
    """Config block ``sampler.mixgcf_plus``.

    pool_size  N, as for ``mixgcf``; 100 from the authors' posmix run script.
    top_m      M, the pick is uniform among the M highest-scoring mixes. The posmix run script sweeps M over
               {1..10, 15, ..., 50, 100} and no posmix log was released; 10 is the ``--M`` default of the posmix
               ``run_finetune_full.py`` and the M of the authors' only released DNS+ Beauty run (N 100, M 10).
    pool_scope as for ``mixgcf``.
    """

    pool_size: int = 100
    top_m: int = 10
    pool_scope: str = "sequence"


def mix_with_positive(alpha: tf.Tensor, positive: tf.Tensor, negative: tf.Tensor) -> tf.Tensor:
    """MixGCF's positive mixing: alpha . positive + (1 - alpha) . negative.

    alpha `(batch, seq_len)`, positive `(batch, seq_len, dim)`, negative `(batch, seq_len, k, dim)`
    -> `(batch, seq_len, k, dim)`.
    """
    alpha = alpha[..., tf.newaxis, tf.newaxis]
    return alpha * positive[:, :, tf.newaxis, :] + (1.0 - alpha) * negative


class MixGCFPlusSampler(PooledHardNegativeSampler):
    """Positive mixing with a uniform pick among the top-M of N mixes (MixGCF+); `MixGCFSampler` is M = 1."""

    Params = MixGCFPlusParams
    synthetic_negatives = True

    def sample(self, context: SamplingContext) -> Negatives:
        # The top-M pick of the raw scores is the top-M pick of the mixes (module docstring).
        ids = self.hard_negative_ids(context)  # (B, L, k)
        alpha = self.generator.uniform(tf.shape(context.target_ids), dtype=context.item_embeddings.dtype)
        embeddings = mix_with_positive(
            alpha,
            tf.gather(context.item_embeddings, context.target_ids),
            tf.gather(context.item_embeddings, ids),
        )
        return Negatives(ids=ids, embeddings=embeddings)


class MixGCFSampler(MixGCFPlusSampler):
    """MixGCF: the hardest of the N mixes (M = 1)."""

    Params = MixGCFParams

    @property
    def top_m(self) -> int:
        return 1
