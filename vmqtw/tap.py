"""``twistd vmqtw`` options and service maker, and the ``vmqtw`` console script."""
from __future__ import annotations

import dataclasses
import sys
from typing import Any, NoReturn, Sequence

from twisted.application.service import IService, MultiService
from twisted.python import usage

from vmqtw import config as configmod
from vmqtw import logs
from vmqtw.logs import Logger
from vmqtw.transport import activation  # noqa: F401  (before Twisted's endpoints; see there)


class Options(usage.Options):
    synopsis = "[-c FILE] [--check]"
    longdesc = ("Run the vmqtw MQTT broker with listeners and settings read from a "
                "VerneMQ-style configuration file.")
    optParameters = [
        ["config", "c", "etc/broker.conf", "Path of the broker configuration file."],
    ]
    optFlags = [
        ["check", None, "Validate the configuration, print the resolved listeners and exit."],
    ]

    def postOptions(self) -> None:
        try:
            self.broker_config = configmod.load(self["config"])
        except configmod.ConfigError as e:
            sys.stderr.write(f"vmqtw: configuration error: {e}\n")
            raise SystemExit(2) from None
        if self["check"]:
            self._check()

    def _check(self) -> NoReturn:
        """--check: the config parses, every enabled plugin loads, and every
        listener's layers build (TLS files, PSK files, ciphers...) - all
        without binding a port or opening the store."""
        from twisted.internet import reactor

        from vmqtw.auth import loader
        from vmqtw.service import BrokerService, StartupError
        try:
            plugins = loader.load_plugins(self.broker_config, reactor)
            BrokerService(self.broker_config, reactor, plugins=plugins)
        except (configmod.ConfigError, StartupError) as e:
            sys.stderr.write(f"vmqtw: configuration error: {e}\n")
            raise SystemExit(2) from None
        sys.stdout.write(f"{self['config']}: OK\n")
        sys.stdout.write(configmod.describe_listeners(self.broker_config) + "\n")
        if plugins:
            sys.stdout.write(loader.describe(plugins) + "\n")
        warnings = configmod.describe_warnings(self.broker_config)
        if warnings:  # on stdout: --check's stderr is for errors only
            sys.stdout.write(warnings + "\n")
        raise SystemExit(0)


class _Broker(MultiService):
    """The broker as twistd runs it.

    twistd calls ``privilegedStartService`` after it has redirected
    ``sys.stderr`` into the log, and prints any exception raised there as a
    traceback.  A startup problem (a port in use, an unsupported listener) is a
    configuration error, not a crash: print it as one line naming the
    configuration file and line on the real stderr, log it, and exit with
    status 1.  When daemonizing, the exception is re-raised instead, so twistd
    reports it to the waiting parent process through its status pipe.
    """

    def __init__(self, broker: IService, exit_on_error: bool) -> None:
        super().__init__()
        self.broker = broker
        self.exit_on_error = exit_on_error
        broker.setServiceParent(self)

    def privilegedStartService(self) -> None:
        from vmqtw.service import StartupError
        try:
            super().privilegedStartService()
        except StartupError as e:
            if not self.exit_on_error:
                raise
            startup_failed(e)


def startup_failed(error: Exception, log: bool = True) -> NoReturn:
    """Report a startup problem as one line on the process's real stderr and exit 1.

    With ``log`` it also goes to the log (once logging has begun; before that,
    Twisted would print a critical event on stderr a second time).
    """
    if log:
        Logger(namespace="vmqtw").critical("startup failed: {reason}", reason=str(error))
    stream = sys.__stderr__ or sys.stderr
    stream.write(f"vmqtw: {error}\n")
    stream.flush()
    raise SystemExit(1)


def makeService(options: Options) -> IService:
    from vmqtw.service import StartupError, make_service
    parent = getattr(options, "parent", None)
    daemonizing = parent is not None and not parent.get("nodaemon", True)
    try:
        broker = make_service(options.broker_config)
    except StartupError as e:
        if daemonizing:
            raise
        startup_failed(e, log=False)  # twistd has not started logging yet
    return _Broker(broker, exit_on_error=not daemonizing)


def main(argv: Sequence[str] | None = None) -> None:
    """``vmqtw -c FILE``: run in the foreground, logging to stdout, without twistd."""
    from twisted.internet import reactor

    from vmqtw.service import StartupError, make_service

    options = Options()
    try:
        options.parseOptions(list(sys.argv[1:] if argv is None else argv))
    except usage.UsageError as e:
        sys.stderr.write(f"{options}\nvmqtw: {e}\n")
        raise SystemExit(2) from None
    from twisted.logger import globalLogBeginner

    # The console part of log.* (standard output at log.console.level, unless
    # log.console says file or off); the service adds the file, error file and
    # syslog observers when it starts.  Keep stderr for errors: they must not
    # vanish into the log on stdout.
    log = options.broker_config.log
    console_only = dataclasses.replace(
        log, console="console" if log.console in ("console", "both") else "off",
        error_file="", syslog=False)
    globalLogBeginner.beginLoggingTo(logs.observers(console_only), redirectStandardIO=False)
    try:
        service: Any = make_service(options.broker_config)
        service.privilegedStartService()
    except StartupError as e:
        startup_failed(e)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
