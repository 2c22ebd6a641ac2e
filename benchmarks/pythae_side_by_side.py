"""pythae and vaelab training the study's conv VAE on the same machine, in the same process.

pythae (clementchadebec/benchmark_VAE) is one of the established libraries the speed targets are
set against. Here it trains the study's network (Conv32-s2, Conv64-s2, Dense16 -> z = 2; Dense
7*7*64, ConvT64-s2, ConvT32-s2, ConvT1, sigmoid; Bernoulli cross-entropy, Adam 1e-3, batch 128)
with its own ``BaseTrainer.train_step``, data path and loss, and vaelab trains the same model with
``vaelab.train.TrainStep`` as ``vaelab train`` does. Both are timed over whole passes of the same
images after a warm-up pass; the best pass is kept (interference only ever slows a pass down).

pythae is not a vaelab dependency; install it beside vaelab, in a venv that reuses the installed
torch so that pip downloads no other torch:

    python -m venv --system-site-packages /tmp/pythae-venv
    /tmp/pythae-venv/bin/pip install pythae
    /tmp/pythae-venv/bin/python benchmarks/pythae_side_by_side.py [--images 10000] [--passes 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch
from torch import nn


def pythae_rate(images: torch.Tensor, passes: int) -> float:
    from pythae.data.datasets import BaseDataset
    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder
    from pythae.trainers import BaseTrainer, BaseTrainerConfig

    class Encoder(BaseEncoder):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(
                nn.Conv2d(1, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
                nn.Flatten(), nn.Linear(7 * 7 * 64, 16), nn.ReLU(),
            )  # fmt: skip
            self.mu, self.log_var = nn.Linear(16, 2), nn.Linear(16, 2)

        def forward(self, x):
            h = self.net(x)
            return ModelOutput(embedding=self.mu(h), log_covariance=self.log_var(h))

    class Decoder(BaseDecoder):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(
                nn.Linear(2, 7 * 7 * 64), nn.ReLU(), nn.Unflatten(1, (64, 7, 7)),
                nn.ConvTranspose2d(64, 64, 3, 2, 1, output_padding=1), nn.ReLU(),
                nn.ConvTranspose2d(64, 32, 3, 2, 1, output_padding=1), nn.ReLU(),
                nn.ConvTranspose2d(32, 1, 3, 1, 1), nn.Sigmoid(),
            )  # fmt: skip

        def forward(self, z):
            return ModelOutput(reconstruction=self.net(z))

    torch.manual_seed(0)
    config = VAEConfig(input_dim=(1, 28, 28), latent_dim=2, reconstruction_loss="bce")
    model = VAE(config, encoder=Encoder(), decoder=Decoder())
    data = images.float().div(255)
    with tempfile.TemporaryDirectory() as out:
        training = BaseTrainerConfig(
            output_dir=out, num_epochs=1, learning_rate=1e-3, per_device_train_batch_size=128, no_cuda=True
        )
        trainer = BaseTrainer(model, BaseDataset(data, torch.zeros(len(data))), training_config=training)
        trainer.prepare_training()
        return _best_pass(lambda: trainer.train_step(1), len(data), passes)


def vaelab_rate(images: torch.Tensor, passes: int, precision: str) -> float:
    from vaelab.allocator import retain_freed_memory
    from vaelab.bench.suite import vaelab_train_step
    from vaelab.config import ModelConfig
    from vaelab.data import Batches

    retain_freed_memory()
    _, step = vaelab_train_step(ModelConfig(arch="conv", latent_dim=2), precision)
    batches = Batches(images, batch_size=128, training=True)
    generator = torch.Generator().manual_seed(0)

    def one_pass() -> None:
        for x in batches.epoch(generator):
            terms = step(x)
        terms.loss.item()  # the last step has finished

    return _best_pass(one_pass, len(images), passes)


def _best_pass(one_pass, n: int, passes: int) -> float:
    one_pass()  # warm-up: allocator, oneDNN primitive caches
    best = float("inf")
    for _ in range(passes):
        start = time.perf_counter()
        one_pass()
        best = min(best, time.perf_counter() - start)
    return n / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10_000, help="MNIST training images per pass")
    parser.add_argument("--passes", type=int, default=3, help="timed passes (the best is kept)")
    args = parser.parse_args()
    if args.images < 128 or args.passes < 1:
        parser.error("--images must be at least one batch (128) and --passes at least 1")
    try:
        import pythae  # noqa: F401
    except ImportError:
        parser.error("pythae is not installed in this Python; see this script's docstring for the separate venv")
    from vaelab.bench.suite import cpu_description, matmul_peak
    from vaelab.core.platform import cpu_capabilities
    from vaelab.data import load_dataset

    images = load_dataset("mnist").x_train[: args.images]  # N x 1 x 28 x 28 uint8
    native_bf16 = cpu_capabilities().native_bf16  # emulated bf16 would take many minutes, and say nothing
    results = {
        "cpu": cpu_description(),
        "threads": torch.get_num_threads(),
        "peak_gflops": {"fp32": matmul_peak(torch.float32).gflops},
        "pythae_fp32": pythae_rate(images, args.passes),
        "vaelab_fp32": vaelab_rate(images, args.passes, "fp32"),
    }
    if native_bf16:
        results["peak_gflops"]["bf16"] = matmul_peak(torch.bfloat16).gflops
        results["vaelab_bf16"] = vaelab_rate(images, args.passes, "bf16")
    else:
        results["bf16_skipped"] = cpu_capabilities().why_no_bf16()
    print(json.dumps(results, indent=1))
    base = results["pythae_fp32"]
    print(f"\n| library | images/s | vs pythae |\n|---|---|---|\n| pythae (fp32) | {base:.0f} | 1.00x |")
    for key in ("vaelab_fp32", "vaelab_bf16"):
        if key in results:
            print(f"| {key.replace('_', ' ')} | {results[key]:.0f} | {results[key] / base:.2f}x |")


if __name__ == "__main__":
    main()
