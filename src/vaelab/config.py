"""Typed run configuration: one schema, read from TOML and from ``key=value`` overrides.

A run is fully described by a :class:`RunConfig` with four sections (``data``, ``model``,
``objective``, ``train``). Every value is checked here, so a typo or an out-of-range value fails
before any work starts, with a message naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import tomli_w

from vaelab.core import registry
from vaelab.errors import VaelabError
from vaelab.io import require_regular_file

MAX_THREADS = 1024  # beyond any CPU's core count; torch would start every one of them
MAX_HIDDEN_LAYERS = 64  # deeper MLPs than any VAE paper's; 30,000 layers trained, then took minutes to load
MAX_PRIOR_COMPONENTS = 10_000  # 20x the VampPrior paper's 500 pseudo-inputs
MAX_LIKELIHOOD_COMPONENTS = 256  # more logistics than the 256 levels they describe add nothing
MAX_FLOW_STEPS = 64  # far beyond Kingma et al.'s flows (2 to 8 steps)
MAX_FLOW_HIDDEN = 16_384  # far beyond Kingma et al.'s MADEs (320 to 1920 units)
MAX_WIDTH = 16_384  # a discriminator layer 16x Kim & Mnih's 1,000 units
MAX_CLASSES = 100_000  # a one-hot label of this size is already 100x ImageNet's 1,000 classes
MAX_CODEBOOK = 65_536  # 128x the VQ-VAE paper's 512 codes
MAX_CODE_DIM = 4_096
ADAM_EPS_PLACEMENTS = ("torch", "keras")  # where Adam adds epsilon: after the bias correction (torch) or before it
PRIOR_HEADS = 4  # vqvae: the prior transformer's attention heads; its width must divide by them


FLOAT32_MAX = 3.4028234663852886e38
MAX_CONFIG_BYTES = 1 << 20


class _Keys:
    """A config section that refuses to set a key it does not have (``config.model.latent_dims = 5``
    would otherwise be kept as a new attribute and silently ignored)."""

    section = ""  # the name a message gives it: "model" for config.model.<key>; "" for the whole config

    def __setattr__(self, name: str, value: Any) -> None:
        known = [f.name for f in dataclasses.fields(self)]
        if name not in known:
            prefix = f"{self.section}." if self.section else ""
            what = f"a key of [{self.section}]" if self.section else "a config section"
            raise VaelabError(f"{prefix}{name} is not {what}; {_did_you_mean(name, known, prefix)}")
        hint = _key_types(type(self))[name]
        if self.section and (hint in (bool, int, float, str) or typing.get_origin(hint) is list):
            # a value of the wrong type (latent_dim = "3") would fail far from here, in a torch call
            value = _coerce(value, hint, f"{self.section}.{name}")
        object.__setattr__(self, name, value)


@functools.cache
def _key_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _did_you_mean(name: str, known: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"did you mean {prefix}{close[0]}?"
    return f"known: {', '.join(known)}"


@dataclass
class DataConfig(_Keys):
    section = "data"

    name: str = "mnist"
    data_dir: str = ""  # where to look first for data files ("" = the default search path)
    binarize: str = "none"  # none | dynamic | static
    validation_size: int = 5000  # the last N training images form the validation split
    train_limit: int = 0  # use only the first N training images (0 = all); for quick trials and tests
    test_limit: int = 0  # evaluate on only the first N test images (0 = all)
    mmap: str = "auto"  # images from disk via numpy.memmap: auto (raw files >= 1 GiB) | always | never
    # train on the test images too, after the training split (Keras' VAE example trains on all 70,000 MNIST
    # images); the test numbers are then not held out
    train_with_test: bool = False

    def validate(self) -> None:
        _check_plain_values(self, "data")
        _one_of("data.binarize", self.binarize, ("none", "dynamic", "static"))
        _one_of("data.mmap", self.mmap, ("auto", "always", "never"))
        _at_least("data.validation_size", self.validation_size, 0)
        _at_least("data.train_limit", self.train_limit, 0)
        _at_least("data.test_limit", self.test_limit, 0)


@dataclass
class ModelConfig(_Keys):
    section = "model"
    family: str = "vae"  # the model family (vaelab list); the keys below are the VAE family's
    arch: str = "conv"  # conv (the study's) | conv-keras (padded as TF pads) | conv64 (the disentanglement papers') | dense (784-512-256) | mlp | mlp-tcvae
    latent_dim: int = 2
    hidden: list[int] = field(default_factory=lambda: [512, 256])  # mlp only
    activation: str = "relu"  # mlp only
    batch_norm: bool = False  # mlp only: batch normalisation before each hidden activation (and the hierarchy's MLPs)
    posterior: str = "diagonal"
    prior: str = "standard"  # standard | correlated | learnable | mog | vamp (vaelab list)
    prior_cov: list[list[float]] = field(default_factory=list)  # correlated only; [] = the study's default
    prior_sampling: str = "posterior"  # posterior (z = mu + sigma*eps) | study (z = mu + L eps, see docs)
    prior_components: int = 10  # mog: mixture components; vamp: pseudo-inputs (Tomczak & Welling used 500)
    likelihood: str = "bernoulli"  # bernoulli | gaussian | continuous-bernoulli | gaussian-learned | ... (vaelab list)
    likelihood_scale: float = 0.1  # gaussian: the fixed std per pixel; gaussian-learned/-decoded: the initial one
    likelihood_components: int = 5  # logistic-mixture: logistics per pixel and channel
    decoder_bias: str = "default"  # default (the layer's init) | data-mean (p(x|z) starts at the data mean)
    flow_steps: int = 2  # iaf: inverse autoregressive flow steps
    # iaf: units per MADE hidden layer, also the encoder's context size; 0 = max(64, 4 * latent_dim)
    flow_hidden: int = 0
    classes: int = 10  # cvae: the labels it conditions on are 0 .. classes - 1; gumbel: its categories
    stochastic_layers: list[int] = field(default_factory=list)  # hierarchical: latent sizes, bottom to top
    layer_hidden: list[int] = field(default_factory=lambda: [100, 100])  # hierarchical: MLP widths between layers
    inference: str = "bottom-up"  # hierarchical: bottom-up (Burda et al.) | ladder (Sønderby et al.)
    tc_weight: float = 10.0  # factorvae: gamma, the weight of the discriminator's total correlation estimate
    discriminator_hidden: list[int] = field(default_factory=lambda: [1000] * 6)  # factorvae: Kim & Mnih's 6 x 1000
    codebook_size: int = 128  # vqvae: K, the codebook's vectors (van den Oord et al. used 512)
    code_dim: int = 16  # vqvae: D, the numbers in each code vector; the code is an H/4 x W/4 grid of them
    commitment: float = 0.25  # vqvae: beta, the weight of the commitment term ||z_e(x) - sg(e)||^2
    codebook_decay: float = 0.99  # vqvae: gamma, the EMA codebook's decay per step
    prior_epochs: int = 10  # vqvae: epochs of the second stage, the prior over the codes (0: a uniform prior)
    prior_width: int = 64  # vqvae: the prior transformer's width (divisible by its 4 attention heads)
    prior_layers: int = 4  # vqvae: the prior transformer's layers

    def validate(self) -> None:
        _check_plain_values(self, "model")
        _one_of("model.family", self.family, registry.FAMILIES.names())
        _one_of("model.arch", self.arch, registry.ARCHITECTURES.names())
        _at_least("model.latent_dim", self.latent_dim, 1)
        _widths("model.hidden", self.hidden)
        _one_of("model.activation", self.activation, registry.ACTIVATIONS.names())
        if self.batch_norm and self.arch != "mlp":
            raise VaelabError(f"model.batch_norm = true needs model.arch = mlp (its hidden layers), got {self.arch}")
        _one_of("model.posterior", self.posterior, registry.POSTERIORS.names())
        _one_of("model.prior", self.prior, registry.PRIORS.names())
        _one_of("model.prior_sampling", self.prior_sampling, ("posterior", "study"))
        if self.prior_sampling == "study" and self.prior != "correlated":
            raise VaelabError("model.prior_sampling = 'study' only applies to model.prior = 'correlated'")
        _one_of("model.likelihood", self.likelihood, registry.LIKELIHOODS.names())
        _one_of("model.decoder_bias", self.decoder_bias, ("default", "data-mean"))
        if not self.likelihood_scale > 0:
            raise VaelabError(f"model.likelihood_scale must be > 0, got {self.likelihood_scale}")
        _between("model.prior_components", self.prior_components, 1, MAX_PRIOR_COMPONENTS)
        _between("model.likelihood_components", self.likelihood_components, 1, MAX_LIKELIHOOD_COMPONENTS)
        _between("model.flow_steps", self.flow_steps, 1, MAX_FLOW_STEPS)
        _between("model.flow_hidden", self.flow_hidden, 0, MAX_FLOW_HIDDEN)
        _between("model.classes", self.classes, 1, MAX_CLASSES)
        _widths("model.stochastic_layers", self.stochastic_layers, allow_empty=True)
        _widths("model.layer_hidden", self.layer_hidden)
        _one_of("model.inference", self.inference, ("bottom-up", "ladder"))
        if not self.tc_weight >= 0:
            raise VaelabError(f"model.tc_weight must be >= 0, got {self.tc_weight}")
        _widths("model.discriminator_hidden", self.discriminator_hidden)
        if max(self.discriminator_hidden) > MAX_WIDTH:
            raise VaelabError(
                f"model.discriminator_hidden: a layer has at most {MAX_WIDTH} units, got {self.discriminator_hidden}"
            )
        _between("model.codebook_size", self.codebook_size, 2, MAX_CODEBOOK)
        _between("model.code_dim", self.code_dim, 1, MAX_CODE_DIM)
        if not self.commitment >= 0:
            raise VaelabError(f"model.commitment must be >= 0, got {self.commitment}")
        if not 0 <= self.codebook_decay < 1:
            raise VaelabError(
                f"model.codebook_decay must be in [0, 1) (the EMA's decay per step), got {self.codebook_decay}"
            )
        _at_least("model.prior_epochs", self.prior_epochs, 0)
        _between("model.prior_width", self.prior_width, PRIOR_HEADS, MAX_WIDTH)
        if self.prior_width % PRIOR_HEADS:
            raise VaelabError(
                f"model.prior_width must be divisible by the prior's {PRIOR_HEADS} attention heads, got {self.prior_width}"
            )
        _between("model.prior_layers", self.prior_layers, 1, MAX_HIDDEN_LAYERS)
        defaults = ModelConfig()
        for key, users in MODEL_KEYS.items():
            if self.family not in users and getattr(self, key) != getattr(defaults, key):
                raise VaelabError(
                    f"model.{key} applies to model.family = {' or '.join(users)}; it means nothing for "
                    f"{self.family} (leave it at {getattr(defaults, key)})"
                )
        if self.prior_cov:
            rows = self.prior_cov
            if len(rows) != self.latent_dim or any(len(r) != self.latent_dim for r in rows):
                raise VaelabError(
                    f"model.prior_cov must be a {self.latent_dim}x{self.latent_dim} matrix "
                    f"(model.latent_dim = {self.latent_dim}), got {rows}"
                )


# the families that read each of these model keys; any other family refuses a value set away from the default
MODEL_KEYS = {
    key: ("vqvae",)
    for key in (
        "codebook_size",
        "code_dim",
        "commitment",
        "codebook_decay",
        "prior_epochs",
        "prior_width",
        "prior_layers",
    )
}


@dataclass
class ObjectiveConfig(_Keys):
    section = "objective"
    name: str = "elbo"  # elbo | iwae | capacity | btcvae (vaelab list)
    # elbo: the weight of the KL term (beta-VAE), 1 is the true ELBO; btcvae: the weight of the total correlation
    beta: float = 1.0
    k: int = 1  # importance samples (iwae)
    gradient: str = "reparam"  # iwae encoder gradient: reparam (Burda et al.) | dreg (Tucker et al. 2019)
    # iwae: this share of the training (of train.minutes when set, else of the epochs) trains on the ELBO (k = 1,
    # reparameterised) first, whole epochs at a time; the IWAE bound with k samples afterwards. 0: IWAE throughout
    elbo_share: float = 0.0
    kl_warmup_epochs: int = 0  # linear KL annealing from 0 to beta over this many epochs
    free_bits: float = 0.0  # elbo: minimum KL per latent dimension, in nats (Kingma et al. 2016)
    alpha: float = 1.0  # btcvae: weight of the index-code mutual information (Chen et al.'s alpha)
    # btcvae: the estimate of log q(z) from the batch: minibatch weighted (mws) or stratified (mss) sampling, Chen et al.
    tc_estimator: str = "mws"
    # btcvae: Chen et al.'s warm-up (their dSprites: 7000): over this many optimiser steps the TC weight rises from 0
    # to beta and the dimension-wise KL's from 0.05 to gamma; 0: none
    tc_anneal_steps: int = 0
    # btcvae: the posteriors of this many recent training examples join the batch's in the estimate of q(z) and of
    # its marginals (a ring refilled each step, kept in checkpoints); 0: the batch alone, as Chen et al.
    tc_memory: int = 0
    gamma: float = 1.0  # btcvae: weight of the dimension-wise KL (Chen et al.); capacity: of |KL - C| (Burgess et al.)
    capacity_max: float = 25.0  # capacity: C's final value, nats (Burgess et al. on dSprites: 25)
    capacity_steps: int = 100_000  # capacity: optimiser steps over which C grows linearly from 0 (0: C_max at once)
    # capacity: a capacity of its own for each named part of the KL (the model's: gumbel's continuous and categorical,
    # Dupont's JointVAE); [] = one capacity on the whole KL
    capacity_parts: list[str] = field(default_factory=list)
    # capacity, per part of capacity_parts: C's final value, the weight of |KL_part - C|, the steps C grows over;
    # [] = capacity_max, gamma, capacity_steps for every part
    capacity_part_max: list[float] = field(default_factory=list)
    capacity_part_gamma: list[float] = field(default_factory=list)
    capacity_part_steps: list[int] = field(default_factory=list)

    def validate(self) -> None:
        _check_plain_values(self, "objective")
        _one_of("objective.name", self.name, registry.OBJECTIVES.names())
        _one_of("objective.gradient", self.gradient, ("reparam", "dreg"))
        _one_of("objective.tc_estimator", self.tc_estimator, TC_ESTIMATORS)
        if self.gradient == "dreg" and self.name != "iwae":
            raise VaelabError(
                f"objective.gradient = dreg is the IWAE bound's estimator; it means nothing for "
                f"objective.name = {self.name} (use objective.name = iwae, or gradient = reparam)"
            )
        if self.beta < 0:
            raise VaelabError(f"objective.beta must be >= 0, got {self.beta}")
        _at_least("objective.k", self.k, 1)
        _at_least("objective.kl_warmup_epochs", self.kl_warmup_epochs, 0)
        if not 0 <= self.elbo_share < 1:
            raise VaelabError(
                f"objective.elbo_share must be in [0, 1) (a share of the training), got {self.elbo_share}"
            )
        if self.free_bits < 0:
            raise VaelabError(f"objective.free_bits must be >= 0, got {self.free_bits}")
        for key in ("alpha", "gamma", "capacity_max"):
            if getattr(self, key) < 0:
                raise VaelabError(f"objective.{key} must be >= 0, got {getattr(self, key)}")
        _at_least("objective.capacity_steps", self.capacity_steps, 0)
        _at_least("objective.tc_anneal_steps", self.tc_anneal_steps, 0)
        _at_least("objective.tc_memory", self.tc_memory, 0)
        defaults = ObjectiveConfig()
        for key, users in OBJECTIVE_KEYS.items():
            if self.name not in users and getattr(self, key) != getattr(defaults, key):
                raise VaelabError(
                    f"objective.{key} applies to objective.name = {' or '.join(users)}; it means nothing for "
                    f"{self.name} (leave it at {getattr(defaults, key)})"
                )
        if self.name == "capacity" and self.beta != 1:
            raise VaelabError(
                "objective.beta means nothing for objective.name = capacity: its weight on |KL - C| is objective.gamma"
            )
        self._validate_capacity_parts()

    def _validate_capacity_parts(self) -> None:
        """Distinct part names, and none or one value per part in each per-part list; whether the model has
        these parts is checked against the model (``CapacityELBO.check_model``)."""
        for name in self.capacity_parts:
            if self.capacity_parts.count(name) > 1:
                raise VaelabError(f"objective.capacity_parts names {name} twice; give each KL part once")
        for key in ("capacity_part_max", "capacity_part_gamma", "capacity_part_steps"):
            values = getattr(self, key)
            if values and len(values) != len(self.capacity_parts):
                raise VaelabError(
                    f"objective.{key} gives {len(values)} values for the {len(self.capacity_parts)} parts of "
                    f"objective.capacity_parts: one per part, or none (objective.{PART_DEFAULTS[key]} for every part)"
                )
            if any(v < 0 for v in values):
                raise VaelabError(f"objective.{key} must be >= 0 for every part, got {values}")


# each per-part capacity list and the single-capacity key that stands for it when the list is empty
PART_DEFAULTS = {
    "capacity_part_max": "capacity_max",
    "capacity_part_gamma": "gamma",
    "capacity_part_steps": "capacity_steps",
}


TC_ESTIMATORS = ("mws", "mss")

# the objectives that read each of these keys; any other objective refuses a value set away from the default
OBJECTIVE_KEYS = {
    "free_bits": ("elbo",),
    "elbo_share": ("iwae",),
    "alpha": ("btcvae",),
    "tc_estimator": ("btcvae",),
    "tc_anneal_steps": ("btcvae",),
    "tc_memory": ("btcvae",),
    "gamma": ("btcvae", "capacity"),
    "capacity_max": ("capacity",),
    "capacity_steps": ("capacity",),
    "capacity_parts": ("capacity",),
    "capacity_part_max": ("capacity",),
    "capacity_part_gamma": ("capacity",),
    "capacity_part_steps": ("capacity",),
}


def objective_keys(name: str) -> list[str]:
    """The keys of OBJECTIVE_KEYS that objective ``name`` reads."""
    return [key for key, users in OBJECTIVE_KEYS.items() if name in users]


@dataclass
class TrainConfig(_Keys):
    section = "train"
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    precision: str = "fp32"  # fp32 | bf16 (autocast on CPU)
    threads: int = 0  # torch intra-op threads; 0 = torch's default (all cores)
    eval_batch_size: int = 1000
    device: str = "cpu"  # cpu | cuda | cuda:N (batches are built on the CPU and moved per step)
    lr_schedule: str = "constant"  # constant | burda (8 stages of 3^i epochs, lr * 10^(-i/7), compressed to epochs) | burda-even (the same 8 rates, stages of equal length)
    adam_eps: float = 1e-8  # Burda et al. used 1e-4
    adam_eps_placement: str = "torch"  # torch (eps after Adam's bias correction) | keras (before it, as Keras adds it)
    compile: bool = False  # torch.compile the loss (forward + backward graph); costs compile time up front
    ema_decay: float = 0.0  # > 0: evaluate and save an exponential moving average of the weights, updated every step
    checkpoint_minutes: float = 5.0  # also checkpoint inside an epoch this often (0: at epoch ends only)
    # > 0: a budget of training minutes. The lr schedule runs over it instead of over the epochs, and training
    # ends when it is spent, inside an epoch if need be (train.epochs stays the most it trains)
    minutes: float = 0.0
    # > 0: save the weights (their moving average where train.ema_decay > 0) every this many minutes of training
    # time, the clock train.minutes counts, as snapshots/minutes-M.safetensors (vaelab eval --snapshots: NLL curve)
    snapshot_minutes: float = 0.0
    early_stopping: int = 0  # > 0: stop after this many epochs without a better validation total (0: off)
    early_stopping_delta: float = 0.0  # nats: how much lower a validation total must be to count as better
    keep_best: bool = False  # evaluate, save and draw the weights of the epoch with the best validation total
    # also log each epoch's losses as Keras' fit() prints them: means over the batches of the batch means
    keras_log: bool = False

    def validate(self) -> None:
        _check_plain_values(self, "train")
        _at_least("train.epochs", self.epochs, 1)
        _at_least("train.batch_size", self.batch_size, 1)
        _at_least("train.eval_batch_size", self.eval_batch_size, 1)
        if not self.lr > 0:
            raise VaelabError(f"train.lr must be > 0, got {self.lr}")
        _at_least("train.seed", self.seed, 0)
        _one_of("train.precision", self.precision, ("fp32", "bf16"))
        check_threads("train.threads", self.threads)
        _one_of("train.lr_schedule", self.lr_schedule, ("constant", "burda", "burda-even"))
        if not self.adam_eps > 0:
            raise VaelabError(f"train.adam_eps must be > 0, got {self.adam_eps}")
        _one_of("train.adam_eps_placement", self.adam_eps_placement, ADAM_EPS_PLACEMENTS)
        if not 0 <= self.checkpoint_minutes < math.inf:
            raise VaelabError(
                f"train.checkpoint_minutes must be >= 0 (0: at epoch ends only), got {self.checkpoint_minutes}"
            )
        if not 0 <= self.minutes < math.inf:
            raise VaelabError(f"train.minutes must be >= 0 (0: no time budget), got {self.minutes}")
        if not 0 <= self.snapshot_minutes < math.inf:
            raise VaelabError(f"train.snapshot_minutes must be >= 0 (0: no snapshots), got {self.snapshot_minutes}")
        _at_least("train.early_stopping", self.early_stopping, 0)
        if not 0 <= self.early_stopping_delta < math.inf:
            raise VaelabError(f"train.early_stopping_delta must be >= 0 nats, got {self.early_stopping_delta}")
        if not 0 <= self.ema_decay < 1:
            raise VaelabError(f"train.ema_decay must be in [0, 1) (0: no averaging), got {self.ema_decay}")
        if not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise VaelabError(f"train.device must be cpu, cuda or cuda:N; got {self.device!r}")


@dataclass
class RunConfig(_Keys):
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> RunConfig:
        for section in (self.data, self.model, self.objective, self.train):
            section.validate()
        watched = [k for k in ("early_stopping", "keep_best") if getattr(self.train, k)]
        if watched and self.data.validation_size == 0:
            raise VaelabError(
                f"train.{watched[0]} watches the validation total, but data.validation_size = 0 leaves no "
                "validation split; set data.validation_size (e.g. 5000) or turn it off"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "config") -> RunConfig:
        config = cls()
        apply_dict(config, raw, where)
        return config.validate()

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def save(self, path: Path) -> None:
        from vaelab.io import atomic_write_text

        atomic_write_text(Path(path), self.to_toml())

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        return cls.from_dict(read_toml(path), where=str(path))


def read_toml(path: Path) -> dict[str, Any]:
    path = Path(path)
    if require_regular_file(path, "config file") > MAX_CONFIG_BYTES:
        raise VaelabError(f"config file {path} is larger than {MAX_CONFIG_BYTES // 1024} KiB: not a vaelab config")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise VaelabError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise VaelabError(f"cannot read config file {path}: {err}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise VaelabError(f"config file {path} is not valid TOML: {err}") from None
    except RecursionError:
        raise VaelabError(f"config file {path} nests its arrays or tables too deeply to read") from None


def apply_dict(config: RunConfig, raw: dict[str, Any], where: str = "config") -> None:
    """Set every ``section.key`` of ``raw`` on ``config``, rejecting unknown keys and wrong types."""
    if not isinstance(raw, dict):
        raise VaelabError(f"{where}: expected a table of sections, got {type(raw).__name__}")
    for section_name, values in raw.items():
        section = _section(config, section_name, where)
        if not isinstance(values, dict):
            raise VaelabError(f"{where}: [{section_name}] must be a table of keys")
        for key, value in values.items():
            _set(section, section_name, key, value, where)


def apply_overrides(config: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply ``section.key=value`` strings; the value is read as TOML (so ``[1, 2]`` and ``true`` work)."""
    for item in overrides:
        if "=" not in item:
            raise VaelabError(f"--set expects section.key=value, got {item!r}")
        dotted, text = item.split("=", 1)
        parts = dotted.strip().split(".")
        if len(parts) != 2:
            raise VaelabError(f"--set expects section.key=value (for example train.lr=3e-4), got {item!r}")
        section_name, key = parts
        section = _section(config, section_name, "--set")
        _set(section, section_name, key, _parse_value(text.strip(), dotted.strip()), "--set")
    return config.validate()


