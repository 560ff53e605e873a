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
  config_defaults.video_fine_tune(config)
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
  data.instance_id_order = 'shuffle'  # compact ids 1..N, shuffled per training window.
  data.shuffle_buffer = 100  # DAVIS 2017 train has 60 videos.

  config.eval.batch_size = 2
  config.eval.min_pixels = 0
  # DAVIS 2017 val videos have 25 to 104 frames: buckets of 16 frames compile at most 6 samplers.
  config.eval.video_length_bucket = 16

  if arg == 'runlocal':
    config_defaults.smoke_run(config, image_size=(128, 256), mask_size=(64, 128), tiny_model=False)
    config.eval.batch_size = 1
    config.eval.num_examples = 1
  elif arg == 'authors':
    config_defaults.authors_video_sampling(config.diffusion)
  elif arg:
    raise ValueError(f"configs/davis.py: unknown arg {arg!r}; use '', 'authors' or 'runlocal'.")
  return config
