"""The benchmark: FLOPs counted from the layers, the machine it names, its table, its time budget,
what it skips on a CPU without native bf16, and its thread count."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import native_bf16
from vaelab.bench import suite
from vaelab.bench.flops import training_flops_per_image
from vaelab.bench.suite import cpu_description, markdown
from vaelab.bench.timing import Budget, best_rate, timed_windows
from vaelab.config import ModelConfig
from vaelab.core.platform import _REPORTED_FLAGS, cpu_capabilities
from vaelab.model import build_vae


def test_training_flops_of_burdas_mlp_are_the_layer_sums_written_out():
    model = build_vae(ModelConfig(arch="mlp", hidden=[200, 200], activation="tanh", latent_dim=50), (1, 28, 28))
    x = torch.rand(2, 1, 28, 28)
    counted = training_flops_per_image(model, x, lambda x: model.p_x(model.q_z(x).rsample()))
    encoder = 2 * (784 * 200 + 200 * 200 + 200 * 100)  # the last layer gives mu and log sigma^2
    decoder = 2 * (50 * 200 + 200 * 200 + 200 * 784)
    first = 2 * 784 * 200  # the data needs no input gradient
    assert counted == 3 * (encoder + decoder) - first


def test_cpu_description_is_the_capability_probe():
    cpu, probe = cpu_description(), cpu_capabilities()
    assert isinstance(cpu["model"], str) and cpu["model"] == probe.model
    assert set(cpu["extensions"]) <= set(_REPORTED_FLAGS)
    assert (cpu["native_bf16"], cpu["amx"]) == (probe.native_bf16, probe.amx)


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


class FakeClock:
    """Time that passes only when a fake step says so."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _step_taking(clock: FakeClock, seconds: float, images: int = 128):
    calls = []

    def step() -> int:
        clock.now += seconds
        calls.append(clock.now)
        return images

    return step, calls


def test_a_window_runs_the_steps_that_fit_in_its_time():
    clock = FakeClock()
    step, calls = _step_taking(clock, 1.0)
    warmup_seconds, windows = timed_windows(step, window=2.5, windows=3, warmup=2.5, warmup_steps=2, clock=clock)
    assert warmup_seconds == 3.0  # two steps are not yet 2.5 s
    assert [w.steps for w in windows] == [3, 3, 3]
    assert len(calls) == 12
    assert best_rate(windows) == 128.0


def test_a_step_slower_than_a_window_runs_once_per_window_not_forever():
    clock = FakeClock()
    step, calls = _step_taking(clock, 10.0)
    _, windows = timed_windows(step, window=0.5, windows=5, warmup=0.5, warmup_steps=2, clock=clock)
    assert [w.steps for w in windows] == [1] * 5
    assert len(calls) == 2 + 5
    assert best_rate(windows) == 12.8


def test_the_budget_admits_only_what_fits_before_its_deadline():
    clock = FakeClock()
    budget = Budget(10.0, clock=clock)
    clock.now = 7.0
    assert budget.left() == 3.0
    assert budget.fits(3.0) and not budget.fits(3.0, reserved=0.5)
    clock.now = 12.0
    assert budget.left() == 0.0 and not budget.fits(0.1)


def test_the_matrix_size_shrinks_until_a_product_fits_the_time_given():
    peak = suite.matmul_peak(torch.float32, seconds=1e-4)  # no 2048^3 product takes 50 microseconds
    assert peak.n == 256 and peak.gflops > 0


# Windows of 20 ms and a 1-second budget: too short for the compiled row and the memory run.
TINY = suite.Plan(budget=1.0, window=0.02, windows=2, peak=0.05, nll=0.05, compile=True, memory=True)
MLP = {name: entry for name, entry in suite.MODELS.items() if name.startswith("mlp")}


class ThreadsSeen:
    """A progress stream that notes torch's thread count whenever a line is written."""

    def __init__(self):
        self.text, self.threads = "", set()

    def write(self, text: str) -> None:
        self.text += text
        self.threads.add(torch.get_num_threads())

    def flush(self) -> None:
        pass


def test_without_native_bf16_the_bench_skips_bf16_and_says_why(without_native_bf16):
    before = torch.get_num_threads()
    threads = before + 1
    progress = ThreadsSeen()
    results = suite.run(threads=threads, progress=progress, plan=TINY, models=MLP)
    reason = cpu_capabilities().why_no_bf16()
    assert "VAELAB_NO_NATIVE_BF16" in reason
    assert list(results["peak_gflops"]) == ["fp32"]
    row = results["training"][next(iter(MLP))]
    assert row["bf16"] == {"skipped": reason}
    assert row["fp32"]["images_per_second"] > 0 and row["reference_images_per_second"] > 0
    assert results["skipped"]["bf16"] == reason
    table = markdown(results)
    assert "| skipped | – |" in table and f"- skipped: bf16: {reason}" in table
    # one progress line per measurement, none of them a bf16 one
    assert "bf16 matrix-multiply" not in progress.text and "vaelab bf16" not in progress.text
    assert "bench: mlp (Burda, 784-200-200-50 tanh) vaelab fp32 training ... " in progress.text
    assert f"bench: bf16 peak and training: skipped: {reason}" in progress.text
    # --threads reaches torch for every measurement, and is put back afterwards
    assert progress.threads == {threads} and results["machine"]["threads"] == threads
    assert torch.get_num_threads() == before


def test_what_does_not_fit_the_time_budget_is_skipped_with_the_reason(without_native_bf16):
    results = suite.run(progress=ThreadsSeen(), plan=TINY, models=MLP)
    assert "training_peak_memory_mb" not in results
    assert results["skipped"]["peak memory"] == "would not fit in the 1 s time budget"
    assert results["skipped"]["NLL"] == "would not fit in the 1 s time budget"
    assert results["nll_k5000_images_per_second"] is None
    name = next(iter(MLP))
    assert results["training"][name]["fp32_compiled"] == {"skipped": "would not fit in the 1 s time budget"}


@pytest.mark.skipif(not native_bf16(), reason="this CPU has no native bf16")
def test_with_native_bf16_the_bench_measures_it():
    results = suite.run(progress=ThreadsSeen(), plan=TINY, models=MLP, compile=False, memory=False)
    assert results["peak_gflops"]["bf16"] > 0
    assert results["training"][next(iter(MLP))]["bf16"]["images_per_second"] > 0
    assert "bf16" not in results["skipped"]


def test_negative_threads_are_refused_before_any_work():
    from vaelab.errors import VaelabError

    with pytest.raises(VaelabError, match="--threads"):
        suite.run(threads=-1, progress=ThreadsSeen(), plan=TINY, models=MLP)


def test_negative_threads_on_the_command_line_end_in_one_error_line(run_cli):
    result = run_cli("bench", "--quick", "--threads", "-1", timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: --threads must be 0 (torch's default) or a number of threads up to 1024, not -1"
    ]
    assert result.stdout == ""
