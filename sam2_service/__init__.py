"""sam2-service: a local SAM2 segmentation daemon on a Unix socket.

Importing the package does not import torch; only :mod:`sam2_service.daemon.inference.engine` does.
"""

__version__ = "0.1.0"
