"""Run files a user may receive or edit: model.json, model.safetensors, the checkpoint, metrics.jsonl.

Whatever they hold, reading them ends in a model, or in one VaelabError saying what is wrong;
never another exception, never a half-restored model, never non-finite weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import TINY_RUN_RECORDS, tiny_config
from vaelab.data.dsprites import VARIANTS
from vaelab.errors import VaelabError
from vaelab.model import build_vae, load_model, save_model
from vaelab.model.store import MODEL_JSON_LIMIT, read_model_json
from vaelab.train import Trainer, load_checkpoint, save_checkpoint
from vaelab.train.trainer import CHECKPOINT

IMAGE_SHAPE = (1, 28, 28)


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return build_vae(tiny_config().model, IMAGE_SHAPE)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    save_model(_model(), folder, tiny_config(), {"epochs_trained": 2, "dataset": "mnist", "class_names": ["0", "1"]})
    return folder


@pytest.fixture
def model_dir(saved_model, tmp_path) -> Path:
    return Path(shutil.copytree(saved_model, tmp_path / "model"))


def _meta(folder: Path) -> dict:
    return json.loads((folder / "model.json").read_text())


def _write_meta(folder: Path, meta) -> None:
    (folder / "model.json").write_text(json.dumps(meta))


def _refused(folder: Path, match: str) -> str:
    with pytest.raises(VaelabError, match=match) as caught:
        load_model(folder)
    message = str(caught.value)
    assert "\n" not in message, "the CLI prints an error as one line"
    return message


def _set(meta: dict, dotted: str, value) -> dict:
    *parents, key = dotted.split(".")
    table = meta
    for name in parents:
        table = table[name]
    if value is DELETE:
        del table[key]
    else:
        table[key] = value
    return meta


DELETE = object()


# --- model.json ------------------------------------------------------------------------------


def test_a_saved_model_loads_back(saved_model):
    model, config, meta = load_model(saved_model)
    assert config == tiny_config() and meta["epochs_trained"] == 2
    for (name, a), b in zip(model.state_dict().items(), _model().state_dict().values()):
        assert torch.equal(a, b), name


def test_every_shipped_model_json_reads(tmp_path):
    from vaelab import pretrained

    for name in pretrained.available():
        meta = read_model_json(pretrained.path(name))
        data = meta["config"]["data"]["name"]
        shape = [VARIANTS[data].channels, 64, 64] if data in VARIANTS else [1, 28, 28]
        assert meta["format_version"] == 1 and meta["image_shape"] == shape, name


@pytest.mark.parametrize(
    ("dotted", "value", "match"),
    [
        ("format", DELETE, "not a vaelab model description"),
        ("format", "vaelab-checkpoint", "not a vaelab model description"),
        ("format_version", DELETE, "format_version must be an integer, got None"),
        ("format_version", "1", "format_version must be an integer"),
        ("format_version", True, "format_version must be an integer"),
        ("format_version", 2, "newer vaelab"),
        ("format_version", 0, "unknown format_version 0"),
        ("image_shape", DELETE, "image_shape must be"),
        ("image_shape", [1, 28], "image_shape must be"),
        ("image_shape", [1, 28, "28"], "image_shape must be"),
        ("image_shape", [0, 28, 28], "image_shape must be"),
        ("image_shape", [1, 28.0, 28], "image_shape must be"),
        ("config", DELETE, "config must be a table"),
        ("config", [], "config must be a table"),
        ("config.model", "mlp", r"\[model\] must be a table"),
        ("config.model.latent_dim", "two", "model.latent_dim must be of type int"),
        ("config.model.latent_dim", 0, "model.latent_dim must be >= 1"),
        ("config.model.arch", "transformer", "model.arch must be one of"),
        ("config.model.hidden", [32, -1], "model.hidden"),
        ("config.model.likelihood_scale", -1.0, "model.likelihood_scale"),
        ("config.model.wings", 2, "unknown config key 'model.wings'"),
        ("config.extra", {}, "unknown config section"),
        ("epochs_trained", "30", "epochs_trained must be a non-negative integer"),
        ("epochs_trained", -1, "epochs_trained must be a non-negative integer"),
        ("class_names", [0, 1], "class_names must be a list of strings"),
        ("dataset", None, "dataset must be a string"),
        ("test", [1, 2], "test must be a table"),
    ],
)
def test_an_edited_model_json_is_refused_in_one_line(model_dir, dotted, value, match):
    _write_meta(model_dir, _set(_meta(model_dir), dotted, value))
    _refused(model_dir, match)


def test_a_conv_model_json_with_an_image_size_the_conv_net_cannot_take(model_dir):
    meta = _set(_meta(model_dir), "config.model.arch", "conv")
    _write_meta(model_dir, _set(meta, "image_shape", [1, 30, 30]))
    message = _refused(model_dir, "divisible by 4")
    assert "model.json" in message


@pytest.mark.parametrize(
    ("dotted", "value"),
    [
        ("config.model.latent_dim", 10**12),
        ("config.model.hidden", [10**9]),
        ("config.model.hidden", [10**6, 10**6]),
        ("image_shape", [1, 10**6, 10**6]),
    ],
)
def test_a_model_json_asking_for_terabytes_is_refused_before_allocating(model_dir, dotted, value):
    _write_meta(model_dir, _set(_meta(model_dir), dotted, value))
    _refused(model_dir, "memory")


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b"[]", b"null", b'"vaelab-model"', b"\xff\xfe not utf-8", b"[" * 100_000 + b"]" * 100_000],
)
def test_a_model_json_that_is_not_a_description(model_dir, content):
    (model_dir / "model.json").write_bytes(content)
    _refused(model_dir, "not readable JSON|not a vaelab model description")


def test_a_huge_model_json_is_not_read(model_dir):
    with open(model_dir / "model.json", "ab") as handle:
        handle.truncate(MODEL_JSON_LIMIT + 1)  # sparse: nothing is written
    _refused(model_dir, "too large")


def test_a_missing_model_json(model_dir):
    (model_dir / "model.json").unlink()
    _refused(model_dir, "holds no model.json")


# --- model.safetensors -----------------------------------------------------------------------


def _state(folder: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(folder / "model.safetensors"))


def _write_state(folder: Path, state: dict[str, torch.Tensor]) -> None:
    safetensors.torch.save_file(state, str(folder / "model.safetensors"))


def _first_weight(state: dict[str, torch.Tensor]) -> str:
    return next(name for name, t in state.items() if t.dim() == 2)


def _edit_missing(state):
    del state[_first_weight(state)]


def _edit_extra(state):
    state["decoder.extra"] = torch.zeros(3)


def _edit_shape(state):
    name = _first_weight(state)
    state[name] = state[name][:-1].clone()


def _edit_dtype(state):
    name = _first_weight(state)
    state[name] = state[name].double()


def _edit_nan(state):
    name = _first_weight(state)
    state[name][0, 0] = float("nan")


def _edit_inf(state):
    name = next(n for n, t in state.items() if n.endswith("bias"))
    state[name][-1] = float("-inf")


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (_edit_missing, r"lacks \['"),
        (_edit_extra, r"has unknown \['decoder.extra'\]"),
        (_edit_shape, "of shape"),
        (_edit_dtype, "float64 of shape .*the model needs float32"),
        (_edit_nan, "NaN or inf in"),
        (_edit_inf, "NaN or inf in"),
    ],
)
def test_weights_that_do_not_fit_the_model_are_refused(model_dir, edit, match):
    state = _state(model_dir)
    edit(state)
    _write_state(model_dir, state)
    _refused(model_dir, match)


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_weights_stored_at_half_precision_load_widened_and_non_finite_ones_are_refused(model_dir, half):
    state = _state(model_dir)
    _write_state(model_dir, {name: t.to(half) if t.is_floating_point() else t for name, t in state.items()})
    model, _, _ = load_model(model_dir)
    for name, tensor in model.state_dict().items():
        assert tensor.dtype == state[name].dtype and torch.equal(tensor, state[name].to(half).to(tensor.dtype)), name
    assert any(not torch.equal(state[n].to(half).float(), state[n]) for n in state)  # the rounding is real
    stored = _state(model_dir)
    stored[_first_weight(stored)][0, 0] = float("inf")
    _write_state(model_dir, stored)
    _refused(model_dir, "NaN or inf in")


def test_only_what_stands_for_a_float32_tensor_is_widened():
    from vaelab.model.store import check_state, widened

    module = torch.nn.Module()
    module.register_buffer("count", torch.zeros(3, dtype=torch.int64))
    module.register_buffer("weight", torch.zeros(3))
    state = widened({"count": torch.zeros(3, dtype=torch.float16), "weight": torch.ones(3, dtype=torch.float16)},
                    module.state_dict())  # fmt: skip
    assert state["weight"].dtype == torch.float32 and state["count"].dtype == torch.float16
    with pytest.raises(VaelabError, match="count is float16 of shape \\[3\\]; the model needs int64"):
        check_state(module, state, "file")


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "missing"])
def test_a_damaged_safetensors_file_is_refused(model_dir, damage):
    path = model_dir / "model.safetensors"
    data = path.read_bytes()
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "garbage": bytes(range(256)) * 8}[damage])
    _refused(model_dir, "does not exist" if damage == "missing" else "not a readable safetensors file")


def test_save_model_refuses_non_finite_weights_and_numbers(tmp_path):
    model = _model()
    with pytest.raises(VaelabError, match="NaN or inf"):
        save_model(model, tmp_path, tiny_config(), {"test": {"total": float("nan")}})
    with torch.no_grad():
        next(model.parameters())[0] = float("inf")
    with pytest.raises(VaelabError, match="refusing to save .*NaN or inf in"):
        save_model(model, tmp_path, tiny_config())
    assert list(tmp_path.iterdir()) == [], "nothing may be written"


@pytest.mark.parametrize("edit", ["format_version", "nan"])
def test_eval_of_an_edited_model_ends_in_one_error_line(model_dir, run_cli, edit):
    if edit == "nan":
        state = _state(model_dir)
        _edit_nan(state)
        _write_state(model_dir, state)
    else:
        _write_meta(model_dir, _set(_meta(model_dir), "format_version", 7))
    result = run_cli("eval", model_dir, "--limit", "16")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error:") and result.stderr.count("\n") == 1, result.stderr


def test_eval_of_a_model_whose_numbers_overflow_says_so_instead_of_a_nan_table(model_dir, run_cli):
    """Finite weights, but so large that the test-set bound overflows: an error, not a table of inf/NaN."""
    state = _state(model_dir)
    output_bias = [n for n in state if n.startswith("decoder") and n.endswith("bias")][-1]
    state[output_bias].fill_(3e38)  # finite; the Bernoulli terms summed over 784 pixels are not
    _write_state(model_dir, state)
    load_model(model_dir)  # the files themselves are fine
    result = run_cli("eval", model_dir, "--limit", "16", "--no-write")
    assert result.returncode == 2, result.stdout + result.stderr
    # the progress line of the stage that failed comes first; the failure itself is one line
    errors = [line for line in result.stderr.splitlines() if not line.startswith("eval: ")]
    assert len(errors) == 1 and errors[0].startswith("error:"), result.stderr
    assert "came out NaN or inf" in result.stderr and "nan" not in result.stdout.lower()


# --- the checkpoint --------------------------------------------------------------------------


def _optimizer(model):
    return torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)


def _one_step(model, optimizer) -> None:
    optimizer.zero_grad()
    x = torch.rand(4, *IMAGE_SHAPE, generator=torch.Generator().manual_seed(0))
    model.p_x(model.q_z(x).mean).log_prob(x).sum().neg().backward()
    optimizer.step()


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory) -> Path:
    """A checkpoint as the trainer writes it: weights, one Adam step, both RNG states, the epoch."""
    model = _model()
    optimizer = _optimizer(model)
    _one_step(model, optimizer)
    path = tmp_path_factory.mktemp("checkpoint") / "last.safetensors"
    rng = {"torch": torch.get_rng_state(), "data": torch.Generator().manual_seed(1).get_state()}
    save_checkpoint(path, model, optimizer, rng, {"epoch": 1})
    return path


def _read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safetensors.safe_open(str(path), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata()


def _resume_like_the_trainer(path: Path) -> None:
    """Load a checkpoint into a fresh run's model and optimiser and use everything it returned."""
    model = _model(seed=1)
    optimizer = _optimizer(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        rng, info = load_checkpoint(path, model, optimizer)
    except VaelabError as err:
        assert "\n" not in str(err)
        for name, value in model.state_dict().items():
            assert torch.equal(value, before[name]), f"{name} was changed by a refused checkpoint"
        raise
    torch.Generator().set_state(rng["torch"])
    torch.Generator().set_state(rng["data"])
    assert type(info["epoch"]) is int and info["epoch"] >= 0
    _one_step(model, optimizer)  # the restored optimiser can take a step
    assert all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point())


