"""Pix2Seq-D: panoptic segmentation of images and videos as discrete mask diffusion, in JAX."""
