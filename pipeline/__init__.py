"""Apache Beam preprocessing: raw interaction logs -> `mdcns_tf.features` TFRecords (see README.md)."""
