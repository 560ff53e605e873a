"""Embedded synthetic panoptic datasets: coloured shapes over sky and ground, still or moving.

Two TFDS builders generated locally with numpy (nothing to download):

- `shapes`: images (default 64x64) with 2 stuff classes (sky above, ground below a random, slightly
  tilted horizon; each drawn from its own colour family, with pixel noise) and 1-4 thing objects
  (circle, square, triangle) of random size, rotation and colour (colour is NOT tied to class) that
  overlap: later objects occlude earlier ones.
- `shapes_video`: clips (default 8 frames) of the same scenes whose objects move with a constant
  velocity; they occlude each other and may leave the frame (a track that left has no pixels).
  Instance ids are per track and stay the same in every frame.

Every example stores its scene parameters as JSON ('scene'); `render_image` / `render_clip` turn
them into pixels and ground truth, and the builders call exactly these functions, so the stored
ground truth can be re-rendered and compared exactly. Generation is seeded per (split, index) from
`ShapesConfig.seed`, so every preparation produces the same data.

Stored features: 'image' PNG (H, W, 3) ('frames' (T, H, W, 3) for video); 'semantic' PNG (H, W, 1)
= category index + 1 (0 never occurs: every pixel is sky, ground or an object); 'instance' PNG
(H, W, 1): images number their visible segments 1..S in painting order (sky, ground, objects);
clips use 1 = sky, 2 = ground, 3 + k = object k. `make_source` prepares into config.data.data_dir
and returns a `Source` whose decode gives the canonical example (no crowd).

Builder configs: 'default' (64x64), 'tiny' (64x64, a few dozen examples, for tests) and '128px'.
Select one with config.data.name = 'shapes/tiny', 'shapes_video/tiny', ...
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath

from pix2seq_d.data.source import Source

# panopticapi-style categories; semantic label of CATEGORIES[k] is k + 1 (0 = void).
CATEGORIES = (
  {'id': 1, 'name': 'circle', 'isthing': 1, 'color': [220, 20, 60]},
  {'id': 2, 'name': 'square', 'isthing': 1, 'color': [0, 130, 200]},
  {'id': 3, 'name': 'triangle', 'isthing': 1, 'color': [255, 200, 0]},
  {'id': 4, 'name': 'sky', 'isthing': 0, 'color': [135, 206, 235]},
  {'id': 5, 'name': 'ground', 'isthing': 0, 'color': [110, 80, 50]},
)
SHAPE_NAMES = ('circle', 'square', 'triangle')  # thing classes, in CATEGORIES order.
SKY_LABEL = 4  # semantic label (category index + 1).
GROUND_LABEL = 5
SKY_TRACK_ID = 1  # video instance ids: stuff first, then 3 + object index.
GROUND_TRACK_ID = 2
FIRST_OBJECT_TRACK_ID = 3

_SPLITS = ('train', 'test')  # the split index is part of every example's generation seed.
# TFDS derives a builder's code path (where it looks for checksums) through `importlib_resources`,
# which tensorflow-datasets does not install; these builders download nothing, so give the path.
_CODE_PATH = epath.Path(__file__)


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
  """Generation parameters of a shapes builder config (sizes in pixels, colours in 0..255)."""

  height: int = 64
  width: int = 64
  num_train: int = 3000  # images (or clips for shapes_video) in the 'train' split.
  num_test: int = 300
  num_frames: int = 1  # frames per clip; 1 for the image builder.
  min_objects: int = 1
  max_objects: int = 4
  # Object size: circle diameter, square side, triangle side. The minimum keeps every shape at
  # least 16 px across, 4 mask pixels at the shapes config's 16x16 masks (at 12 px, 3 mask
  # pixels, even a perfect 16x16 mask reaches only PQ 0.77 on the things at 64x64).
  min_size: float = 16.0
  max_size: float = 32.0
  horizon_range: tuple[float, float] = (0.3, 0.7)  # horizon height at the centre / image height.
  max_horizon_slope: float = 0.3  # rows per column; small enough that sky and ground both show.
  sky_color_low: tuple[float, float, float] = (80.0, 130.0, 200.0)
  sky_color_high: tuple[float, float, float] = (170.0, 210.0, 255.0)
  ground_color_low: tuple[float, float, float] = (60.0, 90.0, 30.0)
  ground_color_high: tuple[float, float, float] = (150.0, 150.0, 80.0)
  # Object colours are a palette entry plus a uniform jitter; chosen away from sky and ground.
  object_palette: tuple[tuple[float, float, float], ...] = (
    (220.0, 40.0, 40.0),
    (240.0, 200.0, 30.0),
    (230.0, 120.0, 20.0),
    (200.0, 50.0, 200.0),
    (250.0, 250.0, 250.0),
    (30.0, 30.0, 30.0),
    (120.0, 60.0, 180.0),
    (40.0, 200.0, 200.0),
  )
  object_color_jitter: float = 15.0
  noise_std: float = 6.0  # Gaussian pixel noise on the whole image.
  max_speed: float = 3.0  # video: |velocity| per axis, pixels per frame.
  seed: int = 0  # generation seed; examples are seeded by (seed, split, index).


# The scene of both builders' '128px' configs: objects grow with the image, up to 48 px.
_128PX = {'height': 128, 'width': 128, 'max_size': 48.0}
_IMAGE_CONFIGS = [
  ShapesConfig(name='default', description='64x64 images, 3000 train / 300 test.'),
  ShapesConfig(
    name='tiny', description='64x64 images, 64 train / 24 test (tests).', num_train=64, num_test=24
  ),
  ShapesConfig(name='128px', description='128x128 images, 3000 train / 300 test.', **_128PX),
]
_VIDEO_CONFIGS = [
  ShapesConfig(
    name='default',
    description='8 frames of 64x64, 1000 train / 64 test clips.',
    num_train=1000,
    num_test=64,
    num_frames=8,
  ),
  ShapesConfig(
    name='tiny',
    description='8 frames of 64x64, 6 train / 3 test clips (tests).',
    num_train=6,
    num_test=3,
    num_frames=8,
  ),
  ShapesConfig(
    name='128px',
    description='8 frames of 128x128, 64 train / 16 test clips.',
    num_train=64,
    num_test=16,
    num_frames=8,
    max_speed=6.0,
    **_128PX,
  ),
]


def sample_scene(rng: np.random.Generator, config: ShapesConfig) -> dict:
  """Draws the parameters of one scene (JSON-serialisable floats / ints / strings).

  Object centres are (y, x) in pixels at frame 0; 'velocity' is (vy, vx) per frame (zero for
  images). 'noise_seed' seeds the pixel noise of every frame.
  """
  num_objects = int(rng.integers(config.min_objects, config.max_objects + 1))
  moving = config.num_frames > 1
  objects = []
  for _ in range(num_objects):
    palette_color = np.asarray(config.object_palette[rng.integers(len(config.object_palette))])
    jitter = rng.uniform(-config.object_color_jitter, config.object_color_jitter, size=3)
    velocity = rng.uniform(-config.max_speed, config.max_speed, size=2) if moving else np.zeros(2)
    objects.append(
      {
        'shape': SHAPE_NAMES[rng.integers(len(SHAPE_NAMES))],
        'center': [float(v) for v in rng.uniform((0.0, 0.0), (config.height, config.width))],
        'size': float(rng.uniform(config.min_size, config.max_size)),
        'angle': float(rng.uniform(0.0, 2.0 * math.pi)),
        'color': [float(v) for v in np.clip(palette_color + jitter, 0.0, 255.0)],
        'velocity': [float(v) for v in velocity],
      }
    )
  return {
    'horizon': float(rng.uniform(*config.horizon_range) * config.height),
    'horizon_slope': float(rng.uniform(-config.max_horizon_slope, config.max_horizon_slope)),
    'sky_color': [float(v) for v in rng.uniform(config.sky_color_low, config.sky_color_high)],
    'ground_color': [
      float(v) for v in rng.uniform(config.ground_color_low, config.ground_color_high)
    ],
    'noise_std': float(config.noise_std),
    'noise_seed': int(rng.integers(np.iinfo(np.int32).max)),
    'objects': objects,
  }


def shape_mask(obj: dict, height: int, width: int, frame: int = 0) -> np.ndarray:
  """Pixels (bool (H, W)) whose centres lie inside `obj` at `frame`, ignoring occlusion."""
  center_y = obj['center'][0] + frame * obj['velocity'][0]
  center_x = obj['center'][1] + frame * obj['velocity'][1]
  # Pixel (i, j) covers [i, i + 1) x [j, j + 1); test its centre.
  dy = np.arange(height, dtype=np.float64)[:, None] + 0.5 - center_y
  dx = np.arange(width, dtype=np.float64)[None, :] + 0.5 - center_x
  half = obj['size'] / 2.0
  if obj['shape'] == 'circle':
    return dy**2 + dx**2 <= half**2
  cos, sin = math.cos(obj['angle']), math.sin(obj['angle'])
  if obj['shape'] == 'square':
    u = cos * dx + sin * dy
    v = -sin * dx + cos * dy
    return np.maximum(np.abs(u), np.abs(v)) <= half
  if obj['shape'] == 'triangle':
    # An equilateral triangle of side `size` centred on its centroid: the intersection of three
    # half-planes whose normals are 120 degrees apart, at the inradius side / (2 sqrt(3)).
    inradius = obj['size'] / (2.0 * math.sqrt(3.0))
    inside = np.ones((height, width), bool)
    for k in range(3):
      theta = obj['angle'] + k * 2.0 * math.pi / 3.0
      inside &= math.cos(theta) * dx + math.sin(theta) * dy <= inradius
    return inside
  raise ValueError(f'shapes: unknown shape {obj["shape"]!r}; expected one of {SHAPE_NAMES}.')


def render_frame(
  scene: dict, height: int, width: int, frame: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Renders one frame of `scene` with track ids.

  Returns:
    image uint8 (H, W, 3); semantic uint8 (H, W) = category index + 1; instance uint8 (H, W) with
    SKY_TRACK_ID, GROUND_TRACK_ID and FIRST_OBJECT_TRACK_ID + k for object k (ids of objects that
    are hidden or outside the frame do not occur).
  """
  rows = np.arange(height, dtype=np.float64)[:, None] + 0.5
  cols = np.arange(width, dtype=np.float64)[None, :] + 0.5
  horizon = scene['horizon'] + scene['horizon_slope'] * (cols - width / 2.0)
  sky = np.broadcast_to(rows < horizon, (height, width))
  image = np.where(
    sky[..., None], np.asarray(scene['sky_color']), np.asarray(scene['ground_color'])
  )
  semantic = np.where(sky, SKY_LABEL, GROUND_LABEL).astype(np.uint8)
  instance = np.where(sky, SKY_TRACK_ID, GROUND_TRACK_ID).astype(np.uint8)
  # Painting order is depth order: later objects occlude earlier ones.
  for k, obj in enumerate(scene['objects']):
    mask = shape_mask(obj, height, width, frame)
    image[mask] = obj['color']
    semantic[mask] = SHAPE_NAMES.index(obj['shape']) + 1
    instance[mask] = FIRST_OBJECT_TRACK_ID + k
  noise = np.random.default_rng([scene['noise_seed'], frame]).normal(
    0.0, scene['noise_std'], size=(height, width, 3)
  )
  image = np.clip(np.round(image + noise), 0, 255).astype(np.uint8)
  return image, semantic, instance


