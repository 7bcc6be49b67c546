"""Command line: ``bitbucket-mirror-exporter [run|demo] [flags]``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from exporter import __version__
from exporter import external_url as external_urls
from exporter.app import (
    DEFAULT_PORT,
    Exporter,
    ListenAddress,
    Settings,
    load_settings,
    serve_until_stopped,
    stop_on_signals,
)
from exporter.config import ConfigError
from exporter.logs import LEVELS, setup_logging
from exporter.rest.client import BitbucketClient, HttpSetup, http_session
from exporter.sources import FetchError
from exporter.web.config import WebConfig, load_web_config
from exporter.webhooks.setup import SetupError, Webhooks
from exporter.webhooks.wait import Request, UsageError, Waiter, seconds
from exporter.workers import main_module_by_name

PROG = "bitbucket-mirror-exporter"
COMMANDS = ("run", "demo", "rules", "check-config", "wait", "webhooks")
EXIT_CONFIG = 2

log = logging.getLogger("exporter")


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (argparse names the flag and exits with 2 otherwise)."""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def _listen_address(text: str) -> ListenAddress:
    try:
        return ListenAddress.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _external_url(value: str) -> str:
    try:
        return external_urls.parse(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_external_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--web.external-url",
        dest="external_url",
        type=_external_url,
        default=None,
        metavar="URL",
        help="the URL people reach the exporter by (as Prometheus' flag): the base of the alerts' runbook_url "
        "(URL/runbooks) and of the links the exporter writes; default http://<this host's name>:<port>",
    )


