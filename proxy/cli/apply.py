"""``taximeter apply FILE``: clients and budgets declared in a TOML ops file,
created or updated so the store matches; idempotent (a second run changes
nothing), and ``--dry-run`` only says what it would do."""

from __future__ import annotations

import asyncio
import tomllib
from dataclasses import replace
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from taximeter.pricing import budgets, limits
from taximeter.pricing.models import BudgetConfig
from taximeter.proxy.errors import InvalidInput
from taximeter.proxy.operations import Operations
from taximeter.proxy.settings import ClientDeclaration, ConfigError

__all__ = ["apply_file", "read_declarations"]

_DECLARATIONS = TypeAdapter(list[ClientDeclaration])


def read_declarations(path: Path) -> list[ClientDeclaration]:
    """The ``[[clients]]`` of an ops file (other tables, such as settings, are left alone)."""
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    try:
        return _DECLARATIONS.validate_python(data.get("clients", []))
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in ("clients", *error["loc"]))
        raise ConfigError(f"{path}: {where}: {error['msg']}") from exc


async def apply_file(ops: Operations, path: Path, *, dry_run: bool) -> list[str]:
    """Make the store match ``path``; the changes, one line each."""
    declared = await asyncio.to_thread(read_declarations, path)
    for declaration in declared:  # validate every budget before writing anything
        if declaration.budget is not None:
            _config(ops, declaration)
    changes: list[str] = []
    for declaration in declared:
        changes += await _apply_one(ops, declaration, dry_run)
    return changes


def _config(ops: Operations, declaration: ClientDeclaration) -> BudgetConfig:
    try:
        return budgets.config_from_json(
            declaration.id, declaration.budget, timezone=ops.timezone, currency=ops.currency
        )
    except budgets.BudgetInputError as exc:
        raise InvalidInput(f"client {declaration.id}: budget.{exc.field}: {exc.message}") from exc


async def _apply_one(ops: Operations, declaration: ClientDeclaration, dry_run: bool) -> list[str]:
    changes = []
    name = declaration.name or declaration.id
    client = await ops.find_client(declaration.id)
    if client is None:
        changes.append(f"create client {declaration.id} ({name})")
        if not dry_run:
            await ops.create_client(declaration.id, name)
    elif client.name != name:
        changes.append(f"rename client {declaration.id}: {client.name!r} -> {name!r}")
        if not dry_run:
            await ops.rename_client(declaration.id, name)
    changes += await _apply_limits(ops, declaration, dry_run, exists=client is not None)
    if declaration.budget is None:
        return changes
    wanted = _config(ops, declaration)
    current = await ops.find_budget(declaration.id) if client is not None else None
    if current is not None and replace(current.config, currency=wanted.currency) == wanted:
        return changes
    verb = "set" if current is None else "update"
    changes.append(f"{verb} budget {declaration.id}: {_describe(wanted)}")
    if not dry_run:
        await ops.put_budget(declaration.id, declaration.budget)
    return changes


async def _apply_limits(
    ops: Operations, declaration: ClientDeclaration, dry_run: bool, *, exists: bool
) -> list[str]:
    if declaration.limits is None:
        return []
    try:
        wanted = limits.limits_from_json({"limits": declaration.limits})
    except budgets.BudgetInputError as exc:
        raise InvalidInput(f"client {declaration.id}: {exc.field}: {exc.message}") from exc
    client = await ops.find_client(declaration.id) if exists else None
    if client is not None and client.terms.limits == wanted:
        return []
    names = ", ".join(limit.name for limit in wanted) or "none"
    if not dry_run:
        await ops.set_limits(declaration.id, {"limits": declaration.limits})
    return [f"set limits {declaration.id}: {names}"]


def _describe(config: BudgetConfig) -> str:
    limits = []
    if config.token_limit is not None:
        limits.append(f"{config.token_limit:,} tokens")
    if config.cost_limit is not None:
        limits.append(f"{config.cost_limit} {config.currency}")
    pause = "" if config.pause_at_limit else ", soft"
    return f"{config.mode}, {' and '.join(limits)} {config.period} ({config.timezone}){pause}"
