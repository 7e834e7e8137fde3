"""Proposal generators (``MODEL.PROPOSAL_GENERATOR.NAME``)."""
from fvcore.common.registry import Registry

PROPOSAL_GENERATOR_REGISTRY = Registry("PROPOSAL_GENERATOR")
PROPOSAL_GENERATOR_REGISTRY.__doc__ = """
A registered class is called as ``cls(cfg, input_shape: Dict[str, ShapeSpec])``.
"""


def build_proposal_generator(cfg, input_shape):
    return PROPOSAL_GENERATOR_REGISTRY.get(cfg.MODEL.PROPOSAL_GENERATOR.NAME)(cfg, input_shape)
