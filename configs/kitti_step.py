"""KITTI-STEP video panoptic segmentation, the authors' default video task: every pixel of every
frame gets a class and a track id, scored by STQ (and the per-frame PQ).

Fine-tuned from a COCO image run (the denoiser's first convolution widens for the 32 analog bits
of the two earlier frames' masks; `init_from` copies the rest):

  python -m pix2seq_d.main --config=configs/kitti_step.py --workdir=DIR \
      --config.data.step_root=KITTI_STEP --config.init_from.path=COCO_RUN
  python -m pix2seq_d.main --config=configs/kitti_step.py:runlocal --workdir=DIR \
      --config.data.step_root=KITTI_STEP          # a tiny model, a few steps: a smoke run

KITTI_STEP is the layout of deeplab2's setup guide (images/{train,val,test}/<seq>/<frame>.png,
panoptic_maps/{train,val}/<seq>/<frame>.png). Evaluation streams each val sequence through the
model (frame t conditioned on its own masks of t-2 and t-1); with
`--config.eval.write_predictions=True` it also writes the KITTI-STEP maps that
`python -m pix2seq_d.evaluation.stq` (and the benchmark's server) read. The numbers follow the
authors' configs/config_diffusion_panoptic_video.py and config_diffusion_panoptic_base.py.
"""

from pix2seq_d.config import defaults as config_defaults


def get_config(arg=None):
  """Returns the KITTI-STEP config; `arg` is '' or 'runlocal' (smoke run)."""
  config = config_defaults.get_base_config()
  config.task = 'video_panoptic'
  config_defaults.video_fine_tune(config)
  config.eval.metrics = ('stq', 'pq')

  model = config.model
  model.image_size = (384, 1248)
  model.mask_size = (192, 624)
  model.num_classes = 20  # void + the 19 Cityscapes train classes.
  model.max_instances = 256  # the authors' video setting: ids 1..255.

  data = config.data
  data.name = 'kitti_step'
  data.train_split = 'train'
  data.eval_split = 'val'
  # The authors' training ids (their data/video.py process_instance_id_map): a person or car
  # keeps its track id through a shuffle of 1..(the window's largest track id); stuff, crowd and
  # void have id 0. Ours elsewhere, 'shuffle', gives every segment (stuff and crowd too) an id
  # 1..N; it needs eval.one_class_per_track=False all the same (docs/experiments.md: the authors'
  # protocol).
  data.instance_id_order = 'track'
  # The authors train crowd regions (person or car without a track id) as their class: STQ's IoU
  # scores those pixels by class.
  data.train_crowd = 'segment'
  data.shuffle_buffer = 100  # 12 training sequences.
  # The authors shuffle all windows of all sequences; here windows are drawn from every training
  # sequence at once (encoded: up to ~1,000 frames of ~0.8 MB each) into a buffer of 512.
  data.video_clips_interleaved = 12
  data.video_window_shuffle_buffer = 512
  data.eval_orig_size = (384, 1248)  # KITTI frames are at most 376x1242.

  config_defaults.authors_video_sampling(config.diffusion)
  config.eval.batch_size = 2
  # As the authors' evaluation: a track is an id seen in one of the two conditioning frames; an id
  # that comes back later is a new object. No minimum segment size.
  config.eval.new_track_after = 2  # = diffusion.num_cond_frames
  config.eval.min_pixels = 0
  # The authors' setting: each pixel keeps its predicted class, instance id as predicted. Ours
  # (True, the default elsewhere) gives each track the class most of its pixels have over the
  # clip and makes instance-0 pixels void.
  config.eval.one_class_per_track = False
  # Val sequences have 78 to 1059 frames: buckets of 100 compile at most 11 samplers.
  config.eval.video_length_bucket = 100
  # The authors' protocol: their input truncates every sequence to its first max_num_frames = 100
  # frames (data/transforms.py truncate_or_pad_to_max_frames), so their val STQ is over those.
  # 0 scores every frame, as the benchmark server does; --config.eval.score_all_frames_too=True
  # samples whole sequences and writes both (STQ and STQ_all_frames, ...) in one evaluation.
  config.eval.max_frames_per_sequence = 100

  if arg == 'runlocal':
    config_defaults.smoke_run(config, image_size=(64, 208), mask_size=(32, 104))
    config.diffusion.steps_later_frames = 1
    config.eval.batch_size = 1
    config.eval.video_length_bucket = 4
  elif arg:
    raise ValueError(f"configs/kitti_step.py: unknown arg {arg!r}; use '' or 'runlocal'.")
  return config
