"""pix2seq_d.data."""
