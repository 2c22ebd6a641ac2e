"""Keras' VAE example (keras-io, examples/generative/vae.py, F. Chollet) set up exactly, and its published log.

The example trains the study's conv VAE (the same layers, Glorot-uniform weights and zero biases) on all
70,000 MNIST images (training and test images concatenated, grey levels in [0, 1], no validation), for
30 epochs at batch 128 with Keras' default Adam (learning rate 1e-3, epsilon 1e-7). Its loss per batch
is the mean over the batch of the binary cross-entropy summed over pixels, plus the mean KL to N(0, I);
``fit()`` prints, per epoch, ``reconstruction_loss`` and ``kl_loss`` as running means of those batch
means (``keras.metrics.Mean``), and a ``loss`` column that Keras 2's progress bar averages once more over
the epoch's steps (a mean of running means: above reconstruction + KL while the loss falls within an
epoch: 253.66 against 205.16 + 3.96 in its epoch 1). ``train.keras_log`` logs all three as Keras
computes them.

Version 2 is Keras' network and update exactly: the ``conv-keras`` architecture (TensorFlow's "same"
padding, bottom and right only, where ``conv`` pads both sides and so is the same network mirrored;
Keras' two z heads each initialised on their own) and ``train.adam_eps_placement = "keras"`` (epsilon
added to sqrt(v) before the bias correction). With the same weights, noise and batches it was checked
step by step against Keras 2.15 outside the repository (docs/keras-example.md has the figures). Left
different: the shuffles and the noise come from other generators. Version 1 trained the ``conv`` pair with torch's epsilon.
"""

from __future__ import annotations

from vaelab.config import RunConfig

SOURCE = (
    "keras-io examples/generative/vae.py (F. Chollet, created 2020/05/03), the 30-epoch log in its "
    "rendered page examples/generative/md/vae.md (keras-team/keras-io at commit 216c5a2b)"
)

# epoch, loss (the progress bar's), reconstruction_loss, kl_loss: the log as published
LOG = (
    (1, 253.6647, 205.1592, 3.9604),
    (2, 175.3276, 166.0741, 5.6646),
    (3, 164.6180, 157.1289, 5.9575),
    (4, 159.9903, 153.2397, 6.1860),
    (5, 157.7517, 150.9847, 6.2957),
    (6, 156.3130, 149.4794, 6.3866),
    (7, 154.8179, 148.2143, 6.4271),
    (8, 154.1232, 147.2314, 6.4529),
    (9, 153.2196, 146.4478, 6.4943),
    (10, 152.1982, 145.7807, 6.5371),
    (11, 151.8797, 145.1918, 6.5670),
    (12, 151.3647, 144.6646, 6.5975),
    (13, 151.0302, 144.2068, 6.6063),
    (14, 150.4563, 143.8471, 6.6398),
    (15, 150.0985, 143.4100, 6.6441),
    (16, 149.6108, 143.0211, 6.6628),
    (17, 149.2437, 142.7990, 6.6927),
    (18, 149.2876, 142.5346, 6.7011),
    (19, 149.0014, 142.2537, 6.7251),
    (20, 148.2962, 142.0005, 6.7257),
    (21, 148.6063, 141.8341, 6.7373),
    (22, 148.4330, 141.5164, 6.7565),
    (23, 148.2596, 141.3924, 6.7423),
    (24, 147.8061, 141.1230, 6.7710),
    (25, 147.8897, 141.0627, 6.7728),
    (26, 147.5552, 140.7714, 6.7679),
    (27, 147.3100, 140.6762, 6.7815),
    (28, 147.2303, 140.4241, 6.7965),
    (29, 147.1390, 140.3612, 6.7862),
    (30, 146.9508, 140.1473, 6.7960),
)


def reference_log() -> list[dict[str, float]]:
    """The published log, one record per epoch."""
    keys = ("epoch", "loss", "reconstruction_loss", "kl_loss")
    return [dict(zip(keys, row, strict=True)) for row in LOG]


def config() -> RunConfig:
    config = RunConfig()  # the study's conv VAE, d = 2, N(0, I), Bernoulli on grey levels, batch 128, 30 epochs
    config.data.validation_size = 0
    config.data.train_with_test = True
    config.model.arch = "conv-keras"  # Keras' padding and z heads
    config.train.adam_eps = 1e-7  # Keras' default
    config.train.adam_eps_placement = "keras"
    config.train.keras_log = True
    return config.validate()
