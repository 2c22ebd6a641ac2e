"""The typed run configuration: defaults, TOML round trip, overrides and validation messages."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest
import tomllib

from vaelab import VaelabError
from vaelab.config import RunConfig, TrainConfig, apply_dict, apply_overrides, read_toml


def test_defaults_validate():
    config = RunConfig()
    assert config.validate() is config
    assert config.model.arch == "conv" and config.model.latent_dim == 2
    assert config.train.epochs == 30 and config.objective.name == "elbo" and config.data.name == "mnist"


def test_toml_round_trip():
    config = apply_overrides(
        RunConfig(),
        [
            "model.prior=correlated",
            "model.prior_cov=[[1.0, 0.3], [0.3, 2.0]]",
            "model.hidden=[64, 32]",
            "objective.beta=0.5",
            "train.lr=3e-4",
            "data.name=fashion-mnist",
        ],
    )
    text = config.to_toml()
    again = RunConfig.from_dict(tomllib.loads(text))
    assert again == config
    assert again.model.prior_cov == [[1.0, 0.3], [0.3, 2.0]]
    assert again.to_toml() == text


def test_save_and_load(tmp_path):
    config = apply_overrides(RunConfig(), ["train.seed=5", "model.latent_dim=3"])
    path = tmp_path / "config.toml"
    config.save(path)
    assert RunConfig.load(path) == config
    assert RunConfig.load(path) != RunConfig()


def test_partial_file_keeps_defaults(tmp_path):
    path = tmp_path / "partial.toml"
    path.write_text("[train]\nepochs = 3\n")
    config = RunConfig.load(path)
    assert config.train.epochs == 3
    expected = RunConfig()
    expected.train.epochs = 3
    assert config == expected


def test_overrides_parse_values():
    config = apply_overrides(
        RunConfig(),
        [
            "train.epochs=7",  # int
            "train.lr=2.5e-4",  # float
            "objective.beta=2",  # an int where a float is expected becomes a float
            "model.hidden=[128, 64, 32]",  # list
            "model.arch=mlp",  # a bare word is a string
            'model.activation="tanh"',  # so is a quoted one
            "data.name = fashion-mnist",  # spaces around '=' are fine
        ],
    )
    assert config.train.epochs == 7 and isinstance(config.train.epochs, int)
    assert config.train.lr == 2.5e-4
    assert config.objective.beta == 2.0 and isinstance(config.objective.beta, float)
    assert config.model.hidden == [128, 64, 32]
    assert config.model.arch == "mlp" and config.model.activation == "tanh"
    assert config.data.name == "fashion-mnist"


def test_override_nested_list_of_floats():
    config = apply_overrides(RunConfig(), ["model.prior=correlated", "model.prior_cov=[[1, 0], [0, 1]]"])
    assert config.model.prior_cov == [[1.0, 0.0], [0.0, 1.0]]
    assert all(isinstance(v, float) for row in config.model.prior_cov for v in row)


@pytest.mark.parametrize(
    "override, needle",
    [
        ("bogus.epochs=1", "bogus"),  # unknown section
        ("train.bogus=1", "train.bogus"),  # unknown key
        ("train.epochs=ten", "train.epochs"),  # wrong type: string for int
        ("train.epochs=1.5", "train.epochs"),  # wrong type: float for int
        ("train.epochs=true", "train.epochs"),  # a bool is not an int
        ("train.lr=fast", "train.lr"),  # string for float
        ("model.hidden=64", "model.hidden"),  # scalar for a list
        ("model.hidden=[64, 'a']", "model.hidden"),  # wrong item type
        ("data.name=3", "data.name"),  # int for a string
        ("model.arch=transformer", "model.arch"),  # bad enum value
        ("data.binarize=maybe", "data.binarize"),
        ("objective.name=vi", "objective.name"),
        ("train.precision=fp8", "train.precision"),
        ("train.ema_decay=1", "train.ema_decay"),  # an average that never moves
        ("train.ema_decay=-0.5", "train.ema_decay"),
        ("model.decoder_bias=mean", "model.decoder_bias"),
        ("train.lr=0", "train.lr"),  # non-positive learning rate
        ("train.lr=-1e-3", "train.lr"),
        ("train.epochs=0", "train.epochs"),
        ("train.batch_size=0", "train.batch_size"),
        ("objective.beta=-1", "objective.beta"),
        ("objective.k=0", "objective.k"),
        ("objective.free_bits=-0.5", "objective.free_bits"),
        ("data.validation_size=-1", "data.validation_size"),
        ("model.latent_dim=0", "model.latent_dim"),
        ("model.likelihood_scale=0", "model.likelihood_scale"),
        ("model.hidden=[]", "model.hidden"),
        ("model.prior_cov=[[1, 0, 0], [0, 1, 0], [0, 0, 1]]", "model.prior_cov"),  # 3x3 for latent_dim 2
        ("model.prior_sampling=study", "model.prior_sampling"),  # study sampling needs a correlated prior
    ],
)
def test_bad_override_names_the_key(override, needle):
    with pytest.raises(VaelabError) as info:
        apply_overrides(RunConfig(), [override])
    assert needle in str(info.value)


@pytest.mark.parametrize("override", ["train.epochs", "epochs=3", "a.b.c=1"])
def test_malformed_override(override):
    with pytest.raises(VaelabError, match="section.key=value"):
        apply_overrides(RunConfig(), [override])


def test_unknown_key_lists_known_keys():
    with pytest.raises(VaelabError) as info:
        apply_overrides(RunConfig(), ["train.epoch=3"])
    assert "train.epoch" in str(info.value) and "epochs" in str(info.value)


@pytest.mark.parametrize(
    "raw, needle",
    [
        ({"trian": {"epochs": 3}}, "trian"),
        ({"train": {"epoch": 3}}, "train.epoch"),
        ({"train": {"lr": "0.001"}}, "train.lr"),
        ({"train": {"lr": 0.0}}, "train.lr"),
        ({"model": {"arch": "vit"}}, "model.arch"),
        ({"train": 3}, "[train]"),
    ],
)
def test_bad_dict_names_the_key(raw, needle):
    with pytest.raises(VaelabError) as info:
        RunConfig.from_dict(raw, where="my.toml")
    assert needle in str(info.value)


def test_apply_dict_rejects_non_table():
    with pytest.raises(VaelabError):
        apply_dict(RunConfig(), [1, 2, 3])  # type: ignore[arg-type]


def test_invalid_or_missing_toml_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nepochs = 3\n")
    with pytest.raises(VaelabError, match="not valid TOML") as info:
        read_toml(bad)
    assert str(bad) in str(info.value)
    with pytest.raises(VaelabError, match="does not exist"):
        RunConfig.load(tmp_path / "absent.toml")


def test_invalid_value_in_file_names_file_and_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[model]\nprior = "uniform"\n')
    with pytest.raises(VaelabError, match="model.prior"):
        RunConfig.load(path)


@pytest.mark.parametrize(
    "override, needle",
    [
        ("train.lr=inf", "train.lr"),
        ("train.lr=nan", "train.lr"),
        ("train.lr=1e999", "train.lr"),  # TOML reads it as inf
        ("objective.free_bits=nan", "objective.free_bits"),
        ("objective.free_bits=inf", "objective.free_bits"),
        ("objective.beta=nan", "objective.beta"),
        ("objective.beta=inf", "objective.beta"),
        ("model.likelihood_scale=inf", "model.likelihood_scale"),
        ("train.adam_eps=nan", "train.adam_eps"),
        ("train.ema_decay=nan", "train.ema_decay"),
    ],
)
def test_non_finite_numbers_are_refused(override, needle):
    with pytest.raises(VaelabError, match="finite") as info:
        apply_overrides(RunConfig(), [override])
    assert needle in str(info.value)


def test_non_finite_covariance_entry_is_refused():
    with pytest.raises(VaelabError, match=r"model.prior_cov.*finite"):
        apply_overrides(RunConfig(), ["model.prior=correlated", "model.prior_cov=[[1.0, nan], [nan, 1.0]]"])


@pytest.mark.parametrize(
    "override, needle",
    [
        (f"train.seed={2**64}", "train.seed"),  # beyond 64 bits: torch cannot seed with it
        (f"train.seed={2**200}", "train.seed"),
        ("train.seed=-1", "train.seed"),
        (f"train.epochs={10**30}", "train.epochs"),
        (f"model.hidden=[{2**70}]", "model.hidden"),
        (f"train.lr={10**400}", "train.lr"),  # an integer no float can hold
        ("train.threads=100000", "train.threads"),
        ("train.device=cuda:x", "train.device"),
    ],
)
def test_out_of_range_integers_are_refused(override, needle):
    with pytest.raises(VaelabError) as info:
        apply_overrides(RunConfig(), [override])
    assert needle in str(info.value)


def test_largest_seed_is_accepted():
    assert apply_overrides(RunConfig(), [f"train.seed={2**63 - 1}"]).train.seed == 2**63 - 1


def test_validation_catches_values_set_in_code():
    # a config built in code, not read from a file, is checked at validation just the same
    config = RunConfig()
    config.objective.free_bits = float("nan")
    with pytest.raises(VaelabError, match="objective.free_bits"):
        config.validate()
    config = RunConfig()
    config.train.seed = 2**64
    with pytest.raises(VaelabError, match="train.seed"):
        config.validate()


def test_strings_a_path_cannot_hold_are_refused(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[data]\nname = "runs\\u0000x"\n')  # TOML's escape for NUL
    with pytest.raises(VaelabError, match="data.name"):
        RunConfig.load(path)
    # a command line that is not UTF-8 reaches Python as lone surrogates, which no file can hold
    with pytest.raises(VaelabError, match="data.data_dir"):
        apply_overrides(RunConfig(), ["data.data_dir=caf\udce9"])


def test_config_file_not_utf8_or_not_a_file(tmp_path):
    latin = tmp_path / "latin.toml"
    latin.write_bytes('[data]\nname = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(VaelabError, match="cannot read config file") as info:
        RunConfig.load(latin)
    assert str(latin) in str(info.value)
    with pytest.raises(VaelabError, match="is not a regular file"):
        RunConfig.load(tmp_path)  # a folder


def test_deeply_nested_toml_is_an_error(tmp_path):
    path = tmp_path / "deep.toml"
    path.write_text("v = " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(VaelabError, match=str(path)):
        RunConfig.load(path)
    with pytest.raises(VaelabError, match="model.hidden"):
        apply_overrides(RunConfig(), ["model.hidden=" + "[" * 100_000])


@pytest.mark.parametrize(
    "text, needle",
    [
        ("[train]\nepochs = 1.5\n", "train.epochs"),
        ('[train]\nlr = "fast"\n', "train.lr"),
        ("[model]\nhidden = [[64]]\n", "model.hidden"),
        ("[model]\nhidden = {a = 1}\n", "model.hidden"),
        ("[[data]]\nname = 'x'\n", "[data]"),
        ("epochs = 3\n", "epochs"),
        ("[train]\nseed = 1979-05-27\n", "train.seed"),
    ],
)
def test_wrong_types_in_a_file_name_the_key(tmp_path, text, needle):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(VaelabError) as info:
        RunConfig.load(path)
    assert needle in str(info.value)


def test_a_typo_in_a_python_config_attribute_is_refused_naming_the_close_match():
    config = RunConfig()
    with pytest.raises(
        VaelabError, match=r"model\.latent_dims is not a key of \[model\]; did you mean model\.latent_dim\?"
    ):
        config.model.latent_dims = 5
    with pytest.raises(VaelabError, match="did you mean train"):
        config.trian = TrainConfig()
    with pytest.raises(VaelabError, match="known: epochs, batch_size"):
        config.train.zzz = 1
    assert not hasattr(config.model, "latent_dims")
    config.model.latent_dim = 5  # a real key is set as before


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("latent_dim", "3", r"model\.latent_dim must be of type int, got '3'"),
        ("latent_dim", 2.0, r"model\.latent_dim must be of type int"),
        ("hidden", 200, r"model\.hidden must be a list"),
        ("arch", 3, r"model\.arch must be of type str"),
    ],
)
def test_a_python_config_value_of_the_wrong_type_is_refused_when_set(key, value, message):
    config = RunConfig()
    with pytest.raises(VaelabError, match=message):
        setattr(config.model, key, value)
    with pytest.raises(VaelabError, match=r"train\.lr must be of type float, got '1e-3'"):
        config.train.lr = "1e-3"
    config.train.lr = 1  # an integer where a float is wanted is that float, as in a TOML file
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)


def test_the_refusing_sections_still_copy_replace_and_serialise():
    config = RunConfig()
    config.model.latent_dim = 3
    replaced = dataclasses.replace(config, model=dataclasses.replace(config.model, latent_dim=4))
    assert replaced.model.latent_dim == 4 and config.model.latent_dim == 3
    assert copy.deepcopy(config) == config and copy.copy(config.train) == config.train
    assert pickle.loads(pickle.dumps(config)) == config
    assert dataclasses.asdict(config)["model"]["latent_dim"] == 3
    assert RunConfig.from_dict(config.to_dict()) == config


def test_an_unknown_key_from_toml_or_set_names_the_close_match_too():
    with pytest.raises(VaelabError, match=r"did you mean model\.latent_dim\?"):
        apply_overrides(RunConfig(), ["model.latent_dims=3"])


def test_the_readme_config_reference_is_the_defaults_key_for_key():
    import pathlib

    import tomllib

    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    block = readme.split("### Configuration", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    documented = tomllib.loads(block)
    defaults = RunConfig().to_dict()
    for section, keys in documented.items():  # every documented key exists, at its default value
        for key, value in keys.items():
            assert defaults[section][key] == value, f"{section}.{key}"
    missing = {f"{s}.{k}" for s, keys in defaults.items() for k in keys if k not in documented.get(s, {})}
    assert not missing, f"keys the README's config reference leaves out: {sorted(missing)}"
