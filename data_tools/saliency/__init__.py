"""Saliency maps for a folder of photos or a dataset split.

    python -m data_tools.saliency ...            # write the maps (maps.py)
    python -m data_tools.saliency.fetch NAME     # fetch a detector's model file
    python -m data_tools.saliency.evaluate ...   # score maps against masks

Detectors: MB+ (mbplus.py, no model file) and ONNX models (onnx_runner.py), fetched by
fetch.py into a shared cache."""
