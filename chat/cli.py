"""Command-line tools: `flask --app app seed`, `agent token`, `inbound-token`."""
from __future__ import annotations

import sys

import click
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext
from sqlalchemy import func, select

from . import catalog, seed as demo
from .errors import DomainError
from .extensions import db
from .models import Conversation

agent_cli = AppGroup("agent", help="Manage agents.")


def init_app(app: Flask) -> None:
    app.cli.add_command(seed_command)
    app.cli.add_command(agent_cli)
    app.cli.add_command(inbound_token_command)


# add_command() does not wrap plain click commands: with_appcontext lets them run under any
# runner (app.cli, app.test_cli_runner()), not only under the `flask` FlaskGroup.
@click.command("seed")
@with_appcontext
@click.option("--agents", default=6, show_default=True, help="Agents in all (the 3 demo logins included).")
@click.option("--contacts", type=int, default=None, help="Contacts (default: one per conversation).")
@click.option("--conversations", default=300, show_default=True)
@click.option("--messages", default=3000, show_default=True)
@click.option("--departments", default=3, show_default=True)
@click.option("--if-empty", is_flag=True, help="Only add conversations when there are none yet.")
def seed_command(agents, contacts, conversations, messages, departments, if_empty):
    """Load demo data; the demo logins are always (idempotently) there afterwards."""
    for name, value in (("agents", agents), ("conversations", conversations), ("messages", messages),
                        ("departments", departments)):
        if value < 0:
            raise click.BadParameter(f"{name} must not be negative")
    if contacts is not None and contacts < 0:
        raise click.BadParameter("contacts must not be negative")
    if if_empty and db.session.scalar(select(func.count()).select_from(Conversation)):
        conversations = messages = 0
        contacts = 0
    total = demo.total_rows(agents, contacts, conversations, messages)
    with click.progressbar(length=total, label="Seeding", show_pos=True, file=sys.stderr) as bar:
        counts = demo.seed(agents=agents, contacts=contacts, conversations=conversations,
                           messages=messages, departments=departments, progress=bar.update)
    click.echo(
        f"Added {counts['contacts']} contacts, {counts['conversations']} conversations, "
        f"{counts['messages']} messages."
    )
    click.echo(f"Logins (password {demo.DEMO_PASSWORD}): "
               + ", ".join(email for email, *_ in demo.DEMO_USERS))


@agent_cli.command("token")
@click.argument("email")
def agent_token(email):
    """Issue a new API token for EMAIL (the old one stops working) and print it."""
    try:
        click.echo(catalog.issue_api_token(email))
    except DomainError as exc:
        raise click.ClickException(exc.message) from None


@agent_cli.command("create")
@click.argument("email")
@click.option("--name", required=True)
@click.option("--role", type=click.Choice(["admin", "agent"]), default="agent", show_default=True)
@click.password_option()
def agent_create(email, name, role, password):
    """Create an agent who can log in."""
    try:
        agent = catalog.save_agent(email=email, name=name, role=role, department_ids=[], password=password)
    except DomainError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"Created {agent.email} ({agent.role}).")


@click.command("inbound-token")
@with_appcontext
def inbound_token_command():
    """Print the bearer token that POST /api/inbound expects."""
    click.echo(current_app.config["INBOUND_TOKEN"])
