"""What the three CLIs share: logging options and mapping fedge errors to one line and an exit code."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from fedge.agent.core import logs
from fedge.agent.core.errors import FedgeError

#: Exit code for an unexpected crash (a bug): distinct from every FedgeError code.
EXIT_INTERNAL = 70
#: Exit code when a command needs an optional extra that is not installed (EX_UNAVAILABLE).
EXIT_MISSING_EXTRA = 69
#: Import names of optional dependencies, and the install extra that brings each.
EXTRA_OF_MODULE = {
    "dp_accounting": "coordinator", "scipy": "coordinator", "cryptography": "coordinator", "amqtt": "coordinator",
    "matplotlib": "sim", "sklearn": "sim", "mlxtend": "sim", "tqdm": "sim", "ray": "ray", "tensorflow": "modelgen",
}  # fmt: skip


def missing_extra_line(prog: str, module: str) -> str | None:
    """The one line naming the extra to install for a missing ``module``, or None if none brings it."""
    extra = EXTRA_OF_MODULE.get(module.split(".")[0])
    if extra is None:
        return None
    return f"{prog}: error: this needs the '{extra}' extra ({module} is not installed): pip install 'fedge[{extra}]'"


def require_extra(prog: str, modules: tuple[str, ...]) -> int | None:
    """Print the missing-extra line and return its exit code if any of ``modules`` is absent."""
    import importlib.util

    for module in modules:
        if importlib.util.find_spec(module) is None:
            click.echo(missing_extra_line(prog, module) or f"{prog}: error: {module} is not installed", err=True)
            return EXIT_MISSING_EXTRA
    return None


def logging_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--log-level`` and ``--log-format`` for a top-level group; configures logging once."""

    def configure(ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
        ctx.meta[_param.name] = value
        if "log_level" in ctx.meta and "log_format" in ctx.meta:
            logs.configure(ctx.meta["log_level"], ctx.meta["log_format"])
        return value

    f = click.option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        expose_value=False,
        callback=configure,
        is_eager=True,
        help="Log lines for people (text) or one JSON object per line for fleets (json).",
    )(f)
    f = click.option(
        "--log-level",
        type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
        default="INFO",
        show_default=True,
        expose_value=False,
        callback=configure,
        is_eager=True,
        help="Lowest level of log lines to print.",
    )(f)
    return f


def run(group: click.Command, prog: str, argv: list[str] | None = None) -> int:
    """Run a click command; a FedgeError becomes ``prog: error: ...`` and its exit code."""
    try:
        rv = group.main(args=argv, prog_name=prog, standalone_mode=False)
    except FedgeError as e:
        click.echo(f"{prog}: error: {e}", err=True)
        return e.exit_code
    except click.exceptions.Abort:
        click.echo(f"{prog}: aborted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except ModuleNotFoundError as e:
        line = missing_extra_line(prog, e.name or "")
        if line is None:
            raise
        click.echo(line, err=True)
        return EXIT_MISSING_EXTRA
    except Exception as e:  # a bug: still one line, with the type, and a hint for details
        click.echo(f"{prog}: internal error: {type(e).__name__}: {e} (run with --log-level DEBUG)", err=True)
        import logging

        logging.getLogger(prog).debug("traceback", exc_info=True)
        return EXIT_INTERNAL
    # without standalone mode click *returns* the code of ctx.exit(n) instead of raising it
    return rv if type(rv) is int else 0