def render_image(scene: dict, height: int, width: int) -> tuple[np.ndarray, ...]:
  """Renders a still scene: image uint8 (H, W, 3), semantic uint8 (H, W), instance uint8 (H, W).

  Instance ids are the visible segments numbered 1..S in painting order (sky, ground, objects).
  """
  image, semantic, track = render_frame(scene, height, width)
  present, compact = np.unique(track, return_inverse=True)
  del present
  instance = (compact.reshape(track.shape) + 1).astype(np.uint8)
  return image, semantic, instance


def render_clip(scene: dict, height: int, width: int, num_frames: int) -> tuple[np.ndarray, ...]:
  """Renders a clip: frames uint8 (T, H, W, 3), semantic and instance uint8 (T, H, W).

  Instance ids are track ids (see `render_frame`), the same object keeps its id in every frame.
  """
  rendered = [render_frame(scene, height, width, t) for t in range(num_frames)]
  return tuple(np.stack(parts) for parts in zip(*rendered, strict=True))


def _example_rng(config: ShapesConfig, split: str, index: int) -> np.random.Generator:
  return np.random.default_rng([config.seed, _SPLITS.index(split), index])


def generate_image_example(config: ShapesConfig, split: str, index: int) -> dict:
  """The stored example `index` of `split` of the image builder (numpy, before encoding)."""
  scene = sample_scene(_example_rng(config, split, index), config)
  image, semantic, instance = render_image(scene, config.height, config.width)
  return {
    'image': image,
    'semantic': semantic[..., None],
    'instance': instance[..., None],
    'image_id': index,
    'scene': json.dumps(scene),
  }


