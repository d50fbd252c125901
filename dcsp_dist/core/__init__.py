"""Foundations: errors, atomic files, the console, the stage table, placement and signals.

No TensorFlow at module level and no import of any other layer of dcsp_dist."""
