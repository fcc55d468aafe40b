"""Child process of tests/test_train.py: one training step with and without Distribute = "mirrored".

Devices must be split before the backend starts, hence a process of its own. argv: settings
(JSON), output folder, device count. Writes {out}/mirrored (a training run) and {out}/none (one
step on one device). Prints one JSON line: replicas and, on TensorFlow, the batch size each
train_step call saw (with the batch split, every replica sees its part).
"""
import json
import os
import sys
import time

settings, out, devices = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
backend = os.environ.get("KERAS_BACKEND", "tensorflow")
seen = []
if backend == "jax":
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
else:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)

    from regnet.networks import RegNetModel

    original = RegNetModel.train_step

    def train_step(self, data):  # record each replica's batch size at run time
        tf.py_function(lambda n: seen.append(int(n)) or 0, [tf.shape(data[0])[0]], tf.int64)
        return original(self, data)

    RegNetModel.train_step = train_step

from regnet.distribute import distribution_scope, replicas  # noqa: E402
from regnet.reading import PatchReader  # noqa: E402
from regnet.settings import load_settings  # noqa: E402
from regnet.train import Trainer, train  # noqa: E402

result = {}
# the whole training run on every device at once (model built, compiled and fitted in the scope) ...
t0 = time.perf_counter()
train(load_settings({**settings, "Distribute": "mirrored"}), f"{out}/mirrored", max_steps=1, progress=False)
with distribution_scope("mirrored") as strategy:
    result["mirrored"] = {"replicas": replicas(strategy), "train_step_batches": sorted(seen)}
print(f"mirrored run: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
# ... against the same first step on one device: the Trainer's model, one Adam step on batch 0
seen.clear()
t0 = time.perf_counter()
reference = load_settings({**settings, "Distribute": "none"})
trainer = Trainer(reference, f"{out}/none", progress=False)
model = trainer.build_model()
with PatchReader(reference, "Training", workers=1) as reader:
    model.train_on_batch(*next(reader))
trainer.save(model, trainer.checkpoint, step=1)
result["none"] = {"replicas": 1, "train_step_batches": sorted(seen)}
print(f"one device, one step: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
print(json.dumps(result))
