"""pix2seq_d.formats: one module per file format, its reader and writer together.

coco_panoptic.py (COCO panoptic PNG, id = R + 256 G + 256^2 B, and its JSON), step_png.py
(KITTI-STEP panoptic map PNG, R = class, G * 256 + B = instance) and davis_png.py (DAVIS palette
PNG of object ids). Data, evaluation and the tasks' prediction files read and write through them;
they import only numpy, Pillow and runtime/ helpers, never a higher layer.
"""
