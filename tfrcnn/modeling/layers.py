"""What the configured Keras layers share: config sections as constructor arguments that `get_config` and
`from_config` carry as plain dicts."""
import keras


class ConfiguredLayer(keras.layers.Layer):
    """A Keras layer whose constructor takes config sections first: `SECTIONS` names them, in order, with their
    `tfrcnn.config` types; each is kept as the attribute of its name (None allowed)."""

    SECTIONS = {}

    def get_config(self):
        sections = {name: getattr(self, name) for name in self.SECTIONS}
        return {**super().get_config(), **{k: None if v is None else v.to_dict() for k, v in sections.items()}}

    @classmethod
    def from_config(cls, config):
        sections = [None if config.get(name) is None else kind.from_dict(config[name])
                    for name, kind in cls.SECTIONS.items()]
        return cls(*sections, **{k: v for k, v in config.items() if k not in cls.SECTIONS})
