"""The config is checked once at start: every error names the field, before anything compiles."""

import os
import sys

import pytest
from processes import run

from configs import cityscapes, coco, davis, kitti_step, shapes
from pix2seq_d.config import checks as config_checks
from pix2seq_d.loops import registries


@pytest.mark.parametrize(
  'make',
  [
    coco.get_config,
    lambda: coco.get_config('high_res'),
    lambda: coco.get_config('runlocal'),
    shapes.get_config,
    lambda: shapes.get_config('tiny'),
    lambda: shapes.get_config('video'),
    davis.get_config,
    lambda: davis.get_config('runlocal'),
    lambda: davis.get_config('authors'),
  ],
)
@pytest.mark.parametrize('mode', ['train', 'eval', 'train_and_eval', 'predict', 'summary'])
def test_shipped_configs_pass(make, mode):
  config = make()
  if mode == 'predict':  # what the predict command line names
    config.predict.input, config.predict.output = '/data/images', '/data/out'
  registries.check_config(config, mode)


@pytest.mark.parametrize(
  'make, root',
  [
    (kitti_step.get_config, 'step_root'),
    (cityscapes.get_config, 'coco_root'),
    (lambda: cityscapes.get_config('runlocal'), 'coco_root'),
  ],
)
@pytest.mark.parametrize('mode', ['train', 'eval', 'train_and_eval', 'summary', 'plan'])
def test_configs_of_ones_own_folder_pass_with_it_and_name_it_without(make, root, mode):
  """The folder is the command line's: without it a mode that reads the data stops at once,
  naming the field; summary and plan (which reports missing data itself) do not need it."""
  config = make()
  if mode in config_checks.READS_DATA:
    with pytest.raises(ValueError, match=f"config.data.{root}='': .* set --config.data.{root}"):
      registries.check_config(config, mode)
  config.data[root] = '/data/folder'
  registries.check_config(config, mode)


