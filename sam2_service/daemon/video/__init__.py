"""Video and volume sessions: SAM2's video predictor behind the daemon.

:mod:`.frames` keeps a session's frames as their bytes (PNG/JPEG files as sent, or a video
file's frames decoded once with PyAV) and turns a frame into SAM2's 1024x1024 normalised
tensor only when the model reads it, exactly as ``sam2.utils.misc.load_video_frames`` would;
:mod:`.predictor` builds a ``SAM2VideoPredictor`` sharing the loaded image model's weights;
:mod:`.sessions` holds the open sessions, their limits, owners and idle time-out;
:mod:`.propagation` runs SAM2's ``propagate_in_video`` one frame per inference-thread job,
dropping outputs SAM2's memory no longer reads; :mod:`.service` answers the ``video*`` ops
(one reply, or a stream of replies for ``videoPropagate``); :mod:`.streams` is the stream
type the connection writes out.
"""
