"""What can be searched: one module per knob, the joint space, and the target's capabilities.

Nothing here imports `slimtune.search` or `slimtune.storage`.
"""

from .capabilities import Removal, probe
from .joint import SearchSpace
from .recipe import Recipe

__all__ = ["Recipe", "Removal", "SearchSpace", "probe"]
