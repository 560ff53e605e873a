"""pix2seq_d.tools: commands that measure rather than train: the benchmark of the train step and
the sampler (speed, FLOPs, MFU, memory; benchmark.py) and the model summary (summary.py)."""
