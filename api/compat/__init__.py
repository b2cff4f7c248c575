"""Drop-in protocols: other APIs' requests and responses (OpenAI's, Ollama's), backed by jobs.

Every protocol is a folder of the same four modules, so a new one (OpenAI's Responses API, the
AI SDK's UI message stream) copies the shape of an existing one:

    <protocol>/__init__.py   ``router``: what ``api.app`` includes
    <protocol>/schemas.py    the request models: a ``DropInRequest`` each, mapped to job fields
    <protocol>/render.py     pure: the job record and its stored events -> the protocol's bodies,
                             stream chunks or lines (a ``View`` and a ``Renderer``)
    <protocol>/routes.py     the FastAPI routes only: no Redis command, no rendering

``durable`` is the one protocol that is not jobs rendered: the Durable Streams protocol, whose
streams are its own (and jobs' events, read through it); its folder says its shape.

What they share: ``base`` (the request and ``View`` bases, the ``Renderer`` protocol, model
names and instants; pure) and ``jobs`` (a job submitted from a protocol request, followed,
rendered as a stream, awaited; a failed job's HTTP error).
"""