@pytest.mark.parametrize(
  'field, value, message',
  [
    ('train.keep_checkpoints', 0, 'would delete every checkpoint'),
    ('train.checkpoint_every', 0, 'config.train.checkpoint_every=0: must be >= 1'),
    ('train.log_every', 0, 'config.train.log_every=0: must be >= 1'),
    ('train.image_summary_every', -1, 'config.train.image_summary_every=-1'),
    ('train.num_steps', 0, 'config.train.num_steps=0'),
    ('train.batch_size', 0, 'config.train.batch_size=0'),
    ('train.learning_rate', 0.0, 'config.train.learning_rate=0.0: must be positive'),
    ('train.ema_decay', 1.0, 'config.train.ema_decay=1.0'),
    ('diffusion.steps', 0, 'config.diffusion.steps=0'),
    ('diffusion.semantic_aux_weight', -1.0, 'semantic_aux_weight=-1.0: must be >= 0'),
    ('diffusion.sampler', 'ddin', "config.diffusion.sampler='ddin': use one of 'ddim', 'ddpm'."),
    ('diffusion.b_scale', 0.0, 'config.diffusion.b_scale=0.0: must be positive'),
    ('diffusion.td', -1.0, 'config.diffusion.td=-1.0: must be >= 0'),
    ('diffusion.self_cond_rate', 1.5, 'config.diffusion.self_cond_rate=1.5: must be in'),
    ('diffusion.frames_dropout', -0.1, 'config.diffusion.frames_dropout=-0.1: must be in'),
    ('data.color_jitter_prob', 2.0, 'config.data.color_jitter_prob=2.0: must be in'),
    ('data.grayscale_prob', -1.0, 'config.data.grayscale_prob=-1.0: must be in'),
    ('data.video_window', 0, 'config.data.video_window=0: must be >= 1'),
    ('data.scale_jitter', (3.0, 1.0), 'config.data.scale_jitter=(3.0, 1.0): must be 0 < min'),
    ('train.grad_clip_norm', 0.0, 'config.train.grad_clip_norm=0.0: must be positive'),
    ('train.b1', 1.0, 'config.train.b1=1.0: must be in'),
    ('train.eps', 0.0, 'config.train.eps=0.0: must be positive'),
    ('train.end_lr_factor', -1.0, 'config.train.end_lr_factor=-1.0: must be >= 0'),
    ('train.weight_decay', -0.1, 'config.train.weight_decay=-0.1: must be >= 0'),
    ('eval.min_pixels', -1, 'config.eval.min_pixels=-1: must be >= 0'),
    ('mesh.fsdp', 0, 'config.mesh.fsdp=0, config.mesh.model=1: each must be a positive size'),
    ('eval.num_image_summaries', -1, 'config.eval.num_image_summaries=-1: must be >= 0'),
    (
      'diffusion.schedule',
      'cosin',
      "config.diffusion.schedule='cosin': use one of 'cosine', 'sigmoid', 'linear'.",
    ),
    ('model.image_size', 64, 'config.model.image_size=64: must be a pair'),
    ('model.mask_size', (16, 0), 'config.model.mask_size=(16, 0): must be a pair'),
    ('data.eval_orig_size', (64, 64, 3), 'config.data.eval_orig_size'),
    ('model.num_classes', 300, 'config.model.num_classes=300'),
    ('data.coco_root', '/data/coco', '--config.data.name=coco_folder'),
    ('data.davis_root', '/data/davis', '--config.data.name=davis'),
    ('data.step_root', '/data/kitti_step', '--config.data.name=kitti_step'),
    ('init_from.format', 'keras', "config.init_from.format='keras'"),
    ('init_from.mode', 'decoder', "config.init_from.mode='decoder'"),
    ('task', 'video', "config.task='video': use one of 'panoptic', 'video_panoptic'"),
    ('data.instance_id_order', 'sorted', "config.data.instance_id_order='sorted'"),
    ('data.train_resize_method', 'area', "config.data.train_resize_method='area'"),
    ('eval.use_gt_cond_frames', True, 'config.eval.use_gt_cond_frames=True: is a video option'),
    ('eval.single_frames', True, 'config.eval.single_frames=True: is a video option'),
    ('eval.new_track_after', 2, 'config.eval.new_track_after=2: is a video option'),
    (
      'eval.max_frames_per_sequence',
      100,
      'config.eval.max_frames_per_sequence=100: is a video option',
    ),
    ('eval.max_frames_per_sequence', -1, 'config.eval.max_frames_per_sequence=-1: is a video'),
    ('eval.score_all_frames_too', True, 'config.eval.score_all_frames_too=True: is a video'),
    ('eval.one_class_per_track', False, 'config.eval.one_class_per_track=False: is a video'),
    ('eval.metrics', (), 'config.eval.metrics=(): must be a non-empty tuple'),
    ('eval.metrics', 'pq', "config.eval.metrics='pq': must be a non-empty tuple"),
    ('eval.metrics', ('pq', 'vpq'), "no evaluator is named 'vpq'; the evaluators are 'pq'"),
    ('eval.metrics', ('davis_jf',), "the task 'panoptic' cannot produce 'davis_jf'"),
    ('eval.metrics', ('pq', 'stq'), "the task 'panoptic' cannot produce 'stq'; it produces 'pq'"),
    ('eval.metrics', ('pq', 'pq'), 'names a metric more than once'),
    ('eval.num_samples', 0, 'config.eval.num_samples=0: must be at least 1'),
    ('eval.sample_match_iou', 1.0, 'config.eval.sample_match_iou=1.0: must be in'),
    (
      'eval.metrics',
      ('pq', 'pq_single'),
      'which compare several samples per image: set --config.eval.num_samples',
    ),
    ('eval.follow', True, 'with --mode=eval, not with --mode=train_and_eval'),
    ('eval.given_fraction', 1.0, 'config.eval.given_fraction=1.0: must be in'),
    ('eval.refine_t0', 0.0, 'config.eval.refine_t0=0.0: must be in'),
    ('eval.metrics', ('pq', 'pq_input'), "names 'pq_input', which needs config.eval.refine_from"),
    ('eval.metrics', ('pq', 'pq_rest'), "names 'pq_rest', which needs config.eval.given_fraction"),
  ],
)
def test_bad_field_is_named(field, value, message):
  config = shapes.get_config()
  *sections, name = field.split('.')
  parent = config
  for section in sections:
    parent = parent[section]
  with config.ignore_type():
    parent[name] = value
  with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')):
    registries.check_config(config, 'train_and_eval')


def test_coco_root_is_fine_with_a_coco_name():
  config = coco.get_config()
  config.data.coco_root = '/data/coco'  # replaces the TFDS COCO set: read, so not an error
  registries.check_config(config, 'train')


