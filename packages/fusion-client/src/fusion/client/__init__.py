"""fusion.client"""

from fusion.client.__about__ import __version__

__all__ = ["__version__"]
