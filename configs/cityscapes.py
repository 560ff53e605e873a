"""Cityscapes panoptic segmentation (images), scored by PQ: 1024x2048 images, 512x1024 masks.

Cityscapes' own converter (PyPI `cityscapesscripts`) writes the COCO panoptic layout that
`coco_folder` reads; README "Cityscapes" gives the commands. Then:

  python -m pix2seq_d.main --config=configs/cityscapes.py --workdir=DIR \
      --config.data.coco_root=CITYSCAPES_COCO --config.init_from.path=COCO_RUN
  python -m pix2seq_d.main --config=configs/cityscapes.py:runlocal ...   # a tiny smoke run

The categories come from the converter's JSON (19 train ids with `--use-train-id`; person, rider,
car, truck, bus, train, motorcycle and bicycle are things).
"""

from pix2seq_d.config import defaults as config_defaults


def get_config(arg=None):
  """Returns the Cityscapes config; `arg` is '' or 'runlocal' (smoke run)."""
  config = config_defaults.get_base_config()

  model = config.model
  model.image_size = (1024, 2048)
  model.mask_size = (512, 1024)  # image / 2, as the COCO setting.
  # Void + Cityscapes' 19 train classes (the authors' setting: 19 classes), so --mode=summary
  # needs no data; a run checks it against the converter's JSON (--use-train-id: 19 categories).
  model.num_classes = 20

  data = config.data
  data.name = 'coco_folder'
  data.train_split = 'train'
  data.eval_split = 'val'
  data.eval_orig_size = (1024, 2048)
  # The authors' Cityscapes ids: the image's segments (stuff included) take a shuffle of 1..N;
  # ours elsewhere ('random', the default) draws distinct ids in 1..max_instances-1.
  data.instance_id_order = 'shuffle'

  train = config.train
  train.batch_size = 32
  train.num_steps = 50_000
  train.learning_rate = 3e-5
  train.warmup_steps = 0
  train.checkpoint_every = 1_000
  config.eval.batch_size = 8
  # The authors' post-processing: the pixels predicted with instance 0 (void in training) keep the
  # class most of them have, as one segment; ours (True, the default elsewhere) makes them void.
  config.eval.void_instance_zero = False

  if arg == 'runlocal':
    config_defaults.smoke_run(config, image_size=(64, 128), mask_size=(32, 64))
    config.eval.batch_size = 2
  elif arg:
    raise ValueError(f"configs/cityscapes.py: unknown arg {arg!r}; use '' or 'runlocal'.")
  return config