def generate_video_example(config: ShapesConfig, split: str, index: int) -> dict:
  """The stored example `index` of `split` of the video builder (numpy, before encoding)."""
  scene = sample_scene(_example_rng(config, split, index), config)
  frames, semantic, instance = render_clip(scene, config.height, config.width, config.num_frames)
  return {
    'frames': frames,
    'semantic': semantic[..., None],
    'instance': instance[..., None],
    'video_id': index,
    'scene': json.dumps(scene),
  }


# The scene changes both builders went through (their versions 1.0.0 to 1.2.0).
_SCENE_RELEASE_NOTES = {
  '1.0.0': 'Initial release.',
  '1.1.0': '1-4 objects of 12-28 px (was 1-8 of 8-24): learnable in minutes on a CPU.',
  '1.2.0': 'Objects of 16-32 px (was 12-28): at least 4 pixels of a 16x16 mask.',
}


class _GeneratedSplits:
  """The splits of a shapes builder, drawn here with nothing to download: example k of a split
  is `generate(config, split, k)` (seeded by its config, split and k), num_train or num_test of
  them."""

  generate: Callable[[ShapesConfig, str, int], dict]

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is generated locally.
    return {split: self._generate_examples(split) for split in _SPLITS}

  def _generate_examples(self, split):
    config = self.builder_config
    num = config.num_train if split == 'train' else config.num_test
    for index in range(num):
      yield index, self.generate(config, split, index)


