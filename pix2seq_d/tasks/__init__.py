"""pix2seq_d.tasks."""
