"""ShareGPT data: records -> conversations -> encoded samples -> batches."""
