"""pix2seq_d.tasks: what differs between segmenting images and videos, behind one interface.

base.py is the interface, registry.py picks one from the config's `task`; panoptic.py (images) and
video_panoptic.py (streaming videos) implement it with the shared post-processing
(postprocess.py), pictures (pictures.py) and --mode=predict readers (predict_inputs.py).
"""
