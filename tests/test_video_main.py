"""Video from the command line: fine-tune a video model from an image run, evaluate DAVIS J&F, and
predict on a folder of frames and on a video file, as real `python -m pix2seq_d.main` processes."""

import json

import numpy as np
import pytest
from PIL import Image
from processes import main_command, run

from pix2seq_d.formats import davis_png

VIDEO = (
  '--config.task=video_panoptic',
  '--config.eval.metrics=("davis_jf",)',
  '--config.data.name=shapes_video/tiny',
  '--config.data.instance_id_order=shuffle',
  '--config.data.train_resize_method=bicubic',
  '--config.eval.batch_size=2',
  '--config.eval.num_examples=0',
  '--config.eval.video_length_bucket=8',
  '--config.diffusion.steps_later_frames=1',
)


def _event_tags(workdir):
  from tensorboard.backend.event_processing import event_file_loader

  tags = set()
  for path in workdir.glob('events.out.tfevents.*'):
    for event in event_file_loader.EventFileLoader(str(path)).Load():
      tags.update(value.tag for value in event.summary.value)
  return tags


@pytest.mark.slow
def test_video_from_an_image_run_to_davis_scores_and_predictions(
  tmp_path, shapes_data_dir, jax_cache
):
  image_run = tmp_path / 'image'
  code, log = run(main_command(image_run, shapes_data_dir, '--config.train.num_steps=2'), jax_cache)
  assert code == 0, log[-3000:]

  video_run = tmp_path / 'video'
  code, log = run(
    main_command(
      video_run,
      shapes_data_dir,
      *VIDEO,
      '--config.train.num_steps=2',
      f'--config.init_from.path={image_run}',
      '--config.eval.write_predictions=True',
    ),
    jax_cache,
  )
  assert code == 0, log[-3000:]
  assert f'Initialised (all) from {image_run}' in log
  results = json.loads((video_run / 'eval_results.json').read_text())
  assert results['step'] == 2 and results['num_videos'] == 3
  for key in ('J&F-Mean', 'J-Mean', 'J-Recall', 'J-Decay', 'F-Mean', 'F-Recall', 'F-Decay'):
    assert np.isfinite(results[key]), key
  assert 0.0 <= results['id_consistency'] <= 1.0
  names = {name.rsplit('_', 1)[0] for name in results['davis_jf']['per_sequence']}
  assert names == {'clip_00000', 'clip_00001', 'clip_00002'}
  tags = _event_tags(video_run)
  assert {'eval/J&F-Mean', 'eval/J-Mean', 'eval/F-Mean', 'eval/video_input_gt_prediction'} <= tags
  # The predictions in the DAVIS results layout: 8 indexed PNGs per clip at the clip's size,
  # beside the clip's COCO panoptic PNGs and JSON and its KITTI-STEP maps.
  predictions = video_run / 'predictions' / 'step_2'
  assert sorted(p.name for p in predictions.iterdir()) == sorted(names)
  frames = sorted((predictions / 'clip_00001').glob('?????.png'))
  panoptic = json.loads((predictions / 'clip_00001' / 'panoptic.json').read_text())
  assert len(panoptic['annotations']) == 8
  assert [f.name for f in frames] == [f'{k:05d}.png' for k in range(8)]
  assert davis_png.read_indexed_png(str(frames[0])).shape == (64, 64)

  # --mode=eval of the video run gives the same record (the sampler is seeded).
  code, log = run(main_command(video_run, shapes_data_dir, *VIDEO, mode='eval'), jax_cache)
  assert code == 0, log[-3000:]
  again = json.loads((video_run / 'eval_results.json').read_text())
  assert again['J&F-Mean'] == results['J&F-Mean']

  # Prediction on a folder of frames and on a GIF.
  rng = np.random.default_rng()
  frames_dir = tmp_path / 'inputs' / 'walk'
  frames_dir.mkdir(parents=True)
  pictures = [rng.integers(0, 255, (40, 56, 3), dtype=np.uint8) for _ in range(5)]
  for k, picture in enumerate(pictures):
    Image.fromarray(picture).save(frames_dir / f'{k:03d}.jpg')
  gif = tmp_path / 'inputs' / 'spin.gif'
  Image.fromarray(pictures[0]).save(
    gif, save_all=True, append_images=[Image.fromarray(p) for p in pictures[1:3]]
  )
  out = tmp_path / 'out'
  for source, name, count in ((frames_dir, 'walk', 5), (gif, 'spin', 3)):
    code, log = run(
      main_command(
        video_run,
        shapes_data_dir,
        *VIDEO,
        f'--config.predict.input={source}',
        f'--config.predict.output={out}',
        mode='predict',
      ),
      jax_cache,
    )
    assert code == 0, log[-3000:]
    video = out / name
    objects = sorted(video.glob('?????.png'))
    assert [p.name for p in objects] == [f'{k:05d}.png' for k in range(count)]
    assert davis_png.read_indexed_png(str(objects[0])).shape == (40, 56)
    panoptic = json.loads((video / 'panoptic.json').read_text())
    assert len(panoptic['annotations']) == count
    assert Image.open(video / 'overlays' / '00000.png').size == (56, 40)
    # A track keeps its segment id: every segment id names one category in all frames.
    category_of = {}
    for annotation in panoptic['annotations']:
      for segment in annotation['segments_info']:
        assert (
          category_of.setdefault(segment['id'], segment['category_id']) == (segment['category_id'])
        )


@pytest.mark.slow
def test_predict_names_a_frame_of_another_size(tmp_path, shapes_data_dir, jax_cache):
  frames_dir = tmp_path / 'frames'
  frames_dir.mkdir()
  for k, size in enumerate(((40, 56), (40, 56), (30, 56))):
    Image.fromarray(np.zeros(size + (3,), np.uint8)).save(frames_dir / f'{k}.png')
  run_dir = tmp_path / 'run'
  code, log = run(
    main_command(run_dir, shapes_data_dir, *VIDEO, '--config.train.num_steps=1', mode='train'),
    jax_cache,
  )
  assert code == 0, log[-3000:]
  code, log = run(
    main_command(
      run_dir,
      shapes_data_dir,
      *VIDEO,
      f'--config.predict.input={frames_dir}',
      f'--config.predict.output={tmp_path / "out"}',
      mode='predict',
    ),
    jax_cache,
  )
  assert code != 0
  assert f'{frames_dir / "2.png"}: its size differs from the first frame' in log[-2000:]
  assert not (tmp_path / 'out' / 'frames').exists()


@pytest.mark.slow
def test_two_processes_evaluate_video_in_lockstep(tmp_path, shapes_data_dir, jax_cache):
  """The 3 test clips over 2 processes (global batch 2): each clip scored once, results gathered
  from both processes."""
  import os

  from processes import ROOT

  workdir = tmp_path / 'run'
  cmd = [
    'bash',
    os.path.join(ROOT, 'launch', 'local_multiprocess.sh'),
    '2',
    *main_command(workdir, shapes_data_dir, *VIDEO, '--config.train.num_steps=1')[3:],
  ]
  code, log = run(cmd, jax_cache)
  assert code == 0, log[-4000:]
  results = json.loads((workdir / 'eval_results.json').read_text())
  assert results['num_videos'] == 3 and results['step'] == 1
  names = {name.rsplit('_', 1)[0] for name in results['davis_jf']['per_sequence']}
  assert names == {'clip_00000', 'clip_00001', 'clip_00002'}
