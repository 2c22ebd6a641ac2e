"""The benchmark's bookkeeping: FLOPs counted from the layers, the machine it names, its table."""

from __future__ import annotations

import torch

from vaelab.bench.flops import training_flops_per_image
from vaelab.bench.suite import cpu_description, markdown
from vaelab.config import ModelConfig
from vaelab.model import build_vae


def test_training_flops_of_burdas_mlp_are_the_layer_sums_written_out():
    model = build_vae(ModelConfig(arch="mlp", hidden=[200, 200], activation="tanh", latent_dim=50), (1, 28, 28))
    x = torch.rand(2, 1, 28, 28)
    counted = training_flops_per_image(model, x, lambda x: model.p_x(model.q_z(x).rsample()))
    encoder = 2 * (784 * 200 + 200 * 200 + 200 * 100)  # the last layer gives mu and log sigma^2
    decoder = 2 * (50 * 200 + 200 * 200 + 200 * 784)
    first = 2 * 784 * 200  # the data needs no input gradient
    assert counted == 3 * (encoder + decoder) - first


def test_cpu_description_names_the_model_and_only_known_extensions():
    cpu = cpu_description()
    assert isinstance(cpu["model"], str) and cpu["model"]
    assert set(cpu["extensions"]) <= {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}


def _results(cpu) -> dict:
    rate = {"images_per_second": 1000.0, "gflops": 40.0, "fraction_of_peak": 0.5, "warmup_seconds": 1.0}
    return {
        "machine": {"threads": 2, "torch": "2.13.0", "cpu": cpu},
        "peak_gflops": {"fp32": 80.0, "bf16": 160.0},
        "training": {
            "conv (study, d=2)": {
                "flops_per_image": 40e6,
                "fp32": rate,
                "bf16": rate,
                "reference_images_per_second": 500.0,
                "speedup_vs_reference": 2.0,
            }
        },
        "sampling_images_per_second": 5000.0,
        "nll_k5000_images_per_second": 1.5,
    }


def test_the_table_names_the_cpu_and_its_matrix_extensions():
    text = markdown(_results({"model": "Test CPU 9000", "extensions": ["avx512f", "amx_bf16"]}))
    assert "Test CPU 9000 (avx512f, amx_bf16)" in text
    assert "| conv (study, d=2) | 40.0 | 1000 |" in text


def test_the_table_reads_results_saved_before_the_cpu_was_described():
    text = markdown(_results("x86_64"))
    assert text.startswith("Machine: 2 threads")
