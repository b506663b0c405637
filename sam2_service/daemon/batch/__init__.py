"""The daemon's engine without its socket, for ``sam2-service batch --engine ray``.

:mod:`.actor` holds :class:`~.actor.AutoActor`: one model per Ray actor, answering the same
``{"op": "auto"}`` request frames as the daemon through the daemon's own dispatcher,
inference worker and auto runner, so its label maps are the daemon's.
"""
