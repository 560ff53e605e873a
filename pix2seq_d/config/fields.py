"""Config trees as flat {'a.b.c': value} dicts: for hparams, plans and comparisons."""


def flat(tree: dict, prefix: str = '') -> dict[str, object]:
  """{'model.encoder.dim': 512, ...} of a nested dict (a ConfigDict's `to_dict()`)."""
  fields = {}
  for key, value in tree.items():
    name = f'{prefix}{key}'
    if isinstance(value, dict):
      fields.update(flat(value, f'{name}.'))
    else:
      fields[name] = value
  return fields