@pytest.mark.parametrize(
  'field, value, message',
  [
    ('eval.follow_poll_s', 0.0, 'config.eval.follow_poll_s=0.0: must be positive'),
    ('eval.follow_timeout_s', -1.0, 'config.eval.follow_timeout_s=-1.0: must be >= 0'),
    ('train.num_steps', 0, 'config.train.num_steps=0: must be >= 1 (the follower stops after'),
  ],
)
def test_bad_follower_field_is_named(field, value, message):
  config = shapes.get_config()
  config.eval.follow = True
  section, name = field.split('.')
  config[section][name] = value
  with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')):
    registries.check_config(config, 'eval')


def test_several_samples_and_their_metrics_pass():
  config = shapes.get_config()
  config.eval.num_samples = 8
  config.eval.metrics = ('pq', 'pq_single', 'uncertainty_auroc')
  registries.check_config(config, 'eval')


def test_eval_mode_does_not_check_training_fields():
  config = shapes.get_config()
  config.train.checkpoint_every = 0
  registries.check_config(config, 'eval')


def test_num_classes_zero_is_derived_in_every_mode_that_reads_the_data():
  config = shapes.get_config()
  config.model.num_classes = 0
  for mode in ('train', 'eval', 'train_and_eval'):
    registries.check_config(config, mode)
  predict = config.copy_and_resolve_references()
  predict.predict.input, predict.predict.output = '/data/images', '/data/out'
  registries.check_config(predict, 'predict')
  with pytest.raises(ValueError, match='config.model.num_classes=0: --mode=summary'):
    registries.check_config(config, 'summary')
  categories = [{'id': i, 'name': str(i), 'isthing': 1} for i in range(7)]
  assert config_checks.num_classes_of(config, categories, 'my data') == 8
  assert config.model.num_classes == 0  # checks only check
  config.model.num_classes = 8
  assert config_checks.num_classes_of(config, categories, 'my data') == 8
  with pytest.raises(ValueError, match=r'config.model.num_classes=8: my data has 6 categories'):
    config_checks.num_classes_of(config, categories[:6], 'my data')


def test_negative_skip_limit_is_named():
  config = shapes.get_config()
  config.data.max_skips_in_a_row = -1
  with pytest.raises(ValueError, match='config.data.max_skips_in_a_row=-1'):
    registries.check_config(config, 'train')


def test_tf_weights_need_the_encoder_mode_and_a_path():
  config = shapes.get_config()
  config.init_from.format = 'tf'
  config.init_from.mode = 'encoder'
  with pytest.raises(ValueError, match='nothing is loaded without --config.init_from.path'):
    registries.check_config(config, 'train')
  config.init_from.path = '/ckpt/resnetc'
  registries.check_config(config, 'train')
  config.init_from.mode = 'all'
  with pytest.raises(ValueError, match='set --config.init_from.mode=encoder'):
    registries.check_config(config, 'train')


@pytest.mark.parametrize(
  'field, value, message',
  [
    ('diffusion.steps_later_frames', 0, 'config.diffusion.steps_later_frames=0: must be >= 1'),
    ('eval.video_length_bucket', 0, 'config.eval.video_length_bucket=0: must be >= 1'),
    ('eval.video_strip_frames', 0, 'config.eval.video_strip_frames=0: must be >= 1'),
    ('eval.new_track_after', -1, 'config.eval.new_track_after=-1: must be >= 0'),
    ('eval.new_track_after', 1.5, r'config.eval.new_track_after=1.5: must be >= 0 \(an integer\)'),
    ('eval.num_samples', 4, 'config.eval.num_samples=4: the video task streams one sample'),
    (
      'eval.max_frames_per_sequence',
      -1,
      'config.eval.max_frames_per_sequence=-1: must be >= 0',
    ),
    (
      'eval.max_frames_per_sequence',
      2.5,
      r'config.eval.max_frames_per_sequence=2.5: must be >= 0 \(an integer\)',
    ),
    (
      'eval.score_all_frames_too',
      True,
      'config.eval.score_all_frames_too=True: adds the whole-sequence STQ .* which is 0',
    ),
  ],
)
def test_bad_video_field_is_named(field, value, message):
  config = shapes.get_config('video')
  section, name = field.split('.')
  with config.ignore_type():
    config[section][name] = value
  with pytest.raises(ValueError, match=message):
    registries.check_config(config, 'eval')


def test_gt_conditioning_and_single_frames_exclude_each_other():
  config = shapes.get_config('video')
  config.eval.use_gt_cond_frames = True
  registries.check_config(config, 'eval')
  config.eval.single_frames = True
  with pytest.raises(ValueError, match='config.eval.single_frames=True: conditions every frame'):
    registries.check_config(config, 'eval')


