"""fusion.helper"""

from fusion.helper.__about__ import __version__

__all__ = ["__version__"]
