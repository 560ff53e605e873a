"""Panoptic masks a user hands the image task: predictions to refine (config.eval.refine_from)
and the known part of a mask to complete.

A mask file is the COCO panoptic layout that panopticapi reads: FILE.json with 'annotations'
[{'image_id', 'file_name', 'segments_info': [{'id', 'category_id'}, ...]}, ...] and the PNGs
named by 'file_name' in the folder FILE (the JSON's path without '.json'); pixels of id 0 are
void (a prediction) or unknown (a partial mask). Every file is read and checked when the pass
starts, so bad input costs no sampling: a PNG that cannot be read, a segment id of the PNG that
its JSON does not list, a category the model does not know, more segments than the model has
instance ids, an image that is not in the eval set or a PNG of another size than its image.

Segment ids become instance ids 1..n in the order of the JSON's segments_info (the model's ids
are arbitrary, as in training), categories become semantic values (category index + 1).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

import numpy as np

from pix2seq_d.formats import coco_panoptic
from pix2seq_d.runtime import json_files
from pix2seq_d.tasks import postprocess, samples


@dataclasses.dataclass(frozen=True)
class MaskInput:
  """One image's mask at its original size.

  Attributes:
    semantic: int32 (Ho, Wo), category index + 1, 0 void / unknown.
    instance: int32 (Ho, Wo), 1..n, 0 void / unknown.
    path: the PNG it was read from (for messages).
  """

  semantic: np.ndarray
  instance: np.ndarray
  path: str


def read_mask_file(
  json_path: str,
  categories: Sequence[dict],
  max_instances: int,
  flag: str,
  by_stem: bool = False,
) -> dict[int | str, MaskInput]:
  """{image_id: MaskInput} of every annotation of a COCO panoptic file (module docstring).

  Args:
    json_path: FILE.json; its PNGs are in FILE/.
    categories: the run's categories (semantic s is categories[s - 1]).
    max_instances: the model's instance id range (ids 1..max_instances - 1).
    flag: the config field that named the file, for messages.
    by_stem: key by the stem of each annotation's file_name instead (--mode=predict matches
      masks to input images by name).

  Raises:
    FileNotFoundError, json_files.FileFormatError: the message names the file and the field.
  """
  if not json_path.endswith('.json'):
    raise ValueError(f'{flag}={json_path!r}: name a COCO panoptic .json file.')
  data = json_files.load_json(json_path, flag, required=('annotations',))
  folder = json_path[: -len('.json')]
  semantic_of = {int(c['id']): s for s, c in enumerate(categories, start=1)}
  masks = {}
  for k, annotation in enumerate(data['annotations']):
    where = f'{flag}={json_path}: annotations[{k}]'
    json_files.require_keys(annotation, ('image_id', 'file_name', 'segments_info'), where)
    path = os.path.join(folder, annotation['file_name'])
    ids = coco_panoptic.read_panoptic_png(path)
    segments = annotation['segments_info']
    coco_panoptic.segments_info(ids, segments, where=path)  # ids in the map <-> segments listed
    if len(segments) >= max_instances:
      raise json_files.FileFormatError(
        f"{path}: {len(segments)} segments, more than the model's {max_instances - 1} "
        'instance ids (config.model.max_instances - 1).'
      )
    semantic_table = np.zeros(len(segments) + 1, np.int32)
    for n, segment in enumerate(segments, start=1):
      category = int(segment['category_id'])
      if category not in semantic_of:
        raise json_files.FileFormatError(
          f'{path}: segment {segment["id"]} has category_id {category}, which the model does '
          f'not know (its categories: {sorted(semantic_of)}).'
        )
      semantic_table[n] = semantic_of[category]
    index, _ = coco_panoptic.segment_index(
      ids, np.array([int(s['id']) for s in segments], np.int64)
    )
    instance = np.where(index < len(segments), index + 1, 0).astype(np.int32)
    key = os.path.splitext(annotation['file_name'])[0] if by_stem else int(annotation['image_id'])
    if key in masks:
      raise json_files.FileFormatError(f'{where}: a second annotation of image {key!r}.')
    masks[key] = MaskInput(semantic_table[instance], instance, path)
  return masks


def check_images(
  masks: Mapping[int | str, MaskInput],
  sizes: Mapping[int | str, tuple[int, int]],
  flag: str,
  every_image: bool,
) -> None:
  """Raises ValueError naming the first mask of an image not in `sizes` ({image_id or input
  name: (Ho, Wo)}), of another size than its image, or (with `every_image`) a missing image."""
  for image_id, mask in masks.items():
    if image_id not in sizes:
      raise ValueError(f'{flag}: {mask.path} is of image {image_id!r}, which the inputs lack.')
    if mask.semantic.shape != tuple(sizes[image_id]):
      raise ValueError(
        f'{flag}: {mask.path} is {mask.semantic.shape[1]}x{mask.semantic.shape[0]} but image '
        f'{image_id} is {sizes[image_id][1]}x{sizes[image_id][0]} (width x height).'
      )
  missing = sorted(set(sizes) - set(masks))
  if every_image and missing:
    raise ValueError(
      f'{flag}: {len(missing)} eval images have no mask in it (first: {missing[:5]}); it must '
      'hold one for every image it refines.'
    )


def to_mask_frame(
  maps: np.ndarray,
  unpadded_size: tuple[int, int],
  padded_size: tuple[int, int],
  mask_size: tuple[int, int],
) -> np.ndarray:
  """(Ho, Wo, C) original-size maps -> (Hm, Wm, C) in the model's frame: nearest resize to the
  image's size inside the padded input, padding with 0, nearest resize to the mask size (the
  inverse of `postprocess.to_original_size`)."""
  resized = postprocess.resize_nearest(maps, unpadded_size)
  full = np.zeros(tuple(padded_size) + maps.shape[2:], maps.dtype)
  full[: resized.shape[0], : resized.shape[1]] = resized
  return postprocess.resize_nearest(full, mask_size)


def choose_given(orig_label: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, ...]:
  """A seeded random `fraction` of an image's ground-truth segments, as a partial mask.

  Args:
    orig_label: int (Ho, Wo, 3) [semantic, instance, crowd] ground truth.
    fraction: the share of its (non-void, non-crowd) segments given, rounded to whole segments.
    seed: the image's seed (the run's seed and the image id), so every pass gives the same.

  Returns:
    (semantic, instance): int32 (Ho, Wo) each, the given segments with ids 1..n, 0 unknown.
  """
  semantic, instance, crowd = (orig_label[..., c].astype(np.int64) for c in range(3))
  valid = (semantic > 0) & (instance > 0) & (crowd == 0)
  keys = semantic * (int(instance.max()) + 1) + instance
  segments = np.unique(keys[valid])
  rng = np.random.default_rng(seed)
  chosen = rng.permutation(segments)[: int(round(fraction * len(segments)))]
  given = valid & np.isin(keys, chosen)
  # Ids 1..n in the order of the chosen segments (the model's ids are arbitrary).
  table = {int(key): n for n, key in enumerate(chosen, start=1)}
  ids = np.zeros_like(instance)
  for key, n in table.items():
    ids[given & (keys == key)] = n
  return np.where(given, semantic, 0).astype(np.int32), ids.astype(np.int32)


def paste_given(
  semantic: np.ndarray,
  instance: np.ndarray,
  given: MaskInput,
  is_thing: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
  """The given segments pasted over a post-processed prediction, exactly, at original size.

  The sampler held the given ids at the given pixels, so predicted pixels elsewhere that carry a
  given id are the model's continuation of that segment: they join it (with its class). Pixels
  of a stuff class that a given segment has join it too (a stuff class is one segment). Every
  other predicted segment keeps an id of its own.

  Args:
    semantic, instance: int (Ho, Wo) post-processed prediction.
    given: the partial mask of the same size (0 unknown).
    is_thing: (num_classes,) bool per semantic value.

  Returns:
    (semantic, instance), int32 (Ho, Wo) each.
  """
  known = given.instance > 0
  semantic = np.where(known, given.semantic, semantic).astype(np.int32)
  instance = np.where(known, given.instance, instance).astype(np.int32)
  for given_id in np.unique(given.instance[known]):
    cls = given.semantic[known & (given.instance == given_id)][0]
    semantic[~known & (instance == given_id)] = cls
    if not is_thing[cls]:
      instance[~known & (semantic == cls)] = given_id
  return semantic, instance


def refined_ids_table(
  refined: np.ndarray,
  source: np.ndarray,
  num_classes: int,
  max_instances: int,
  match_iou: float,
) -> np.ndarray:
  """The input's id of every refined segment, both masks in the model's frame.

  The refined mask's instance ids need not be the input's (the sampler may renumber), so its
  segments are matched to the input's by the Hungarian algorithm on class-aware IoU
  (`samples.match`). A matched refined segment takes its input segment's id, an unmatched one an
  id the input does not use.

  Args:
    refined, source: int (Hm, Wm, 2) [semantic, instance] ids.
    num_classes, max_instances: the id ranges.
    match_iou: a matched pair's IoU must exceed it.

  Returns:
    int64 (max_instances,): the output id of each refined instance id (0 for 0).
  """
  labels_r, classes_r, ids_r = samples.segments(refined, num_classes, max_instances)
  labels_s, classes_s, ids_s = samples.segments(source, num_classes, max_instances)
  to_s, _ = samples.match(labels_s, classes_s, labels_r, classes_r, match_iou)
  table = np.zeros(max_instances, np.int64)
  fresh = max(int(source[..., 1].max()), max_instances - 1) + 1
  for r, s in enumerate(to_s):
    table[ids_r[r]] = ids_s[s] if s >= 0 else fresh + r
  return table


def neighbourhoods(ids: np.ndarray) -> np.ndarray:
  """(Hm, Wm) ids -> (Hm, Wm, 9): the ids of each cell's 3 x 3 neighbourhood (edges repeated)."""
  padded = np.pad(ids, 1, mode='edge')
  height, width = ids.shape
  return np.stack(
    [padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)], axis=-1
  )


