"""DAVIS 2017 unsupervised video object segmentation, the paper's video setting.

Fine-tuned from a COCO image run (the denoiser's first convolution widens for the 32 analog bits of
the two earlier frames' masks; `init_from` copies the rest):

  python -m pix2seq_d.main --config=configs/davis.py --workdir=DIR \
      --config.data.davis_root=DAVIS --config.init_from.path=COCO_RUN

DAVIS is the official DAVIS-2017-Unsupervised-trainval-480p layout (JPEGImages/480p,
Annotations_unsupervised/480p, ImageSets/2017/{train,val}.txt). Evaluation streams each validation
video through the model (frame t conditioned on the model's own masks of t-2 and t-1) and scores
DAVIS 2017 unsupervised J&F; `--config.eval.write_predictions=True` also writes the indexed PNGs
that `python -m pix2seq_d.evaluation.davis` reads.
"""

from pix2seq_d.config import defaults as config_defaults


def get_config(arg=None):
  """Returns the DAVIS config; `arg` is '' (the paper's fine-tuning), 'authors' (the same with
  the authors' video sampling: 100 + 100 DDIM steps, td 0) or 'runlocal' (smoke run)."""
  config = config_defaults.get_base_config()
  config.task = 'video_panoptic'
  config.eval.metrics = ('davis_jf',)

  model = config.model
  model.image_size = (512, 1024)
  model.mask_size = (256, 512)
  model.num_classes = 2  # void + 'object' (DAVIS's semantic channel is 0; objects are ids).
  model.max_instances = 16  # object ids 1..15 per video.
  # Encoder dropout stays 0.1: the authors' video configs set `enc_drop` 0, which their panoptic
  # model never reads; their encoder takes `drop_units` 0.1.

  data = config.data
  data.name = 'davis'
  data.train_split = 'train'
  data.eval_split = 'val'
  data.scale_jitter = (1.0, 1.0)
  data.color_jitter_strength = 0.0
  data.instance_id_order = 'shuffle'  # compact ids 1..N, shuffled per training window.
  data.train_resize_method = 'bicubic'
  data.shuffle_buffer = 100  # DAVIS 2017 train has 60 videos.

  train = config.train
  train.batch_size = 32
  train.num_steps = 50_000
  train.learning_rate = 3e-5
  train.lr_schedule = 'constant'
  train.warmup_steps = 0
  train.ema_decay = 0.99
  train.checkpoint_every = 1_000

  config.eval.batch_size = 2
  config.eval.min_pixels = 0
  # DAVIS 2017 val videos have 25 to 104 frames: buckets of 16 frames compile at most 6 samplers.
  config.eval.video_length_bucket = 16

  if arg == 'runlocal':
    model.image_size = (128, 256)
    model.mask_size = (64, 128)
    train.batch_size = 2
    train.num_steps = 4
    train.log_every = 1
    config.eval.batch_size = 1
    config.eval.num_examples = 1
  elif arg == 'authors':
    # The authors' video inference; ours (20 + 20 steps, td 1, the defaults) scored higher on
    # both embedded video sets at a third of the time (docs/experiments.md: video sampling steps).
    config.diffusion.steps = 100
    config.diffusion.steps_later_frames = 100
    config.diffusion.td = 0.0
  elif arg:
    raise ValueError(f"configs/davis.py: unknown arg {arg!r}; use '', 'authors' or 'runlocal'.")
  return config