class Shapes(_GeneratedSplits, tfds.core.GeneratorBasedBuilder):
  """Synthetic panoptic images: shapes over sky and ground (registered as 'shapes')."""

  VERSION = tfds.core.Version('1.2.0')
  RELEASE_NOTES = _SCENE_RELEASE_NOTES
  BUILDER_CONFIGS = _IMAGE_CONFIGS
  code_path = _CODE_PATH
  generate = staticmethod(generate_image_example)

  def _info(self) -> tfds.core.DatasetInfo:
    height, width = self.builder_config.height, self.builder_config.width
    return tfds.core.DatasetInfo(
      builder=self,
      description=__doc__,
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Image(shape=(height, width, 3)),
          'semantic': tfds.features.Image(shape=(height, width, 1)),
          'instance': tfds.features.Image(shape=(height, width, 1)),
          'image_id': np.int64,
          'scene': tfds.features.Text(),
        }
      ),
    )


class ShapesVideo(_GeneratedSplits, tfds.core.GeneratorBasedBuilder):
  """Synthetic panoptic clips: moving shapes over sky and ground (registered as 'shapes_video')."""

  VERSION = tfds.core.Version('1.3.0')
  RELEASE_NOTES = {
    **_SCENE_RELEASE_NOTES,
    '1.3.0': '1000 train / 64 test clips (was 64 / 16: overfitted, and too few to compare runs).',
  }
  BUILDER_CONFIGS = _VIDEO_CONFIGS
  code_path = _CODE_PATH
  generate = staticmethod(generate_video_example)

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    frame_shape = (config.height, config.width)

    def frames(channels):
      return tfds.features.Sequence(
        tfds.features.Image(shape=frame_shape + (channels,)), length=config.num_frames
      )

    return tfds.core.DatasetInfo(
      builder=self,
      description=__doc__,
      features=tfds.features.FeaturesDict(
        {
          'frames': frames(3),
          'semantic': frames(1),
          'instance': frames(1),
          'video_id': np.int64,
          'scene': tfds.features.Text(),
        }
      ),
    )