def _common_options() -> argparse.ArgumentParser:
    """The options of the commands that load the configuration (run, demo, check-config)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="YAML configuration file (environment overrides it)")
    common.add_argument(
        "--web.listen-address",
        dest="listen",
        type=_listen_address,
        default=ListenAddress("0.0.0.0", DEFAULT_PORT),
        metavar="HOST:PORT",
        help=f"address to serve /metrics on (default 0.0.0.0:{DEFAULT_PORT})",
    )
    common.add_argument(
        "--web.config.file",
        dest="web_config",
        type=Path,
        metavar="FILE",
        help="TLS and basic auth for the exporter's own pages (exporter-toolkit style YAML); reloaded with the config",
    )
    common.add_argument(
        "--web.max-connections",
        dest="max_connections",
        type=int,
        default=1000,
        metavar="N",
        help="connections open at once at most; more are closed as they are accepted (default 1000)",
    )
    common.add_argument(
        "--workers.processes",
        dest="worker_processes",
        type=positive_int,
        default=None,
        metavar="N",
        help=(
            "worker processes that walk, decode and compare the mirrors' listings "
            "(default: the usable cores less one, at least 1)"
        ),
    )
    common.add_argument(
        "--web.enable-lifecycle",
        dest="lifecycle",
        action="store_true",
        help="serve POST /-/reload (at most one reload every 10 s); SIGHUP always reloads",
    )
    common.add_argument("--log.level", dest="log_level", choices=LEVELS, default="info", help="default info")
    _add_external_url(common)
    return common


def _add_wait(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    wait = commands.add_parser(
        "wait",
        help="wait until a commit is on the mirror (a CI step before cloning from it): exit 0 when it is, 1 on "
        "timeout, 2 on usage errors, 3 when the primary has no such commit",
    )
    wait.add_argument("--exporter", required=True, help="the exporter's base URL, e.g. http://exporter:9879")
    wait.add_argument("--repository", required=True, metavar="KEY/slug", help="project key and repository slug")
    wait.add_argument("--commit", required=True, help="the commit id that must be on the mirror")
    wait.add_argument("--mirror", help="the mirror (its name in the exporter); default: every mirror")
    wait.add_argument("--timeout", default="10m", help="give up after this long (default 10m)")
    wait.add_argument("--interval", default="5s", help="ask this often (default 5s)")
    wait.add_argument("--username", help="with the exporter's basic auth; the password from --password-file or "
                      "BITBUCKET_MIRROR_EXPORTER_WAIT_PASSWORD, never the command line")  # fmt: skip
    wait.add_argument("--password-file", type=Path)
    wait.add_argument("--ca-file", type=Path, help="CA bundle for an exporter served over TLS")


def _add_webhooks(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    hooks = commands.add_parser("webhooks", help="set up Bitbucket's webhooks for the exporter, or read their state")
    hook_commands = hooks.add_subparsers(dest="webhooks_command", metavar="{apply,status}", required=True)
    for name, text in (
        ("apply", "create or update the webhook (both events, the secret) on each project, idempotently"),
        ("status", "read each of the exporter's webhooks' delivery statistics"),
    ):
        sub = hook_commands.add_parser(name, help=text)
        sub.add_argument("--config", type=Path, help="the exporter's configuration (primary, webhooks.secret_file)")
        which = sub.add_mutually_exclusive_group(required=True)
        which.add_argument("--project", action="append", default=[], metavar="KEY", help="a project (repeatable)")
        which.add_argument("--all-projects", action="store_true", help="every project the primary's user sees")
        if name == "apply":
            sub.add_argument(
                "--url",
                action="append",
                required=True,
                metavar="URL",
                help="the webhook URL as Bitbucket reaches the exporter (repeat for each replica)",
            )
            sub.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")
        else:
            sub.add_argument(
                "--max-requests",
                type=int,
                metavar="N",
                help="requests to Bitbucket per project at most (default webhooks.statistics_max_requests, 200)",
            )


def _parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = argparse.ArgumentParser(prog=PROG, description="Prometheus exporter for Bitbucket DC smart mirrors.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{run,demo,rules,check-config,wait,webhooks}")
    commands.add_parser("run", parents=[common], help="poll the configured Bitbucket (the default)")
    demo = commands.add_parser("demo", parents=[common], help="run against a built-in simulated mirror farm")
    demo.add_argument("--demo.interval", dest="demo_interval", type=float, default=5.0, help="poll interval, s")
    rules = commands.add_parser("rules", help="print the Prometheus alert rules, with your own thresholds")
    rules.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE", help="override a setting"
    )
    rules.add_argument("--output", type=Path, help="write to this file instead of standard output")
    rules.add_argument("--list", action="store_true", help="list the settings with their defaults and exit")
    rules.add_argument(
        "--format",
        choices=("prometheus", "sloth", "pyrra"),
        default="prometheus",
        help="prometheus: the rules file (default); sloth or pyrra: the freshness SLOs as that tool's spec "
        "(docs/slo.md)",
    )
    _add_external_url(rules)
    _add_wait(commands)
    _add_webhooks(commands)
    commands.add_parser(
        "check-config",
        parents=[common],
        help="check the configuration (file, environment, web config) and exit: 0 when valid, 2 when not",
    )
    return parser


def _with_default_command(argv: Sequence[str]) -> list[str]:
    args = list(argv)
    if not args or (args[0] not in COMMANDS and args[0] not in ("-h", "--help", "--version")):
        args.insert(0, "run")
    return args


def load_configs(args: argparse.Namespace) -> tuple[Settings, WebConfig]:
    """The configuration and the web config, as at start and at every reload; raises ConfigError."""
    settings = load_settings(args.config)
    web_config = load_web_config(args.web_config) if args.web_config is not None else WebConfig()
    # Once per load (start and each reload), never per poll.
    for warning in settings.warnings():
        log.warning("config warning", extra={"warning": warning})
    return settings, web_config


def reload_on_sighup(exporter: Exporter) -> None:
    reloads: set[asyncio.Task[tuple[bool, str]]] = set()

    def reload() -> None:
        # Keep a reference until it ends: the event loop holds tasks only weakly.
        task = asyncio.create_task(exporter.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)


async def _serve(exporter: Exporter) -> None:
    stop = stop_on_signals()
    reload_on_sighup(exporter)
    await serve_until_stopped(exporter, stop)


def _config_error(exc: ConfigError) -> int:
    print(f"{PROG}: config error: {exc}", file=sys.stderr)
    return EXIT_CONFIG


def _run(args: argparse.Namespace) -> int:
    try:
        settings, web_config = load_configs(args)
    except ConfigError as exc:
        return _config_error(exc)
    exporter = Exporter(
        settings,
        args.listen,
        web_config=web_config,
        loader=lambda: load_configs(args),
        lifecycle=args.lifecycle,
        max_connections=args.max_connections,
        worker_processes=args.worker_processes,
        external_url=args.external_url,
    )
    try:
        asyncio.run(_serve(exporter))
    except OSError as exc:
        log.error("cannot serve", extra={"address": f"{args.listen.host}:{args.listen.port}", "err": exc.strerror})
        return 1
    return 0


def _demo(args: argparse.Namespace) -> int:
    from exporter.demo import run_demo

    try:
        web_config = load_web_config(args.web_config) if args.web_config is not None else WebConfig()
    except ConfigError as exc:
        return _config_error(exc)
    try:
        asyncio.run(run_demo(args.listen, args.demo_interval, web_config, args.external_url))
    except OSError as exc:
        log.error("cannot serve", extra={"address": f"{args.listen.host}:{args.listen.port}", "err": exc.strerror})
        return 1
    return 0


def _rules(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from alerts.rules import AlertConfig, render
    from alerts.slo_specs import render as render_slo_spec

    if args.list:
        kinds = AlertConfig.kinds()
        for name, default in asdict(AlertConfig()).items():
            print(f"{name}={default}  ({kinds[name]})")
        return 0
    overrides = list(args.overrides)
    if args.external_url is not None and not any(o.startswith("runbook_url=") for o in overrides):
        overrides.insert(0, f"runbook_url={external_urls.runbooks(args.external_url)}")  # a --set still wins
    try:
        config = AlertConfig.from_settings(overrides)
    except ValueError as exc:
        print(f"{PROG} rules: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    for setting, url in (("runbook_url", config.runbook_url), ("grafana_url", config.grafana_url)):
        warning = external_urls.loopback_warning(url, setting)
        if warning is not None:
            print(f"{PROG} rules: {warning}", file=sys.stderr)
    text = render(config) if args.format == "prometheus" else render_slo_spec(args.format, config)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
    return 0


def _check_config(args: argparse.Namespace) -> int:
    """For CI pipelines and chart hooks: the same loading as a start, with nothing polled or served."""
    try:
        settings, web_config = load_configs(args)
    except ConfigError as exc:
        return _config_error(exc)
    tls = web_config.tls_server_config is not None
    print(
        f"{PROG}: config OK: primary {settings.primary.url}, {len(settings.mirrors)} mirror(s), "
        f"poll every {settings.poll.interval_seconds:g}s" + (", web config with TLS" if tls else "")
    )
    external = args.external_url or external_urls.default(args.listen.host, args.listen.port, tls)
    runbooks = external_urls.runbooks(external)
    print(f"{PROG}: alerts generated with --web.external-url={external} link to runbooks at {runbooks}")
    warning = external_urls.loopback_warning(runbooks, "the runbook base")
    if warning is not None:
        print(f"{PROG}: {warning}", file=sys.stderr)
    return 0


def _wait(args: argparse.Namespace) -> int:
    project, _, slug = args.repository.partition("/")
    try:
        request = Request(
            exporter=args.exporter,
            project=project,
            slug=slug,
            commit=args.commit,
            mirror=args.mirror,
            timeout=seconds(args.timeout),
            interval=seconds(args.interval),
            username=args.username,
            password_file=args.password_file,
            ca_file=args.ca_file,
        )
        if not project or not slug or "/" in slug:
            raise UsageError("--repository: give it as PROJECTKEY/slug")
        if not args.exporter.startswith(("http://", "https://")):
            raise UsageError("--exporter: an http:// or https:// URL")
        return Waiter(request, lambda line: print(line, flush=True)).run()
    except (UsageError, ValueError) as exc:
        print(f"{PROG} wait: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def _webhooks(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        return _config_error(exc)

    async def run() -> None:
        setup = HttpSetup(settings.poll, settings.tls)
        async with http_session(setup) as session:
            budget = getattr(args, "max_requests", None)
            if budget is not None and budget < 1:
                raise SetupError("--max-requests: a positive number")
            client = BitbucketClient(session, settings.poll)
            hooks = Webhooks(client, settings.primary, settings.webhooks, lambda line: print(line, flush=True), budget)
            projects = args.project or await hooks.projects()
            if args.webhooks_command == "apply":
                for url in args.url:
                    if not url.startswith(("http://", "https://")):
                        raise SetupError(f"--url {url}: an http:// or https:// URL")
                await hooks.apply(projects, args.url, args.dry_run)
            else:
                await hooks.status(projects)

    try:
        asyncio.run(run())
    except SetupError as exc:
        print(f"{PROG} webhooks: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except FetchError as exc:
        print(f"{PROG} webhooks: Bitbucket refused: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    main_module_by_name()
    args = _parser().parse_args(_with_default_command(sys.argv[1:] if argv is None else argv))
    if args.command == "webhooks":
        setup_logging(getattr(args, "log_level", "info"))
        return _webhooks(args)
    if args.command == "rules":
        return _rules(args)
    if args.command == "wait":
        return _wait(args)
    if args.command == "check-config":
        setup_logging(args.log_level)
        return _check_config(args)
    setup_logging(args.log_level)
    if args.command == "demo":
        return _demo(args)
    return _run(args)
