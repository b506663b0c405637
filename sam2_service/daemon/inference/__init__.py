"""Inference: everything between a validated request and SAM2's masks.

:mod:`.thread` is the one inference thread with its bounded queue and deadlines,
:mod:`.worker` the jobs that run on it (decode, embed, predict) with the embedding and
mask-logits caches of :mod:`.cache`, :mod:`.devices` one worker per device and the routing
between them. :mod:`.prompts` checks prompts against the image, :mod:`.imaging` decodes PNG
and JPEG within the pixel limit. :mod:`.engine` wraps SAM2's image predictor;
:mod:`.fastpath`, :mod:`.compiling` and :mod:`.hardware` are its speed-ups, ``torch.compile``
and device/precision choice. These (and :mod:`sam2_service.daemon.auto`) are the modules
that import torch.
"""
