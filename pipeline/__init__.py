"""Apache Beam preprocessing: raw interaction logs -> `mdcns_tf.features` TFRecords (see README.md).

What it owns: everything between a raw log and a data folder. Parsing the three input formats and accounting for
every row, the per-user sequences and their filters, the vocabularies, the splits and records, and every file in
``--output`` (records, ``items.txt``, ``users.txt``, ``rejected/``, ``metadata.json``, ``manifest.json``). The
layout of that folder is not its own: `mdcns_tf.features` defines it, and the trainer reads it.

Modules, in the order a run goes through them:

    run           the command line: flags, runner choice, `run`, `main` (an entry point: no module imports it)
    config        the validated flags, `PipelineConfig`
    preprocess    the whole graph, one composite `Preprocess`, and its last step
    reading       matching ``--input``, streaming a file's lines, parsing them in a worker
    inputfiles    an input file's bytes as written: decompressed by name, checked to the end, or an error naming it
    formats       parsing one line of each input format, and a chunk of lines at once (pure, no Beam)
    plainlines    the chunk parser's fast path: which lines are plain, one regular expression per file
    columns       a line's delimiter, fields and ``interactions`` column layout
    fields        one field's text: numbers (timestamps, ratings) and keys
    blocks        the unit the graph shuffles: users (or items) by a hash of their key, and packed payloads
    spill         the two large shuffles' payloads kept in files by the worker that made them, references shuffled
    sequences     per-user chronological sequences, dedupe, k-core, minimum length
    vocabulary    the order of ``items.txt`` / ``users.txt`` and the stage that builds them
    parent        ``--vocabulary_from``: a previous output whose ids a run keeps, checked and read
    records       ids joined to the events, records per split
    splits        the split protocols and ``--split_file`` (pure but for reading that file)
    timesplit     ``--split time``: the global temporal cut, its held-out users and its stats
    sinks         writing the record and rejected files, and naming them in the last step
    outputs       what may be written and deleted in ``--output``; ``metadata.json`` and the manifest
    accounting    the row stats and the ``metadata.json`` counts made of them
    portable      the Beam subset every runner gets right, and why
    runners       the runner defaults every command shares (FnApiRunner, Dask partitions, worker bound)
    encoding      a record as ``tf.train.Example`` bytes without TensorFlow
    readback      reading an output back in Python (tests, debugging)
    synthetic     a synthetic log with learnable structure (an entry point)
    recommend     top-K for every user of a data folder from an exported SavedModel (an entry point)
    recommendations  its graph, one composite `Recommend`: histories, batches, RunInference, files
    inference     the export in Beam: its version, its identity against the data, RunInference's model handler
    recommend_output  its ``--output``: what may be written and deleted, the manifest, ``_SUCCESS``

Imports. From the library, `pipeline` may import only `mdcns_tf.features` (the data contract it writes) and
`mdcns_tf.cli` (the command-line conventions), for `recommend` the SavedModel's TensorFlow-free contract
(`mdcns_tf.savedmodel.signatures`, `mdcns_tf.savedmodel.versions`, as `serving` does), and `mdcns_tf` itself for
the environment switch it sets before TensorFlow loads. Nothing in `mdcns_tf` imports `pipeline`: the trainer reads
the files, never this code. Keep it that way: Beam workers import `pipeline` and must not pay for TensorFlow or the
trainer (`recommend`'s workers load TensorFlow for the SavedModel only).
"""