def decode_image(raw: dict) -> dict:
  """Canonical image example from a decoded `shapes` example (tf-traceable).

  Returns 'image' uint8 (H, W, 3), 'semantic' / 'instance' / 'crowd' int32 (H, W), 'image_id'
  int64 (), 'error' string () = ''.
  """
  semantic = tf.cast(raw['semantic'][..., 0], tf.int32)
  return {
    'image': raw['image'],
    'semantic': semantic,
    'instance': tf.cast(raw['instance'][..., 0], tf.int32),
    'crowd': tf.zeros_like(semantic),  # synthetic data has no crowd regions.
    'image_id': tf.cast(raw['image_id'], tf.int64),
    'error': tf.constant(''),
  }


def decode_video(raw: dict) -> dict:
  """Canonical video example from a decoded `shapes_video` example (tf-traceable).

  Returns 'frames' uint8 (T, H, W, 3), 'semantic' / 'instance' / 'crowd' int32 (T, H, W),
  'video_id' int64 (), 'video_name' string () = 'clip_<video_id, 5 digits>', 'error' string () = ''.
  """
  semantic = tf.cast(raw['semantic'][..., 0], tf.int32)
  return {
    'frames': raw['frames'],
    'semantic': semantic,
    'instance': tf.cast(raw['instance'][..., 0], tf.int32),
    'crowd': tf.zeros_like(semantic),
    'video_id': tf.cast(raw['video_id'], tf.int64),
    'video_name': tf.strings.join(
      ['clip_', tf.strings.as_string(raw['video_id'], width=5, fill='0')]
    ),
    'error': tf.constant(''),
  }


def make_builder(name: str, data_dir: str = '') -> tfds.core.DatasetBuilder:
  """The (unprepared) builder for 'shapes[/config]' or 'shapes_video[/config]'."""
  base, _, config_name = name.partition('/')
  builders = {'shapes': Shapes, 'shapes_video': ShapesVideo}
  if base not in builders:
    raise ValueError(
      f"shapes: config.data.name {name!r} is not 'shapes[/config]' or 'shapes_video[/config]'."
    )
  cls = builders[base]
  known = [c.name for c in cls.BUILDER_CONFIGS]
  config_name = config_name or 'default'
  if config_name not in known:
    raise ValueError(
      f'shapes: config.data.name {name!r}: unknown builder config {config_name!r}; known: {known}.'
    )
  return cls(config=config_name, data_dir=data_dir or None)


def make_source(config) -> Source:
  """Prepares (if needed) and returns the shapes / shapes_video source named by config.data.name."""
  builder = make_builder(config.data.name, config.data.data_dir)
  try:
    builder.download_and_prepare()  # a no-op when already prepared; generation takes seconds.
  except (OSError, tf.errors.OpError):
    # Several processes sharing one data_dir (launch/local_multiprocess.sh) may race: TFDS writes
    # to a temporary folder and renames it, so a loser fails on the rename after a winner is done.
    builder = make_builder(config.data.name, config.data.data_dir)
    if not builder.is_prepared():
      raise
  clips = isinstance(builder, ShapesVideo)
  return Source(
    name=config.data.name,
    builder=builder,
    categories=CATEGORIES,
    decode=decode_video if clips else decode_image,
    clips=clips,
  )
