"""``twistd vmqtw`` options and service maker, and the ``vmqtw`` console script."""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, NoReturn, Sequence

from twisted.application.service import IService, MultiService
from twisted.python import usage

from vmqtw import __version__
from vmqtw import config as configmod
from vmqtw import gcpolicy
from vmqtw import logs
from vmqtw.logs import Logger
from vmqtw.transport import activation  # noqa: F401  (before Twisted's endpoints; see there)


#: The configuration file used without ``-c`` (relative to the working directory).
DEFAULT_CONFIG = "etc/broker.conf"


class Options(usage.Options):
    synopsis = "[-c FILE] [--check] [--sample-config] [--version]"
    longdesc = ("Run the vmqtw MQTT broker with listeners and settings read from a "
                "VerneMQ-style configuration file.  Start from the sample one: "
                "vmqtw --sample-config > broker.conf")
    optParameters = [
        ["config", "c", None,
         f"Path of the broker configuration file [default: {DEFAULT_CONFIG}]."],
        ["workers", None, None, "Run N cluster nodes on this machine sharing the MQTT "
         "listeners (SO_REUSEPORT), supervised; needs metadata_plugin = redis "
         "[default: the file's workers = N, else one process].", int],
    ]
    optFlags = [
        ["check", None, "Validate the configuration, print the resolved listeners and exit."],
    ]

    def opt_version(self) -> NoReturn:
        """Print vmqtw's version and exit."""
        sys.stdout.write(f"vmqtw {__version__}\n")
        sys.stdout.flush()
        raise SystemExit(0)

    def opt_sample_config(self) -> NoReturn:
        """Print the sample configuration shipped with vmqtw and exit."""
        from vmqtw.data import read_sample
        sys.stdout.write(read_sample("broker.conf"))
        sys.stdout.flush()
        raise SystemExit(0)

    def postOptions(self) -> None:
        if self["config"] is None:
            self["config"] = DEFAULT_CONFIG
            if not os.path.exists(DEFAULT_CONFIG):
                sys.stderr.write(no_config_message())
                raise SystemExit(2)
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
            # Chains that would deny every PUBLISH or SUBSCRIBE: warnings, on
            # stdout (stderr is for errors).
            for warning in loader.denied_requests(self.broker_config, plugins):
                sys.stdout.write(f"vmqtw: warning: {warning}\n")
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

    def startService(self) -> None:
        super().startService()
        gcpolicy.tune()  # start-up is done: see vmqtw.gcpolicy


def no_config_message() -> str:
    """What a bare ``vmqtw`` (no ``-c``, no ``etc/broker.conf`` here) says."""
    from vmqtw.data import sample_dir
    return (f"vmqtw: no configuration file: {DEFAULT_CONFIG} does not exist in "
            f"{os.getcwd()} and no -c FILE was given.\n"
            "vmqtw: start from the sample shipped with vmqtw:\n"
            "    vmqtw --sample-config > broker.conf\n"
            "    vmqtw -c broker.conf --check && vmqtw -c broker.conf\n"
            f"vmqtw: (the sample and its vmq.passwd and vmq.acl are in {sample_dir()})\n")


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
        # Still in twistd's first process (it forks later), with its stderr.
        broker = make_service(options.broker_config)
    except StartupError as e:
        startup_failed(e, log=False)  # twistd has not started logging yet
    workers = options.broker_config.cluster.workers
    if workers:
        # The supervisor is ``vmqtw``'s: under twistd this process is one node.
        Logger(namespace="vmqtw").warn(
            "workers = {n} is ignored by twistd: this process runs one node; start "
            "`vmqtw -c {path}` to run the {n} workers", n=workers, path=options["config"])
    if daemonizing:
        from vmqtw.daemon import report_startup_errors_in_one_line
        report_startup_errors_in_one_line()
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
    if options["workers"] is not None and options["workers"] < 1:
        sys.stderr.write("vmqtw: --workers needs a number of at least 1\n")
        raise SystemExit(2)
    from vmqtw.workers import configured_workers
    workers = configured_workers(options.broker_config, options["workers"])
    if workers is not None:
        from vmqtw.workers import supervise
        supervise(options["config"], options.broker_config, workers)
        return
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
    gcpolicy.tune()  # start-up is done: see vmqtw.gcpolicy
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