def _edit_tensor(name_suffix: str, change):
    def edit(tensors, metadata):
        name = next(n for n in tensors if n.endswith(name_suffix))
        result = change(tensors[name])
        if result is None:
            del tensors[name]
        else:
            tensors[name] = result

    return edit


def _edit_metadata(key: str, change):
    def edit(tensors, metadata):
        if change is DELETE:
            del metadata[key]
        else:
            metadata[key] = change if isinstance(change, str) else json.dumps(change(json.loads(metadata[key])))

    return edit


def _groups(**changes):
    return lambda groups: [{**groups[0], **changes}]


CHECKPOINT_EDITS = {
    "model weight NaN": (_edit_tensor("0.weight", lambda t: t.fill_(float("nan"))), "NaN or inf in"),
    "model weight reshaped": (_edit_tensor("0.weight", lambda t: t[:1].clone()), "the model needs"),
    "model weight removed": (_edit_tensor("0.bias", lambda t: None), "lacks"),
    "unknown tensor": (lambda t, m: t.update({"junk.x": torch.zeros(1)}), "no vaelab checkpoint has"),
    "moment NaN": (_edit_tensor("exp_avg", lambda t: t.fill_(float("nan"))), "optimiser state of parameter"),
    "moment reshaped": (_edit_tensor("exp_avg_sq", lambda t: t.flatten()[:3].clone()), "optimiser state"),
    "moment removed": (_edit_tensor("exp_avg_sq", lambda t: None), "this optimiser keeps"),
    "step as a vector": (_edit_tensor("0.step", lambda t: t.repeat(2)), "optimiser state of parameter 0"),
    # both load as finite numbers, and the next Adam step would make every weight NaN
    "second moment negative": (_edit_tensor("0.exp_avg_sq", lambda t: t.fill_(-1.0)), "exp_avg_sq is negative"),
    "step zero": (_edit_tensor("0.step", lambda t: t.fill_(0.0)), "at least one step"),
    "state of parameter 999": (lambda t, m: t.update({"optimizer.999.exp_avg": torch.zeros(1)}), "no parameter"),
    "rng torch garbage": (_edit_tensor("rng.torch", lambda t: torch.zeros_like(t)), "'torch' random-number state"),
    "rng torch short": (_edit_tensor("rng.torch", lambda t: t[:10].clone()), "'torch' random-number state"),
    "rng data removed": (_edit_tensor("rng.data", lambda t: None), "holds no 'data' random-number state"),
    "rng cuda on a cpu": (lambda t, m: t.update({"rng.cuda": torch.zeros(16, dtype=torch.uint8)}), "CUDA"),
    "info removed": (_edit_metadata("info", DELETE), "lacks its 'info' metadata"),
    "info not json": (_edit_metadata("info", "{epoch: 1"), "'info' metadata is not valid JSON"),
    "epoch a string": (_edit_metadata("info", lambda i: {"epoch": "1"}), "epochs completed"),
    "epoch negative": (_edit_metadata("info", lambda i: {"epoch": -3}), "epochs completed"),
    "info a list": (_edit_metadata("info", lambda i: [1]), "epochs completed"),
    "param groups removed": (_edit_metadata("param_groups", DELETE), "lacks its 'param_groups'"),
    "two param groups": (_edit_metadata("param_groups", lambda g: g + g), "other parameter groups"),
    "lr a string": (_edit_metadata("param_groups", _groups(lr="fast")), "lr in it are not valid"),
    "lr NaN": (_edit_metadata("param_groups", _groups(lr=float("nan"))), "lr in it are not valid"),
    "lr negative": (_edit_metadata("param_groups", _groups(lr=-1.0)), "settings are not valid"),
    "betas of three": (_edit_metadata("param_groups", _groups(betas=[0.9, 0.9, 0.9])), "betas"),
    "beta beyond 1": (_edit_metadata("param_groups", _groups(betas=[2.0, 0.999])), "settings are not valid"),
    "params renumbered": (_edit_metadata("param_groups", _groups(params=[5, 6])), "do not match"),
    "unknown setting": (_edit_metadata("param_groups", _groups(momentum=0.9)), "do not match"),
    "scalars not a table": (_edit_metadata("optimizer_scalars", lambda s: [1]), "must be a table"),
    "scalar for no parameter": (_edit_metadata("optimizer_scalars", lambda s: {"x": {}}), "no parameter"),
    "scalar twice": (_edit_metadata("optimizer_scalars", lambda s: {"0": {"step": 1.0}}), "saved twice"),
}


