"""One Keras model class for every network: the graph is rebuilt from (network, input size, options).

The saved ``.keras`` file stores those three, complete (every option explicit), so reloading needs
no defaults from the code that is installed at the time, only the registered layer classes.
"""
from __future__ import annotations

import keras

import regnet
from regnet.networks.layers import PACKAGE, IntegerNoise, IntensityNormalization, dvf_head
from regnet.networks.registry import get_spec
from regnet.networks.spec import NetworkOptions


@keras.saving.register_keras_serializable(package=PACKAGE)
class RegNetModel(keras.Model):
    """A functional model: input (B, n, n, n, 2) [moving, fixed] in HU -> DVF (B, m, m, m, 3) in mm, (x, y, z).

    ``input_size`` None gives dynamic spatial sizes (inference on any valid size).
    """

    def __init__(self, network: str, input_size: int | None = None, options: dict | None = None,
                 name: str | None = None, **kwargs):
        spec = get_spec(network)
        opts = NetworkOptions.from_dict(dict(options or {}))
        if input_size is not None:
            spec.output_size(input_size)
        inputs = keras.Input((input_size, input_size, input_size, 2), name="moving_fixed")
        x = IntegerNoise(opts.input_noise, seed=opts.seed, name="input_noise")(inputs)
        x = IntensityNormalization(**opts.intensity, name="intensity")(x)
        outputs = dvf_head(spec.graph(x, opts))
        super().__init__(inputs=inputs, outputs=outputs, name=name or spec.name, **kwargs)
        self.network_spec = spec
        self.network_options = opts
        self.input_size = input_size

    @property
    def network_name(self) -> str:
        return self.network_spec.name

    def get_config(self):
        return {"network": self.network_spec.name, "input_size": self.input_size,
                "options": self.network_options.to_dict(), "name": self.name,
                "regnet_version": regnet.__version__}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config.pop("regnet_version", None)
        return cls(**config)
