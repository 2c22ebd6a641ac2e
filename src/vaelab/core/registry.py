"""Registries filled by decorators: every name a config, the CLI or ``vaelab list`` accepts comes from here.

    @LIKELIHOODS.register("bernoulli", "Bernoulli from logits (grey levels: a cross-entropy)")
    class BernoulliLikelihood(nn.Module): ...

A family registers itself where it is defined; nothing else is edited. The registries live in the
bottom layer so that config validation can read them; the modules that fill them are imported on
first look-up (the built-in ones below, and any installed package's ``vaelab.plugins`` entry points).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from vaelab.errors import VaelabError

T = TypeVar("T")

BUILTIN_MODULES = (
    "vaelab.distributions",
    "vaelab.nets",
    "vaelab.model.objectives",
    "vaelab.model.vae",
    "vaelab.model.cvae",
    "vaelab.model.gumbel",
    "vaelab.model.hierarchical",
    "vaelab.model.factorvae",
    "vaelab.model.vqvae",
)
_loaded = False


def load_plugins() -> None:
    """Import the modules whose decorators fill the registries (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    for entry in entry_points(group="vaelab.plugins"):
        entry.load()


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    item: T
    summary: str


class Registry(Generic[T]):
    def __init__(self, kind: str, key: str) -> None:
        self.kind = kind  # what an entry is, in words: "likelihood"
        self.key = key  # the config key that names one: "model.likelihood"
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, summary: str = "") -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._entries and self._entries[name].item is not item:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = Entry(name, item, summary or (getattr(item, "__doc__", "") or "").split("\n")[0])
            return item

        return add

    def names(self) -> tuple[str, ...]:
        load_plugins()
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def get(self, name: str) -> T:
        if name not in self.names():
            raise VaelabError(f"{self.key} = {name!r} is not a known {self.kind}; known: {', '.join(self.names())}")
        return self._entries[name].item

    def describe(self) -> list[dict[str, Any]]:
        load_plugins()
        return [{"name": e.name, "summary": e.summary} for e in self._entries.values()]


FAMILIES: Registry[Any] = Registry("model family", "model.family")
ARCHITECTURES: Registry[Any] = Registry("architecture", "model.arch")
POSTERIORS: Registry[Any] = Registry("posterior family", "model.posterior")
PRIORS: Registry[Any] = Registry("prior", "model.prior")
LIKELIHOODS: Registry[Any] = Registry("likelihood", "model.likelihood")
ACTIVATIONS: Registry[Any] = Registry("activation", "model.activation")
OBJECTIVES: Registry[Any] = Registry("objective", "objective.name")

ALL = {
    "families": FAMILIES,
    "architectures": ARCHITECTURES,
    "posteriors": POSTERIORS,
    "priors": PRIORS,
    "likelihoods": LIKELIHOODS,
    "activations": ACTIVATIONS,
    "objectives": OBJECTIVES,
}
