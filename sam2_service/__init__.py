"""sam2-service: a local SAM2 segmentation daemon on a Unix socket.

Importing the package does not import torch. Within the daemon only the inference and auto groups
(:mod:`sam2_service.daemon.inference`, :mod:`sam2_service.daemon.auto`) and the doctor's checks
(lazily) import it; ``tests/unit/test_layers.py`` holds that.
"""

__version__ = "0.1.0"