@pytest.mark.parametrize("case", CHECKPOINT_EDITS)
def test_an_edited_checkpoint_is_refused_and_changes_nothing(checkpoint_file, tmp_path, case):
    edit, match = CHECKPOINT_EDITS[case]
    tensors, metadata = _read_checkpoint(checkpoint_file)
    edit(tensors, metadata)
    path = tmp_path / "last.safetensors"
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(VaelabError, match=match):
        _resume_like_the_trainer(path)


def test_the_unedited_checkpoint_restores(checkpoint_file):
    _resume_like_the_trainer(checkpoint_file)


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_a_damaged_checkpoint_is_refused(checkpoint_file, tmp_path, damage):
    data = checkpoint_file.read_bytes()
    path = tmp_path / "last.safetensors"
    path.write_bytes({"empty": b"", "truncated": data[: len(data) - 100], "garbage": b"\x08" + bytes(4000)}[damage])
    with pytest.raises(VaelabError, match="not a readable vaelab checkpoint"):
        _resume_like_the_trainer(path)


def test_save_checkpoint_refuses_non_finite_state_and_keeps_the_previous(checkpoint_file, tmp_path):
    path = tmp_path / "last.safetensors"
    shutil.copy(checkpoint_file, path)
    model = _model()
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(VaelabError, match="refusing to save the checkpoint"):
        save_checkpoint(path, model, _optimizer(model), {}, {"epoch": 2})
    assert path.read_bytes() == checkpoint_file.read_bytes()
    assert list(tmp_path.iterdir()) == [path], "no temporary file may be left"


