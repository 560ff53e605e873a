"""pix2seq_d.config: the defaults every experiment config starts from (defaults.py, each field
documented once), the checks run before anything is built (checks.py; they only check), and the
facts taken from the data applied in one place (data_facts.py)."""
