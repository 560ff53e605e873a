"""pix2seq_d.loops: what runs. The training loop (train.py), the one evaluation loop
(evaluate.py) and the one predict runner (predict.py) for every task; the pure training step
functions (steps.py) and the train state on the mesh with the jitted programs (state.py)."""
