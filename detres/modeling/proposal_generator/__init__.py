from detres.modeling.proposal_generator.build import PROPOSAL_GENERATOR_REGISTRY, build_proposal_generator
from detres.modeling.proposal_generator import rpn  # noqa: F401  (registers "RPN")
from detres.modeling.proposal_generator import per_class_rpn  # noqa: F401  (registers "PerClassRPN")

__all__ = ["PROPOSAL_GENERATOR_REGISTRY", "build_proposal_generator"]
