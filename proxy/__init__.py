"""flywheel proxy: the OpenAI-compatible sidecar (SPEC §4).

Modules: ``config`` (frozen settings), ``upstreams`` (where a call goes), ``wire``
(reading requests, headers crossing the proxy), ``gateway`` (parse → route →
relay), ``forward`` (OpenAI-compatible relay, streams), ``litellm_bridge``
(other providers), ``errors`` (the OpenAI error shape), ``app`` and ``server``
(aiohttp wiring, drain on SIGTERM).
"""