def input_kept(
  refined: np.ndarray, source_cells: np.ndarray, source: np.ndarray, to_original
) -> np.ndarray:
  """Where a refinement keeps its input's pixels: where the two differ by no more than a cell.

  A pixel keeps the input's id when that id is among the refined ids of its cell's 3 x 3
  neighbourhood and the refined id of its cell is among the input's ids of that neighbourhood:
  boundaries that moved by a cell of the model's coarse grid stay the input's, at full
  resolution, while a segment the refinement added, removed, split or merged is the model's.

  Args:
    refined: int (Hm, Wm) refined instance ids in the input's ids (`refined_ids_table`).
    source_cells: int (Hm, Wm) the input's instance ids in the model's frame.
    source: int (Ho, Wo) the input's instance ids at the original size.
    to_original: nearest resize (Hm, Wm, C) -> (Ho, Wo, C) from the model's frame.

  Returns:
    bool (Ho, Wo).
  """
  refined_in_source = (neighbourhoods(source_cells) == refined[..., None]).any(axis=-1)
  near = to_original(np.concatenate([neighbourhoods(refined), refined_in_source[..., None]], -1))
  return (near[..., :9] == source[..., None]).any(axis=-1) & (near[..., 9] > 0)


def keep_agreeing(
  semantic: np.ndarray,
  instance: np.ndarray,
  source: MaskInput,
  kept: np.ndarray,
  table: np.ndarray,
  is_thing: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
  """A refined prediction with its input's pixels where `input_kept`, the refined ones elsewhere.

  The model draws its mask on a coarser grid than the image, so a refinement redraws every
  boundary at that grid's resolution; where it only moved a boundary within a cell the input's
  pixels are kept, and where it changed a segment (one dropped, merged or split in the input, a
  class changed) the refined pixels are taken, with the input's ids for the segments matched to
  it. A stuff class ends as one segment.

  Args:
    semantic, instance: int (Ho, Wo) post-processed refined prediction.
    source: the input prediction at the same size.
    kept: bool (Ho, Wo) from `input_kept`.
    table: the output id of each refined instance id (`refined_ids_table`).
    is_thing: (num_classes,) bool per semantic value.

  Returns:
    (semantic, instance), int32 (Ho, Wo) each.
  """
  semantic = np.where(kept, source.semantic, semantic)
  instance = np.where(kept, source.instance, table[instance])
  instance = np.where(semantic > 0, instance, 0)
  semantic = np.where(instance > 0, semantic, 0).astype(np.int32)
  return semantic, postprocess.merge_stuff(semantic, instance, is_thing).astype(np.int32)
