"""Operating a running broker: VerneMQ's ``vmq-admin`` commands.

- ``commands``: the command set as functions on a Broker (``Admin.run(argv)``);
- ``parse`` and ``output``: VerneMQ's argument syntax, tables and JSON;
- ``apikeys``: the HTTP API keys (a 0600 JSON file);
- ``listeners``: the listener controller interface (show/start/stop/restart/delete);
- ``channel``: the local admin socket (unix, 0600, one JSON line each way);
- ``cli``: the ``vmq-admin`` console script;
- ``systree``: the ``$SYS`` publisher;
- ``trace``: live protocol traces (``vmq-admin trace client``);
- ``ops``: the whole stack built from a broker service (what the service wires in).
"""
