"""pix2seq_d.runtime: what a run keeps and resumes from. Checkpoints (orbax), stream positions,
starting from other weights (init_from.py, and tf_weights.py for the reference's TF encoder),
the workdir lock, preemption, the small files of a workdir and atomic JSON files."""
