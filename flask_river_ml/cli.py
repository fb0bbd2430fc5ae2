"""``flask river-ml ...``: manage the users of the HTTP API and their scopes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click
from flask.cli import AppGroup

from .auth import SCOPES, Auth, UserNotFound, scopes_from
from .errors import InvalidInput, RiverMLError
from .http.access import state

T = TypeVar("T")

river_ml_cli = AppGroup("river-ml", help="Manage the users of the flask-river-ml API.")


def _auth() -> Auth:
    return state().auth


def _run(action: Callable[..., T], *args: Any) -> T:
    # The package's errors are the user's to fix: a message and exit status 1, no traceback.
    try:
        return action(*args)
    except RiverMLError as error:
        raise click.ClickException(error.message) from None


def _scopes(context: click.Context, parameter: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    # Repeated options and comma lists alike: --scope predict --scope learn, --scope predict,learn.
    if not values:
        return SCOPES
    try:
        return scopes_from(",".join(values))
    except InvalidInput as error:
        raise click.BadParameter(error.message, context, parameter) from None


def _scope_option(purpose: str, required: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        "--scope",
        "scopes",
        multiple=True,
        required=required,
        metavar="SCOPE[,SCOPE]",
        callback=_scopes,
        help=f"{purpose} One of {', '.join(SCOPES)}; repeat the option or give a comma list.",
    )


_password = click.option(
    "--password", prompt=True, hide_input=True, help="The user's password (asked for when not given)."
)


@river_ml_cli.command("create-user")
@click.argument("name")
@click.option(
    "--password",
    prompt=True,
    hide_input=True,
    confirmation_prompt=True,
    help="The user's password (asked for, twice, when not given).",
)
@_scope_option("What the user may do (default: every scope).")
def create_user(name: str, password: str, scopes: tuple[str, ...]) -> None:
    """Create a user and print their API token (the last line, alone)."""
    token = _run(_auth().create_user, name, password, scopes)
    click.echo(f"Created user {name} with the scopes {', '.join(scopes)}.")
    click.echo("Their API token, for RIVER_ML_TOKEN (shown once):")
    click.echo(token)


@river_ml_cli.command("set-scopes")
@click.argument("name")
@_scope_option("What the user may do from now on.", required=True)
def set_scopes(name: str, scopes: tuple[str, ...]) -> None:
    """Give a user exactly the scopes named; access tokens already issued lose the others at once."""
    held = _run(_auth().set_scopes, name, scopes)
    click.echo(f"User {name} now has the scopes {', '.join(held)}.")


@river_ml_cli.command("get-token")
@click.argument("name")
@_password
def get_token(name: str, password: str) -> None:
    """Print a fresh API token for a user (the last line, alone); the old one stops working."""
    token = _run(_auth().get_token, name, password)
    click.echo(f"New API token of {name}, for RIVER_ML_TOKEN (the old one no longer works):")
    click.echo(token)


@river_ml_cli.command("delete-user")
@click.argument("name")
def delete_user(name: str) -> None:
    """Delete a user."""
    if not _auth().delete_user(name):
        raise click.ClickException(f"No user named '{name}'.")
    click.echo(f"Deleted user {name}.")


@river_ml_cli.command("list-users")
def list_users() -> None:
    """List the users, one a line: the name, a tab, the scopes (comma-separated)."""
    auth = _auth()
    for name in auth.users():
        try:
            held = auth.scopes(name)
        except UserNotFound:  # deleted since the names were read
            continue
        click.echo(f"{name}\t{','.join(held)}")