# --- through `vaelab train --resume` ---------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "one-epoch"
    Trainer(tiny_config("train.epochs=1"), run_dir, figures=False).fit(progress=False)
    return run_dir


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def test_resume_of_a_run_with_an_edited_checkpoint_is_one_error_line(run_copy, run_cli):
    path = run_copy / CHECKPOINT
    tensors, metadata = _read_checkpoint(path)
    metadata["info"] = json.dumps({"epoch": "one"})
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)
    result = run_cli("train", "--resume", run_copy, "--epochs", "2", "--no-figures")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error:") and result.stderr.count("\n") == 1, result.stderr
    assert "epochs completed" in result.stderr


@pytest.mark.parametrize(
    "line",
    ["{", "[]", "7", '{"split": "train"}', '{"epoch": "1", "split": "train"}', '{"epoch": 1, "split": 2}'],
)
def test_a_malformed_metrics_line_stops_resume_with_its_line_number(run_copy, line):
    """An edited line in the middle of metrics.jsonl is the user's to repair: one error naming it."""
    metrics = run_copy / "metrics.jsonl"
    rows = metrics.read_text().splitlines()
    metrics.write_text("\n".join([rows[0], line, *rows[1:]]) + "\n")
    checkpoint = (run_copy / CHECKPOINT).read_bytes()
    with pytest.raises(VaelabError, match="metrics.jsonl line 2 is not") as caught:
        Trainer.resume(run_copy, figures=False)
    assert "\n" not in str(caught.value)
    assert (run_copy / CHECKPOINT).read_bytes() == checkpoint


