"""pix2seq_d.diffusion."""
