"""Automatic masks: the ``auto`` op, SAM2's automatic mask generator run in steps.

:mod:`.runner` drives one ``auto`` request on a worker (tiles, steps of prompt points,
progress, cancellation when the client hangs up), :mod:`.generator` is SAM2's
``SAM2AutomaticMaskGenerator`` cut into steps so interactive requests run between them, and
:mod:`.labels` paints, tiles and stitches the masks into one label map (pure numpy).
"""