def test_a_torn_last_metrics_line_is_dropped_on_resume(run_copy):
    """A kill mid-append leaves a last line without its newline: the resumed run replays that epoch."""
    metrics = run_copy / "metrics.jsonl"
    with open(metrics, "a") as handle:
        handle.write('{"epoch": 2, "split": "tra')
    trainer = Trainer.resume(run_copy, figures=False)
    trainer.config.train.epochs = 2
    trainer.fit(progress=False)
    records = [json.loads(row) for row in metrics.read_text().splitlines()]
    assert [(r["epoch"], r["split"]) for r in records] == TINY_RUN_RECORDS


# --- whatever the content, only VaelabError --------------------------------------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 64)
    | st.sampled_from([10**9, 10**12, 2**63, -(2**63), 10**400])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def _paths(value, prefix=()) -> list[tuple]:
    """Every key path into nested dicts and lists."""
    found = [prefix]
    if isinstance(value, dict):
        for key, inner in value.items():
            found += _paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found += _paths(inner, (*prefix, index))
    return found


@st.composite
def edited_model_json(draw, original: dict) -> dict:
    meta = json.loads(json.dumps(original))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(meta)))
        if not path:
            meta = draw(JSON_VALUES)
            continue
        table = meta
        for key in path[:-1]:
            table = table[key]
        if draw(st.booleans()) and isinstance(table, dict):
            del table[path[-1]]
        else:
            table[path[-1]] = draw(JSON_VALUES)
    return meta


