"""Data: the TFRecord format (records), images read upright, cue maps, the class palette and
the tf.data pipelines that feed training and evaluation."""
