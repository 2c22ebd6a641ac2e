"""vaelab: variational autoencoders as encoder -> posterior, prior, decoder -> likelihood, objective."""

from vaelab.errors import VaelabError

__version__ = "0.1.0"
__all__ = ["VaelabError", "__version__"]