def _parse_value(text: str, name: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word such as `conv` is a string
    except RecursionError:
        raise VaelabError(f"--set {name}: the value nests its arrays too deeply to read") from None


def _section(config: RunConfig, name: str, where: str) -> Any:
    names = [f.name for f in dataclasses.fields(config)]
    if name not in names:
        raise VaelabError(f"{where}: unknown config section {name!r}; known sections: {', '.join(names)}")
    return getattr(config, name)


def _set(section: Any, section_name: str, key: str, value: Any, where: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(section)}
    if key not in fields:
        close = difflib.get_close_matches(key, list(fields), n=1)
        raise VaelabError(
            f"{where}: unknown config key {section_name + '.' + key!r}; "
            + (f"did you mean {section_name}.{close[0]}? " if close else "")
            + f"known keys in [{section_name}]: {', '.join(fields)}"
        )
    hint = typing.get_type_hints(type(section))[key]
    setattr(section, key, _coerce(value, hint, f"{section_name}.{key}"))


def _coerce(value: Any, hint: Any, name: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (list, types.GenericAlias) or origin is list:
        if not isinstance(value, list):
            raise VaelabError(f"{name} must be a list, got {value!r}")
        (item_hint,) = typing.get_args(hint)
        return [_coerce(v, item_hint, name) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an integer beyond any float
                raise VaelabError(
                    f"{name} must be a finite number, got an integer of {len(str(value))} digits"
                ) from None
    elif hint is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a schema type this function does not know is a bug
        raise TypeError(f"unsupported config type {hint} for {name}")
    raise VaelabError(f"{name} must be of type {hint.__name__}, got {value!r}")


def check_threads(name: str, value: int) -> None:
    """The one bound on a torch thread count, for the config and for the commands that take --threads."""
    if not 0 <= value <= MAX_THREADS:
        raise VaelabError(f"{name} must be 0 (torch's default) or a number of threads up to {MAX_THREADS}, not {value}")


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise VaelabError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _between(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise VaelabError(f"{name} must be between {low} and {high}, got {value}")


def _widths(name: str, widths: list[int], allow_empty: bool = False) -> None:
    """A list of layer sizes: positive, and no more of them than MAX_HIDDEN_LAYERS."""
    if (not widths and not allow_empty) or any(int(w) < 1 for w in widths):
        raise VaelabError(f"{name} must be a non-empty list of positive widths, got {widths}")
    if len(widths) > MAX_HIDDEN_LAYERS:
        raise VaelabError(f"{name} lists {len(widths)} layers; vaelab builds at most {MAX_HIDDEN_LAYERS}")


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise VaelabError(f"{name} must be >= {low}, got {value}")


def _check_plain_values(section: Any, section_name: str) -> None:
    """Every value of a section is one a run can use: finite floats, integers within TOML's 64 bits,
    strings that a file name and a UTF-8 file can hold."""
    for field_ in dataclasses.fields(section):
        _check_plain_value(f"{section_name}.{field_.name}", getattr(section, field_.name))


def _check_plain_value(name: str, value: Any) -> None:
    if isinstance(value, list):
        for item in value:
            _check_plain_value(name, item)
    elif isinstance(value, float) and not math.isfinite(value):
        raise VaelabError(f"{name} must be a finite number, got {value}")
    elif isinstance(value, float) and abs(value) > FLOAT32_MAX:  # the computations are float32
        raise VaelabError(f"{name} = {value} is beyond float32's range (±3.4e38)")
    elif isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        raise VaelabError(f"{name} = {value} does not fit in a 64-bit integer")
    elif isinstance(value, str):
        if "\x00" in value:
            raise VaelabError(f"{name} must not contain a NUL character, got {value!r}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise VaelabError(f"{name} is not valid text (undecodable bytes on the command line?): {value!r}") from None
