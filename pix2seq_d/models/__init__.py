"""pix2seq_d.models."""
