"""Train a small Keras 3 conv model (dilation + frozen batch norm) for 5 steps.

Every rank takes its own slice of one fixed global batch; with one rank the whole batch.
Saves the final weights to OUT/weights-np<size>-rank<rank>.npz.
"""
import argparse
import os

import numpy as np

from dcsp_dist import distributed

ctx = distributed.init()
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--out", required=True)
parser.add_argument("--global-batch", type=int, default=8)
args = parser.parse_args()

keras.utils.set_random_seed(1)
model = keras.Sequential([
    keras.Input((16, 16, 3)),
    keras.layers.Conv2D(8, 3, padding="same", dilation_rate=2),
    keras.layers.BatchNormalization(trainable=False),
    keras.layers.Activation("relu"),
    keras.layers.Conv2D(8, 3, padding="same", dilation_rate=2),
    keras.layers.GlobalAveragePooling2D(),
    keras.layers.Dense(4),
])
optimizer = keras.optimizers.SGD(learning_rate=0.1, momentum=0.9)
optimizer.build(model.trainable_variables)
distributed.broadcast_state(model, optimizer)

rng = np.random.default_rng(0)
images = rng.normal(size=(5, args.global_batch, 16, 16, 3)).astype(np.float32)
labels = rng.integers(0, 4, size=(5, args.global_batch))
per_rank = args.global_batch // ctx.size
mine = slice(ctx.rank * per_rank, (ctx.rank + 1) * per_rank)


@tf.function
def step(x, y):
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=model(x, training=False)))
    grads = distributed.allreduce_gradients(tape, loss, model.trainable_variables)
    optimizer.apply(grads, model.trainable_variables)
    return loss


for i in range(5):
    step(images[i, mine], labels[i, mine])
os.makedirs(args.out, exist_ok=True)
np.savez(os.path.join(args.out, f"weights-np{ctx.size}-rank{ctx.rank}.npz"),
         *[np.asarray(v) for v in model.weights])
print(f"rank {ctx.rank}: saved", flush=True)
