"""Detection with a trained checkpoint, the parts `etad infer` and the Python API (stages.api) share:
the loaded checkpoint, batches of items, one video, and the files written."""
