"""Inference: everything between a validated request and SAM2's masks.

:mod:`.thread` is the one inference thread with its bounded queue and deadlines,
:mod:`.worker` the jobs that run on it (decode, embed, predict) with the embedding and
mask-logits caches of :mod:`.cache`, :mod:`.devices` one worker per device and the routing
between them. :mod:`.prompts` checks prompts against the image, :mod:`.imaging` decodes PNG
and JPEG within the pixel limit. :mod:`.engine` wraps SAM2's image predictor;
:mod:`.fastpath`, :mod:`.compiling` and :mod:`.hardware` are its speed-ups, ``torch.compile``
and device/precision choice; :mod:`.sam2_compat` holds every access to sam2's private
attributes, checked against the sam2 release it was written for. These (with
:mod:`sam2_service.daemon.auto`, and the doctor lazily) are the modules that import torch.
"""
