"""Tools that turn a VOC-layout directory into dcsp_dist's sharded TFRecords."""
