"""Meta Reward Modeling: personalised rewards as a user-specific mix of shared base rewards."""

from mrm.model import MRM, load_mrm, save_mrm

__all__ = ["MRM", "load_mrm", "save_mrm"]
__version__ = "0.1.0"