def _only_vaelab_errors(call) -> None:
    try:
        call()
    except VaelabError as err:
        assert "\n" not in str(err)


ORIGINAL_META = {
    "format": "vaelab-model",
    "format_version": 1,
    "image_shape": [1, 28, 28],
    "config": tiny_config().to_dict(),
    "epochs_trained": 2,
    "dataset": "mnist",
    "class_names": ["0", "1"],
    "environment": {"torch": "2"},
    "test": {"total": 100.0},
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(meta=edited_model_json(ORIGINAL_META))
def test_any_edit_of_model_json_loads_or_raises_vaelab_error(saved_model, tmp_path, meta):
    folder = tmp_path / "fuzzed"
    if not folder.exists():
        shutil.copytree(saved_model, folder)
    (folder / "model.json").write_text(json.dumps(meta))
    _only_vaelab_errors(lambda: load_model(folder))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300))
def test_any_bytes_as_model_json_raise_vaelab_error(saved_model, tmp_path, data):
    folder = tmp_path / "bytes"
    if not folder.exists():
        shutil.copytree(saved_model, folder)
    (folder / "model.json").write_bytes(data)
    with pytest.raises(VaelabError):
        load_model(folder)


TENSORS = st.builds(
    lambda shape, dtype, fill: torch.full(shape, fill).to(dtype),
    st.lists(st.integers(0, 4), max_size=3).map(tuple),
    st.sampled_from([torch.float32, torch.float64, torch.int64, torch.uint8, torch.bfloat16]),
    st.sampled_from([0.0, 1.0, -1.0, float("nan"), float("inf"), 3e38]),
)


@st.composite
def edited_checkpoint(draw, path: Path) -> bytes:
    tensors, metadata = _read_checkpoint(path)
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["metadata", "replace", "remove", "add"]))
        if action == "metadata":
            key = draw(st.sampled_from(["info", "param_groups", "optimizer_scalars"]))
            metadata[key] = draw(st.one_of(JSON_VALUES.map(json.dumps), st.text(max_size=20)))
        elif action in ("replace", "remove"):
            name = draw(st.sampled_from(sorted(tensors)))
            if action == "remove":
                del tensors[name]
            else:
                tensors[name] = draw(TENSORS)
        else:
            name = draw(st.sampled_from(["model.", "optimizer.", "optimizer.0.", "rng.", "x"])) + draw(
                st.text("abcdeq_.0123456789", max_size=8)
            )
            tensors[name] = draw(TENSORS)
    data = safetensors.torch.save(tensors, metadata=metadata)
    truncated = draw(st.integers(0, 4)) == 0
    return data[: draw(st.integers(0, len(data)))] if truncated else data


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_edit_of_a_checkpoint_restores_or_raises_vaelab_error(checkpoint_file, tmp_path, data):
    path = tmp_path / "fuzzed.safetensors"
    path.write_bytes(data.draw(edited_checkpoint(checkpoint_file)))
    _only_vaelab_errors(lambda: _resume_like_the_trainer(path))