def test_both_frame_protocols_need_the_stq_metric():
  config = shapes.get_config('video')
  config.eval.max_frames_per_sequence = 4
  registries.check_config(config, 'eval')
  config.eval.score_all_frames_too = True
  with pytest.raises(ValueError, match="only the 'stq' metric reports both protocols"):
    registries.check_config(config, 'eval')
  config.eval.metrics = ('davis_jf', 'stq')
  registries.check_config(config, 'eval')


def test_kitti_step_scores_the_authors_first_100_frames():
  config = kitti_step.get_config()
  assert config.eval.max_frames_per_sequence == 100 and not config.eval.score_all_frames_too
  config.data.step_root = '/data/kitti_step'
  registries.check_config(config, 'eval')


def test_kitti_step_keeps_each_pixels_class_as_the_authors():
  """KITTI-STEP post-processes as the authors; the other video configs vote a class per track."""
  config = kitti_step.get_config()
  assert config.eval.one_class_per_track is False
  config.data.step_root = '/data/kitti_step'
  registries.check_config(config, 'eval')
  assert shapes.get_config('video').eval.one_class_per_track is True
  assert davis.get_config().eval.one_class_per_track is True


@pytest.mark.parametrize('arg', ['', 'runlocal'])
def test_cityscapes_knows_its_classes_for_the_summary(arg):
  """Void + Cityscapes' 19 train classes (the authors' 19): --mode=summary reads no dataset."""
  config = cityscapes.get_config(arg)
  assert config.model.num_classes == 20
  registries.check_config(config, 'summary')


def test_davis_authors_variant_samples_as_the_authors():
  """configs/davis.py:authors is the authors' video inference (100 + 100 DDIM steps, td 0); the
  plain config keeps ours (20 + 20, td 1), and nothing else differs."""
  ours, authors = davis.get_config(), davis.get_config('authors')
  assert (authors.diffusion.steps, authors.diffusion.steps_later_frames) == (100, 100)
  assert authors.diffusion.td == 0.0 and authors.diffusion.sampler == 'ddim'
  assert (ours.diffusion.steps, ours.diffusion.steps_later_frames, ours.diffusion.td) == (20, 20, 1)
  for name in ('steps', 'steps_later_frames', 'td'):
    del authors.diffusion[name], ours.diffusion[name]
  assert authors.to_dict() == ours.to_dict()


def test_cityscapes_takes_the_authors_ids():
  """configs/cityscapes.py gives an image's segments a shuffle of 1..N, as the authors' Cityscapes
  input does; the COCO config keeps the paper's random ids."""
  assert cityscapes.get_config().data.instance_id_order == 'shuffle'
  assert coco.get_config().data.instance_id_order == 'random'


def test_cityscapes_keeps_the_voted_class_of_instance_zero_and_video_refuses_it():
  """configs/cityscapes.py post-processes as the authors (instance-0 pixels keep their voted
  class); COCO keeps ours; the video task has its own rule and names it."""
  assert cityscapes.get_config().eval.void_instance_zero is False
  assert coco.get_config().eval.void_instance_zero is True
  config = cityscapes.get_config()
  config.data.coco_root = '/data/cityscapes_coco'
  registries.check_config(config, 'eval')
  config = shapes.get_config('video')
  config.eval.void_instance_zero = False
  with pytest.raises(ValueError, match='void_instance_zero=False: is an image option.*one_class'):
    registries.check_config(config, 'eval')


def test_track_ids_need_each_pixel_to_keep_its_class():
  """configs/kitti_step.py trains on the authors' track ids, where stuff and crowd have id 0: the
  post-processing that voids instance 0 would void them, so the pair is refused, naming both."""
  config = kitti_step.get_config()
  assert config.data.instance_id_order == 'track'
  config.data.step_root = '/data/kitti_step'
  registries.check_config(config, 'train')
  config.eval.one_class_per_track = True
  with pytest.raises(
    ValueError, match="instance_id_order='track' .* config.eval.one_class_per_track=True"
  ):
    registries.check_config(config, 'train')


def _set(config, field: str, value) -> None:
  *sections, name = field.split('.')
  parent = config
  for section in sections:
    parent = parent[section]
  with config.ignore_type():
    parent[name] = value


