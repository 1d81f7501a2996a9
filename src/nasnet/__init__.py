"""nasnet: NASNet-style neural architecture search in PyTorch."""

from nasnet.counting import count_mult_adds, count_params
from nasnet.genotypes import GENOTYPES, NASNET_A
from nasnet.network import NASNet, NetworkConfig, build_network
from nasnet.pretrained import load_pretrained
from nasnet.registry import create_model, list_models
from nasnet.space import (
    COMBINES,
    OPS,
    Block,
    Cell,
    Genotype,
    GenotypeError,
    SearchSpace,
    load_genotype,
)

__version__ = "0.1.0"

__all__ = [
    "COMBINES",
    "GENOTYPES",
    "NASNET_A",
    "OPS",
    "Block",
    "Cell",
    "Genotype",
    "GenotypeError",
    "NASNet",
    "NetworkConfig",
    "SearchSpace",
    "build_network",
    "count_mult_adds",
    "count_params",
    "create_model",
    "list_models",
    "load_genotype",
    "load_pretrained",
]
