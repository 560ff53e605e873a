"""COCO panoptic, the paper's image setting: 1024x1024 images, 512x512 masks, ResNet-50 C4.

  python -m pix2seq_d.main --config=configs/coco.py --workdir=DIR
  python -m pix2seq_d.main --config=configs/coco.py:high_res --workdir=DIR   # stage 2
  python -m pix2seq_d.main --config=configs/coco.py:runlocal --workdir=DIR   # tiny smoke run

Own data in the COCO panoptic layout: `--config.data.name=coco_folder --config.data.coco_root=DIR`.
"""

from pix2seq_d.config import defaults as config_defaults


def get_config(arg=None):
  """Returns the COCO config; `arg` is '', 'high_res' (stage 2) or 'runlocal'."""
  config = config_defaults.get_base_config()
  if arg == 'high_res':
    # Stage 2 of the paper: fine-tune at high resolution without scale or colour jitter.
    config.train.batch_size = 16
    config.train.num_steps = 110_000  # ≈ 15 epochs at batch 16.
    config.train.learning_rate = 1e-5
    config.train.warmup_steps = 0
    config.data.scale_jitter = (1.0, 1.0)
    config.data.color_jitter_strength = 0.0
  elif arg == 'runlocal':
    config_defaults.smoke_run(config, image_size=(128, 128), mask_size=(64, 64), tiny_model=False)
    config.eval.batch_size = 2
    config.eval.num_examples = 2
  elif arg:
    raise ValueError(f"configs/coco.py: unknown arg {arg!r}; use '', 'high_res' or 'runlocal'.")
  return config
