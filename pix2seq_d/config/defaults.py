"""Defaults shared by every experiment config: the published COCO Pix2Seq-D settings.

Each experiment config (configs/*.py, loaded by file path) starts from `get_base_config()` and
overrides what differs; what several configs set for one reason is a function here
(`shrink_to_tiny_model`, `smoke_run`, `video_fine_tune`, `authors_video_sampling`). It lives
in the package, so a config file works from any directory and the installation adds no top-level
`configs` package to clash with other projects'. Every number the model, diffusion, data,
optimisation and evaluation code uses lives here, so a run is described by its config alone
(`--config.a.b=value` overrides any of them on the command line).
"""

import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
  """Returns the COCO panoptic stage-1 settings of the paper (Chen et al. 2022, Pix2Seq-D)."""
  config = ml_collections.ConfigDict()
  config.seed = 42
  # The task (pix2seq_d/tasks/): 'panoptic' segments images; 'video_panoptic' streams videos,
  # each frame conditioned on the masks of earlier frames.
  config.task = 'panoptic'

  # ---------------------------------------------------------------- model
  config.model = model = ml_collections.ConfigDict()
  model.image_size = (1024, 1024)  # (H, W) of the padded input image.
  model.mask_size = (512, 512)  # (Hm, Wm) of the generated mask; must divide image_size.
  # Semantic ids incl. 0 = void: COCO's 133 classes + 1; at most 256. 0 takes it from the dataset
  # (its categories + 1), e.g. for a COCO-format folder of one's own.
  model.num_classes = 134
  model.max_instances = 101  # instance ids 0..100, 0 = void. At most 256.
  # Compute dtype: 'auto' = bfloat16 on GPU / TPU, float32 on CPU. Norms, softmax and the loss
  # always run in float32; parameters are `param_dtype`.
  model.dtype = 'auto'
  model.param_dtype = 'float32'
  # Attention (pix2seq_d/models/attention.py): 'auto' = cuDNN flash attention (sequences padded to
  # multiples of cudnn_seq_multiple) on GPU in half precision, Pallas splash attention on TPU,
  # memory-efficient chunked attention elsewhere; 'xla' is the reference (memory grows with
  # tokens squared); 'cudnn', 'splash', 'chunked' force one.
  model.attention_impl = 'auto'
  model.attention_block = 512  # token tile of 'splash' and 'chunked' (sequences padded to it).
  # 'cudnn' pads sequences to a multiple of this (of 64, what cuDNN trains on). 128, not 64: the
  # COCO bottleneck's 4097 tokens would pad to 4160, and cuDNN's fused attention backward has a
  # reported bug on H100 / H200 at lengths of 64 mod 128 (the GPU suite checks both paddings).
  # Where cuDNN refuses a shape, 'auto' runs that attention 'chunked' and warns once.
  model.cudnn_seq_multiple = 128
  # Rematerialisation policy per part, applied to each ResNet bottleneck block, encoder layer,
  # fusion block and TransUNet stage (stem, ResBlocks, bottleneck layers, up-sampling, head):
  # 'none', 'nothing_saveable', 'dots_saveable' or 'dots_with_no_batch_dims_saveable'
  # (pix2seq_d/models/layers.py says what each keeps). Chosen so that a per-device batch of 16
  # 1024x1024 images trains in 80 GB: the activations kept for the backward pass, bfloat16, per
  # image (`python -m pix2seq_d.tools.benchmark --parts=memory`, docs/performance.md) are
  # 17.6 GiB with no remat, 3.7 GiB with these three parts remat'd and the encoder not, 2.0 GiB
  # as set here; the recomputation adds ~30% to the FLOPs of a step.
  model.remat = ml_collections.ConfigDict()
  model.remat.resnet = 'nothing_saveable'
  model.remat.encoder = 'dots_with_no_batch_dims_saveable'
  model.remat.fusion = 'nothing_saveable'
  model.remat.denoiser = 'nothing_saveable'
  model.gn_max_groups = 32  # GroupNorm groups = min(channels // 4, gn_max_groups).
  model.gn_eps = 1e-5
  model.ln_eps = 1e-6
  model.zero_init_scale = 1e-10  # variance scale of the near-zero output convolutions.
  # 2-D sin-cos position embeddings (encoder tokens, denoiser bottleneck): row and column indices
  # are scaled to [0, pos_emb_max] over the grid, as the reference (2 pi, written 6.2831852).
  model.pos_emb_max = 6.2831852

  model.resnet = ml_collections.ConfigDict()
  model.resnet.stage_sizes = (3, 4, 6)  # ResNet-50 block groups 1-3 ("C4").
  model.resnet.width = 64  # stem channels; bottleneck widths 64, 128, 256 (x4 out).
  model.resnet.bn_momentum = 0.9
  model.resnet.bn_eps = 1e-5

  model.encoder = ml_collections.ConfigDict()
  model.encoder.num_layers = 12
  model.encoder.dim = 512
  model.encoder.num_heads = 16
  model.encoder.mlp_dim = 2048
  model.encoder.dropout = 0.1
  model.encoder.drop_path = 0.1

  model.fusion = ml_collections.ConfigDict()
  model.fusion.dim = 256  # channels of the fused features handed to the denoiser.

  model.denoiser = ml_collections.ConfigDict()
  model.denoiser.dim = 128
  model.denoiser.dim_mults = (1, 1, 2, 2)
  model.denoiser.num_res_blocks = 1  # per down level; the up path uses num_res_blocks + 1.
  model.denoiser.dropout = 0.0
  model.denoiser.time_scaling = 1000.0  # gamma is embedded as sin/cos of gamma * time_scaling.
  model.denoiser.time_mlp_mult = 4  # time embedding width = dim * time_mlp_mult.
  model.denoiser.transformer_layers = 6
  model.denoiser.transformer_dim = 512
  model.denoiser.transformer_heads = 8
  model.denoiser.transformer_mlp_ratio = 4
  model.denoiser.transformer_dropout = 0.0

  # ------------------------------------------------------------ diffusion
  config.diffusion = diffusion = ml_collections.ConfigDict()
  diffusion.b_scale = 0.1
  diffusion.schedule = 'cosine'  # 'cosine', 'sigmoid' or 'linear' gamma(t).
  diffusion.loss_weight_p = 0.2  # pixel weight (1 / (count + 1)) ** p per instance id.
  # Weight of an auxiliary loss that is not in the paper: per-pixel class cross-entropy of a linear
  # head on the fused encoder features (trained only; sampling never uses it). 0 = off (the paper).
  diffusion.semantic_aux_weight = 0.0
  diffusion.self_cond = False
  diffusion.self_cond_rate = 0.5  # fraction of the batch that gets an x0 estimate when on.
  diffusion.sampler = 'ddim'  # 'ddim' or 'ddpm'.
  diffusion.steps = 20
  # Video: sampling steps of frames 1.. (frame 0 takes `steps`); the reference's 'iterations_2'.
  # The authors' video inference takes 100 + 100 steps with td 0, which scored lower on the
  # shapes video sets (docs/experiments.md: video sampling steps).
  diffusion.steps_later_frames = 20
  diffusion.td = 1.0  # asymmetric time interval.
  diffusion.x0_clip = True  # clip the x0 estimate to [-b_scale, b_scale].
  # Video: chance each conditioning mask is replaced by zeros in training (the authors' video
  # configs use 0.2).
  diffusion.frames_dropout = 0.2
  diffusion.num_cond_frames = 2  # video: masks of t-2 and t-1 condition frame t.

  # ----------------------------------------------------------------- data
  config.data = data = ml_collections.ConfigDict()
  # A TFDS name, 'coco_folder', 'davis', 'kitti_step', 'shapes', 'shapes_video'.
  data.name = 'coco/2017_panoptic'
  data.data_dir = ''  # TFDS data_dir; '' = TFDS's default (~/tensorflow_datasets).
  data.coco_root = ''  # a folder in the official COCO panoptic layout (name 'coco_folder').
  data.davis_root = ''  # a folder in the official DAVIS 2017 layout (name 'davis').
  # A folder in the KITTI-STEP layout, images/<split>/<seq>/ and panoptic_maps/<split>/<seq>/
  # (name 'kitti_step').
  data.step_root = ''
  data.davis_resolution = '480p'  # DAVIS frame folder: '480p' or 'Full-Resolution'.
  # DAVIS annotation folder: 'Annotations_unsupervised' or 'Annotations' (semi-supervised).
  data.davis_annotations = 'Annotations_unsupervised'
  data.davis_void_id = 255  # DAVIS annotation value of void pixels.
  data.train_split = 'train2017'
  data.eval_split = 'val2017'
  data.shuffle_buffer = 10_000
  data.scale_jitter = (1.0, 3.0)  # s ~ U(min, max); 1.0, 1.0 turns jitter off.
  data.flip = True
  data.color_jitter_strength = 1.0  # 0 turns colour jitter off.
  data.color_jitter_prob = 0.8  # SimCLR: chance the colour jitter is applied to an image.
  data.grayscale_prob = 0.2  # SimCLR: chance an image is turned grayscale.
  data.image_pad_value = 0.3
  # How training gives segments their instance ids (the same mapping for all frames of a video
  # window): 'random' = distinct ids drawn from 1..max_instances-1 (images, the paper);
  # 'shuffle' = a random permutation of 1..N for the N segments (the authors' DAVIS, Cityscapes);
  # 'track' = the dataset's own track ids through a permutation of 1..(largest), stuff and crowd
  # id 0 (the authors' KITTI-STEP; KITTI-STEP-layout folders only);
  # 'location' = not random: the cell of a grid over the mask (about sqrt(ids) cells a side) that
  # holds the segment's centroid, the nearest free cell when taken (configs/shapes.py).
  data.instance_id_order = 'random'
  # Crowd regions (a thing class without instances) in training: 'void' (not learned; PQ ignores
  # them) or 'segment' (one segment of their class, as the authors' KITTI-STEP training: STQ's
  # IoU scores crowd pixels by class).
  data.train_crowd = 'void'
  # Image resampling of the training augmentation: 'bilinear', or 'bicubic' as the authors' video
  # training. Evaluation and prediction resize bilinearly (with antialiasing) either way.
  data.train_resize_method = 'bilinear'
  data.eval_orig_size = (640, 640)  # original-size eval labels are zero-padded to this (H, W).
  data.num_parallel_calls = -1  # tf.data.AUTOTUNE
  # Training stops with an error when this many examples in a row are broken (skipped, no good one
  # between them): a folder of unreadable files fails at once instead of skipping forever (0 = no
  # limit).
  data.max_skips_in_a_row = 1000
  data.prefetch = 2
  data.video_window = 3  # frames per training window (video).
  # Video training windows are drawn round-robin from this many decoded clips (all held in
  # memory), then shuffled in a buffer of this many decoded windows, so batches mix clips.
  data.video_clips_interleaved = 8
  data.video_window_shuffle_buffer = 64

  # ---------------------------------------------------------------- train
  config.train = train = ml_collections.ConfigDict()
  train.batch_size = 512  # global.
  # Gradient accumulation: each step splits every device's rows into this many microbatches and
  # makes one update from their mean gradient, so a large batch trains on few devices (memory
  # follows the microbatch; BatchNorm statistics are per microbatch). 1 = off.
  train.microbatches = 1
  train.num_steps = 185_000  # ≈ 800 epochs of COCO train2017 at batch 512.
  train.learning_rate = 1e-4
  train.warmup_steps = 1_150  # ≈ 5 epochs.
  train.end_lr_factor = 0.1
  train.lr_schedule = 'linear'  # warm-up then linear decay; 'constant' after warm-up.
  train.weight_decay = 0.05
  train.b1 = 0.9
  train.b2 = 0.999
  train.eps = 1e-8
  train.grad_clip_norm = 1.0
  train.ema_decay = 0.999
  train.log_every = 100
  train.image_summary_every = 5_000
  train.checkpoint_every = 5_000
  train.keep_checkpoints = 5
  train.eval_every = 0  # 0 = only at the end of train_and_eval.

  # ----------------------------------------------------------------- eval
  config.eval = evaluation = ml_collections.ConfigDict()
  # The evaluators (pix2seq_d/evaluation/registry.py) run over each evaluation, any the task can
  # produce: 'pq' (COCO panoptic quality) for images, 'davis_jf' (DAVIS 2017 J&F) for videos.
  evaluation.metrics = ('pq',)
  evaluation.batch_size = 8  # global.
  evaluation.num_examples = 0  # 0 = the whole eval split.
  evaluation.min_pixels = 40  # instances smaller than this (original size) become void.
  # Write predictions under <workdir>/predictions/step_<N>: COCO panoptic PNG + JSON for images;
  # for video per clip the DAVIS results layout, <video>/<frame>.png indexed PNGs of object ids,
  # and COCO panoptic PNGs + JSON whose segment ids persist over time.
  evaluation.write_predictions = False
  evaluation.num_image_summaries = 4
  # Image task: K samples per image from independent noise (one compiled program, the encoder
  # run once), merged into one panoptic map with a per-pixel uncertainty (tasks/samples.py);
  # with K >= 2 config.eval.metrics may add 'pq_single' (PQ of the first sample alone) and
  # 'uncertainty_auroc'. 1 = one sample, as in the paper.
  evaluation.num_samples = 1
  # Two samples' segments match (merge of several samples) when their class-aware IoU exceeds it.
  evaluation.sample_match_iou = 0.5
  # Image task, completion: every eval image is given this seeded random share of its ground-truth
  # segments, held by replacement while the rest is sampled (tasks/mask_inputs.py); metrics may
  # add 'pq_rest', 'pq_rest_unaided' (a plain sample of the same images) and 'given_pixels_kept'.
  evaluation.given_fraction = 0.0
  # Image task, refinement: a COCO panoptic prediction file (its PNGs in the folder of the same
  # name without .json) of the eval images, each noised to refine_t0 and denoised over the
  # remaining steps; metrics may add 'pq_input' (the input's own PQ). t0 = 1 is plain sampling.
  evaluation.refine_from = ''
  evaluation.refine_t0 = 0.5
  # Refinement keeps the input's pixels where the refined mask moved a boundary by at most one
  # cell of the model's coarser mask grid, and takes the refined pixels where it added, removed,
  # split or merged a segment (tasks/mask_inputs.py); False: the refined mask alone, every
  # boundary redrawn at the mask grid's resolution.
  evaluation.refine_keep_input = True
  # ... and with num_samples = K >= 2 refined samples merged, the input's pixels also where the
  # samples' uncertainty exceeds this. 1: the merged map wherever it differs from the input by
  # more than a cell (best on inputs about as good as the model); 0: only where all K agree (best
  # on inputs better than the model; docs/experiments.md: refinement).
  evaluation.refine_max_uncertainty = 1.0
  # --mode=eval only: follow a training run in the same workdir, evaluating each checkpoint once
  # as it appears, until the checkpoint of train.num_steps (pix2seq_d/loops/eval_checkpoints.py).
  evaluation.follow = False
  evaluation.follow_poll_s = 30.0  # how often the follower looks for a new checkpoint.
  # The follower stops with an error when no training run has held the workdir's run.lock for
  # this long and the final checkpoint has not appeared (a trainer restarted within it is fine).
  evaluation.follow_timeout_s = 3600.0
  # Video: condition each frame on the ground-truth masks of earlier frames instead of the model's
  # own predictions (an upper bound on tracking), or on nothing (every frame on its own).
  evaluation.use_gt_cond_frames = False
  evaluation.single_frames = False
  # Video: an id that appears again after this many frames without it starts a new track (the
  # model can only copy ids from the masks it is conditioned on; the authors' KITTI-STEP
  # evaluation uses diffusion.num_cond_frames). 0: an id is one track over the whole clip.
  evaluation.new_track_after = 0
  # Images: True (ours): pixels predicted with instance 0 become void. False (the authors'
  # Cityscapes evaluation): they vote one class among themselves and keep it, as one segment.
  evaluation.void_instance_zero = True
  # Video: True (ours): each track takes the class most of its pixels have over the clip, and
  # pixels predicted with instance 0 become void. False (the authors' KITTI-STEP evaluation):
  # each pixel keeps its predicted class, instance id as predicted; stuff pixels with instance 0
  # keep their class, thing pixels with instance 0 keep their class with no segment id
  # (postprocess.py `keep_pixel_classes`).
  evaluation.one_class_per_track = True
  # Video: clips are padded with blank frames to a multiple of this many frames (the padding is
  # sampled after the real frames and dropped), so the sampler compiles once per bucket length,
  # not once per video length.
  evaluation.video_length_bucket = 16
  evaluation.video_strip_frames = 8  # video: frames per TensorBoard strip (evenly spaced).
  # Video: score only the first N frames of each sequence, as the authors' evaluation does (their
  # input truncates every clip to max_num_frames = 100); nothing after them is sampled. 0 = every
  # frame, as the KITTI-STEP benchmark server scores.
  evaluation.max_frames_per_sequence = 0
  # Video, with max_frames_per_sequence > 0: sample whole sequences and let 'stq' report both
  # protocols in one pass: STQ, AQ, IoU over the first N frames and STQ_all_frames,
  # AQ_all_frames, IoU_all_frames over every frame (the other metrics and the prediction files
  # keep the first N). Costs the sampling of every frame.
  evaluation.score_all_frames_too = False

  # ----------------------------------------------------------------- mesh
  config.mesh = mesh = ml_collections.ConfigDict()
  mesh.data = -1  # -1 fills with the remaining devices.
  mesh.fsdp = 1
  mesh.model = 1

  # -------------------------------------------------------------- predict
  config.predict = ml_collections.ConfigDict()
  # An image or a folder of images; for a video task a folder of frames, a folder of such
  # folders, or a video file.
  config.predict.input = ''
  config.predict.output = ''  # folder for COCO panoptic PNG + JSON and coloured overlays.
  # Image task: a COCO panoptic file of partial masks of the inputs (matched by file name, its
  # PNGs in the folder of the same name without .json; id 0 unknown): the given segments are
  # held while the rest is sampled, and come out exactly. An input without one is sampled plainly.
  config.predict.given = ''

  # ----------------------------------------------------------------- plan
  config.plan = ml_collections.ConfigDict()
  # --mode=plan: also compile the train step (never run) for XLA's per-device memory analysis;
  # minutes for a full-size model on a CPU, where the abstract estimate takes seconds.
  config.plan.compile = False

  # ------------------------------------------------------------ init from
  config.init_from = ml_collections.ConfigDict()
  config.init_from.path = ''  # a workdir or checkpoint step directory of another run.
  # 'all': every array of the same shape (the denoiser's input conv may grow for video, arrays
  # sized by another class count start afresh, with a warning); 'encoder': the image encoder.
  config.init_from.mode = 'all'
  # 'pix2seq_d': a run of ours; 'tf': a TF checkpoint of the reference's image encoder (mode
  # 'encoder'), e.g. its Objects365-pretrained ResNet-50 C4 (pix2seq_d/runtime/tf_weights.py).
  config.init_from.format = 'pix2seq_d'
  return config


