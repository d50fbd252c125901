"""Inference: a restored model's multi-scale predictions, the dense CRF and its worker pool,
the confusion-matrix metrics, and the rank-parallel jobs behind evaluate and predict."""
