"""SimVP / SimVPv2 models in plain PyTorch, with OpenSTL's module names and every translator,
and OpenSTL's recurrent baselines (`RECURRENT_MODELS`, built when `ModelConfig.method` names
one)."""

from simvp_ray.models.openstl import from_openstl, to_openstl_state_dict
from simvp_ray.models.profile import profile
from simvp_ray.models.recurrent import RECURRENT_MODELS
from simvp_ray.models.simvp import SimVP, build_model
from simvp_ray.models.translators import TRANSLATORS, canonical_name

__all__ = [
    "RECURRENT_MODELS",
    "TRANSLATORS",
    "SimVP",
    "build_model",
    "canonical_name",
    "from_openstl",
    "profile",
    "to_openstl_state_dict",
]