def shrink_to_tiny_model(model) -> None:
  """Makes config.model the tiny model of unit tests and `:runlocal` smoke runs (about 0.1M
  parameters; image and mask sizes are the caller's): one-block ResNet stages of width 8, one
  encoder and one bottleneck layer of width 32, a denoiser of width 16, no rematerialisation."""
  model.resnet.stage_sizes = (1, 1, 1)
  model.resnet.width = 8
  model.encoder.num_layers = 1
  model.encoder.dim = 32
  model.encoder.num_heads = 2
  model.encoder.mlp_dim = 64
  model.fusion.dim = 16
  model.denoiser.dim = 16
  model.denoiser.dim_mults = (1, 1, 2, 2)
  model.denoiser.transformer_layers = 1
  model.denoiser.transformer_dim = 32
  model.denoiser.transformer_heads = 2
  for part in model.remat:
    model.remat[part] = 'none'


def smoke_run(config, image_size, mask_size, *, tiny_model: bool = True) -> None:
  """Makes `config` its `:runlocal` variant, minutes on a CPU: (H, W) `image_size` images,
  (Hm, Wm) `mask_size` masks, 4 training steps of batch 2 that log every step. With `tiny_model`,
  also the model of `shrink_to_tiny_model`, a checkpoint every 2 steps and 2 sampling steps (of
  the first frame, for video); without, the config's own model at those sizes."""
  config.model.image_size = image_size
  config.model.mask_size = mask_size
  train = config.train
  train.batch_size = 2
  train.num_steps = 4
  train.log_every = 1
  if tiny_model:
    shrink_to_tiny_model(config.model)
    train.checkpoint_every = 2
    config.diffusion.steps = 2


