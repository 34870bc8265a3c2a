"""Training: the Keras models and what a `fit` needs around them.

Owns the trainers (`retrieval_model` the shared base and its full-ranking evaluation, `single_model` one backbone x
any sampler, `mdcns_model` the Teacher-Peer-Self model and
`mdcns_teachers` its teachers), their callbacks, the order of training batches
(`batches`), their Adam and lazy Adam (`optimizers`), `tf.distribute` (`distribution`), building a model from a
config (`factory`), the checks before a run builds anything (`preflight`), a finished run's model
(`finished_run`) and a run that starts from one (`warm_start`, its new items' rows `new_item_rows`).

May import: the core modules, the components (`losses`, `metrics`, `data`, `backbones`, `samplers`,
`config_loader`), `mdcns_tf.runs` and `mdcns_tf.savedmodel`. Imported by the entry points and benchmarks only.
"""
