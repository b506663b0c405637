"""The wire: what crosses the daemon's socket, with no I/O and no torch.

Framing (:mod:`.frames`: 4-byte little-endian length + one UTF-8 JSON object, capped from the
prefix, in the manner of h11), the typed requests and the reply builders (:mod:`.schema`), the
error codes and the one exception type per failure (:mod:`.errors`), the bytes of images and
masks (:mod:`.codecs`: base64, ``imageId``, mask encodings) and the peer-credential rule both
ends apply (:mod:`.peer`). It imports nothing else of ``sam2_service``; every other layer
imports it. docs/protocol.md is the contract this package implements.
"""
