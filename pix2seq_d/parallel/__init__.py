"""pix2seq_d.parallel: the device mesh and the logical-axis sharding rules (sharding.py), values
shared across processes (hosts.py), and joining a multi-process run (distributed.py)."""
