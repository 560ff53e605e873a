"""pix2seq_d.evaluation."""