# Every enumerated field, misspelt: (config, field, value, the allowed values as the error lists
# them). The config is configs/shapes.py unless named ('video', 'davis').
_ENUMERATED = (
  ('', 'task', 'video', "'panoptic', 'video_panoptic'"),
  ('', 'diffusion.sampler', 'ddin', "'ddim', 'ddpm'"),
  ('', 'diffusion.schedule', 'cosin', "'cosine', 'sigmoid', 'linear'"),
  ('', 'train.lr_schedule', 'cosine', "'linear', 'constant'"),
  ('', 'eval.metrics', ('vpq',), "the evaluators are 'pq', "),
  (
    '',
    'data.name',
    'shapez',
    "'coco/2017_panoptic', 'coco_folder', 'davis', 'kitti_step', 'shapes[/config]', "
    "'shapes_video[/config]', 'shapes_step[/config]'",
  ),
  ('', 'data.name', 'coco', "'coco/2017_panoptic', 'coco_folder'"),
  ('', 'data.name', 'shapes/huge', "'shapes', 'shapes/default', 'shapes/tiny', 'shapes/128px'"),
  ('video', 'data.name', 'shapes_video/huge', "'shapes_video', 'shapes_video/default'"),
  ('', 'data.name', 'shapes_step/huge', "'shapes_step', 'shapes_step/default', 'shapes_step/tiny'"),
  ('', 'data.instance_id_order', 'sorted', "'random', 'shuffle', 'track', 'location'"),
  ('', 'data.train_crowd', 'ignore', "'void', 'segment'"),
  ('', 'data.train_resize_method', 'area', "'bilinear', 'bicubic'"),
  ('davis', 'data.davis_resolution', '1080p', "'480p', 'Full-Resolution'"),
  ('', 'init_from.format', 'keras', "'pix2seq_d' (a run of ours), 'tf'"),
  ('', 'init_from.mode', 'decoder', "'all', 'encoder'"),
  ('', 'model.attention_impl', 'flash', "'auto', 'xla', 'cudnn', 'splash', 'chunked'"),
  ('', 'model.dtype', 'fp16', "'auto', 'float32', 'bfloat16', 'float16'"),
  ('', 'model.param_dtype', 'float64', "'float32', 'bfloat16'"),
  *(
    (
      '',
      f'model.remat.{part}',
      'all',
      "'none', 'nothing_saveable', 'dots_saveable', 'dots_with_no_batch_dims_saveable'",
    )
    for part in ('resnet', 'encoder', 'fusion', 'denoiser')
  ),
)