def video_fine_tune(config) -> None:
  """Makes `config` train as the authors' video fine-tuning of an image run (their
  configs/config_diffusion_panoptic_video.py; configs/davis.py and configs/kitti_step.py, which
  choose the task): unjittered frames resized bicubically, 50,000 steps of batch 32 at a constant
  learning rate of 3e-5 (they sweep 1e-5 and 3e-5) without warm-up, EMA decay 0.99, a checkpoint
  every 1,000 steps."""
  data = config.data
  data.scale_jitter = (1.0, 1.0)
  data.color_jitter_strength = 0.0
  data.train_resize_method = 'bicubic'
  train = config.train
  train.batch_size = 32
  train.num_steps = 50_000
  train.learning_rate = 3e-5
  train.lr_schedule = 'constant'
  train.warmup_steps = 0
  train.ema_decay = 0.99
  train.checkpoint_every = 1_000


def authors_video_sampling(diffusion) -> None:
  """Makes config.diffusion the authors' video inference: 100 DDIM steps for every frame and no
  time difference. Ours (the defaults: 20 + 20 steps, td 1) scored higher on both embedded video
  sets at a third of the time (docs/experiments.md: video sampling steps)."""
  diffusion.steps = 100
  diffusion.steps_later_frames = 100
  diffusion.td = 0.0
