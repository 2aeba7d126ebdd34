"""The dataplane: pipelines, sessions, training and inference, with no knowledge of gRPC or the wire.

:class:`facade.Engine` has one method per RPC and delegates to the modules named after what they hold
(:mod:`.roots`, :mod:`.session_pipeline`, :mod:`.catalog`, :mod:`.validation`, :mod:`.trainruns`,
:mod:`.inference`); :class:`api.EngineAPI` is what the worker's servicer may call, and
:mod:`.types` holds the values that cross that boundary.
"""