# Every cross-field rule, broken by a pair: (config, mode, {field: value}, text of the error[,
# {field: value} that only makes the rest of the config valid]). Each field of the pair must be
# named in the error.
_CROSS_FIELD = (
  ('video', 'train', {'data.video_window': 2, 'diffusion.num_cond_frames': 2}, 'must be >= '),
  ('', 'train', {'train.batch_size': 8, 'train.microbatches': 3}, 'must divide'),
  ('', 'train', {'model.image_size': (64, 64), 'model.mask_size': (48, 48)}, 'must divide'),
  (
    '',
    'train',
    {'model.mask_size': (8, 8), 'model.denoiser.dim_mults': (1, 1, 1, 1, 2)},
    'the U-Net downsampling',
  ),
  (
    '',
    'train',
    {'model.image_size': (40, 40), 'model.resnet.stage_sizes': (1, 1, 1)},
    'encoder stride 16',
    {'model.mask_size': (8, 8)},
  ),
  ('', 'train', {'model.encoder.dim': 64, 'model.encoder.num_heads': 3}, 'does not divide'),
  (
    '',
    'train',
    {'model.denoiser.transformer_dim': 64, 'model.denoiser.transformer_heads': 3},
    'does not divide',
  ),
  ('', 'summary', {'model.num_classes': 0}, '--mode=summary does not read the dataset'),
  ('', 'train_and_eval', {'eval.follow': True}, 'not with --mode=train_and_eval'),
  (
    '',
    'train',
    {'init_from.format': 'tf', 'init_from.mode': 'all'},
    'mode=encoder',
    {'init_from.path': '/ckpt'},
  ),
  ('', 'train', {'init_from.mode': 'encoder', 'init_from.path': ''}, 'nothing is loaded'),
  ('', 'train', {'data.name': 'shapes', 'data.coco_root': '/data/coco'}, 'is not read with'),
  ('', 'train', {'data.name': 'shapes', 'data.davis_root': '/data/davis'}, 'is not read with'),
  ('', 'train', {'data.name': 'shapes', 'data.step_root': '/data/step'}, 'is not read with'),
  (
    '',
    'eval',
    {'eval.given_fraction': 0.5, 'eval.refine_from': '/p.json'},
    'completes partial masks or refines',
  ),
  ('', 'eval', {'eval.given_fraction': 0.5, 'eval.num_samples': 4}, 'one sample per image'),
  (
    '',
    'eval',
    {'eval.metrics': ('pq', 'pq_single'), 'eval.num_samples': 1},
    'compare several samples',
  ),
  ('', 'eval', {'eval.metrics': ('pq', 'pq_input'), 'eval.refine_from': ''}, 'needs'),
  (
    'video',
    'eval',
    {'eval.score_all_frames_too': True, 'eval.max_frames_per_sequence': 0},
    'which is 0',
  ),
  (
    'video',
    'eval',
    {'eval.score_all_frames_too': True, 'eval.metrics': ('davis_jf',)},
    'only the',
    {'eval.max_frames_per_sequence': 4},
  ),
  (
    'video',
    'train',
    {'data.instance_id_order': 'track', 'eval.one_class_per_track': True},
    'makes instance-0 pixels void',
  ),
  (
    'video',
    'eval',
    {'eval.single_frames': True, 'eval.use_gt_cond_frames': True},
    'set one of them',
  ),
  ('', 'eval', {'task': 'panoptic', 'eval.metrics': ('stq',)}, 'cannot produce'),
  ('', 'train', {'data.scale_jitter': (2.0, 1.0)}, 'must be 0 < min <= max'),
  ('', 'train', {'mesh.data': -1, 'mesh.fsdp': -1}, 'at most one may be -1'),
  ('', 'train', {'data.name': 'kitti_step', 'data.step_root': ''}, 'reads a folder of your own'),
  ('', 'eval', {'data.name': 'coco_folder', 'data.coco_root': ''}, 'reads a folder of your own'),
  ('', 'predict', {'predict.input': ''}, 'needs --config.predict.input', {'predict.output': '/o'}),
  ('', 'predict', {'predict.output': ''}, 'needs --config.predict.output', {'predict.input': '/i'}),
  ('', 'train', {'predict.input': '/data/images'}, 'read by --mode=predict only'),
  ('', 'eval', {'predict.output': '/data/out'}, 'read by --mode=predict only'),
  ('', 'train_and_eval', {'predict.given': '/data/given.json'}, 'read by --mode=predict only'),
)


def _config(name: str):
  return davis.get_config() if name == 'davis' else shapes.get_config(name)


@pytest.mark.parametrize(
  'name, field, value, allowed', _ENUMERATED, ids=[f'{c[1]}={c[2]}' for c in _ENUMERATED]
)
def test_misspelt_enumerated_field_names_its_values(
  name, field, value, allowed, tmp_path, monkeypatch
):
  """The error names the field, the value and the allowed values; the check writes nothing."""
  monkeypatch.chdir(tmp_path)
  config = _config(name)
  _set(config, field, value)
  with pytest.raises(ValueError) as error:
    registries.check_config(config, 'train_and_eval')
  message = str(error.value)
  assert f'config.{field}={value!r}' in message, message
  assert allowed in message, message
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize('rule', _CROSS_FIELD, ids=['+'.join(rule[2]) for rule in _CROSS_FIELD])
def test_broken_cross_field_rule_names_every_field(rule, tmp_path, monkeypatch):
  name, mode, fields, text, *context = rule
  monkeypatch.chdir(tmp_path)
  config = _config(name)
  for field, value in {**(context[0] if context else {}), **fields}.items():
    _set(config, field, value)
  with pytest.raises(ValueError) as error:
    registries.check_config(config, mode)
  message = str(error.value)
  assert text in message, message
  for field in fields:  # by its last name at least ('config.init_from.format=... / mode=...')
    assert field.split('.')[-1] in message, (field, message)
  assert not os.listdir(tmp_path)


def test_one_pass_at_start_refuses_a_misspelt_sampler_before_the_workdir(tmp_path, jax_cache):
  """The main command with a misspelt sampler ends within 30 s, naming the field and the
  samplers, and creates no workdir."""
  workdir = tmp_path / 'W'
  command = [
    sys.executable,
    '-m',
    'pix2seq_d.main',
    '--config=configs/shapes.py',
    '--config.diffusion.sampler=ddin',
    f'--workdir={workdir}',
  ]
  code, log = run(command, jax_cache, timeout=30)
  assert code != 0, log
  assert "config.diffusion.sampler='ddin': use one of 'ddim', 'ddpm'." in log, log
  assert not workdir.exists()
