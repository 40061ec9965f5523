"""The HTTP listener's modules (VerneMQ's ``http_modules``) on twisted.web.

``site.build_root`` assembles them for one listener:

- ``vmq_metrics_http``: ``/metrics`` (``metrics_http``);
- ``vmq_health_http``: ``/health``, ``/health/ping``, ``/health/listeners``
  (``health``; never behind API keys, as in VerneMQ);
- ``vmq_status_http``: ``/status.json`` and the ``/status`` page (``status``);
- ``vmq_http_mgmt_api`` / ``vmq_http_v2_api``: ``/api/v1/...`` (the vmq-admin
  commands) and ``/api/v2/...`` (``api``);
- ``vmq_http_pub``: ``POST /restmqtt/api/v1/publish`` (``pub``).

API keys (``auth``): the key is the HTTP Basic user name or the ``x-api-key``
header; a missing or bad key gets 401 with ``www-authenticate:
Authorization realm="VerneMQ"``.
"""
