"""Invalidation derived from the commit itself.

SQLAlchemy session events collect the rows a transaction inserts, updates and deletes (ORM
flushes and the domain's conditional bulk UPDATEs alike). After a successful commit, and
never after a rollback, INVALIDATION_MAP turns each changed row, as it was before and as it
is after, into cache prefixes and tags to drop. Domain functions never mention the cache.

Conversation lists are shared between viewers with the same permissions, so they are tagged
by what can change them: a department's pending queue (convs:dept:<id>), an agent's own
conversations (convs:user:<id>), and everything (convs:all, for admins).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

from sqlalchemy import event, inspect, select
from sqlalchemy.orm import Session

from . import push, search, visibility
from .cache import smart_cache
from .visibility import AGENTS, DIRECTORY, LABELS

CHANGES = "chat.changes"  # session.info key: rows changed in the current transaction
WROTE = "chat.wrote"  # session.info key: the transaction has sent writes to the database


@dataclass(frozen=True)
class Rule:
    """What a changed row of one table makes stale: key prefixes and tags, as templates
    filled from the row's columns (None reads as 'none'), or computed from the row."""

    prefixes: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    tags_on_update: tuple[str, ...] = ()  # only when an existing row changes, not on insert
    tags_of: Callable[[dict], Iterable[str]] | None = None  # tags computed from the row
    # Socket.IO rooms told about it (visibility.rooms_for says who is in which room). A room
    # hears the row's prefixes, and of its tags those visibility.hears allows.
    rooms: tuple[str, ...] = ()
    rooms_of: Callable[[dict], Iterable[str]] | None = None  # rooms computed from the row
    # A change of this column signs the row's agent out everywhere (push.end_sessions). When it
    # is the only column that changed, just `session_prefixes` go stale: no fragment shows it.
    session_column: str | None = None
    session_prefixes: tuple[str, ...] = ()
    # (table, column): the rows of `table` whose id the row's `column` names are heard by the rooms
    # those rows are (a message is heard where its conversation is). Read after the commit when
    # the transaction did not change that row itself.
    rooms_of_parent: tuple[str, str] | None = None
    # (table, column): a change of this row is a change of the row of `table` its `column` names
    # (a conversation's label is the conversation's): that row's rule applies to it, as it is now.
    counts_as_parent: tuple[str, str] | None = None
    # When a row is inserted or deleted (never when it is updated): the tags the rooms_of_parent
    # row's own rule computes, each under this scope ("<scope>:<tag>"), heard by the rooms that
    # hear the tag itself. What depends on which rows exist (search lists: a new note touches no
    # conversation), not on their columns (a message's delivery state).
    parent_tag_scope: str | None = None


# The one place that says what depends on what. A new fragment adds a line here; who may see
# a conversation (its tags and rooms) is visibility's vocabulary.
INVALIDATION_MAP: dict[str, Rule] = {
    "conversations": Rule(
        prefixes=("conversation:{id}",),
        tags_of=visibility.conversation_tags,
        rooms_of=visibility.conversation_rooms,
    ),
    "messages": Rule(prefixes=("conversation:{conversation_id}:messages",),
                     rooms_of_parent=("conversations", "conversation_id"), parent_tag_scope=search.TAG_SCOPE),
    "contacts": Rule(prefixes=("contacts",), tags_on_update=(DIRECTORY,), rooms=(AGENTS,)),
    "departments": Rule(prefixes=("departments",), tags=(DIRECTORY,), rooms=(AGENTS,)),
    "users": Rule(prefixes=("user:{id}", "token", "agents"), tags=(DIRECTORY,), rooms=(AGENTS,),
                  session_column="session_version", session_prefixes=("user:{id}", "token")),
    "user_departments": Rule(prefixes=("user:{user_id}", "token", "agents"), tags=(DIRECTORY,),
                             rooms=(AGENTS,)),
    "quick_replies": Rule(prefixes=("quick_replies",), rooms=(AGENTS,)),
    "tags": Rule(prefixes=("tags",), tags=(LABELS,), rooms=(AGENTS,)),
    "conversation_labels": Rule(counts_as_parent=("conversations", "conversation_id")),
    "attachments": Rule(prefixes=("conversation:{conversation_id}:messages",),
                        rooms_of_parent=("conversations", "conversation_id")),
    "mentions": Rule(prefixes=("mentions:user:{user_id}",), rooms=("user:{user_id}",)),
}


@dataclass
class Change:
    table: str
    kind: str  # insert | update | delete
    rows: list[dict] = field(default_factory=list)  # row snapshots: before and/or after


@dataclass
class StaleAfterCommit:
    """What one commit made stale, and whom to tell."""

    prefixes: set[str] = field(default_factory=set)
    tags: set[str] = field(default_factory=set)
    rooms: dict[str, set[str]] = field(default_factory=dict)  # room -> stale key prefixes and tags
    everything: bool = False
    ended_sessions: set[int] = field(default_factory=set)  # agents signed out everywhere


def stale_after(changes: Iterable[Change], parents: Callable[[str, set], dict] | None = None) -> StaleAfterCommit:
    """Apply INVALIDATION_MAP to the changes of one transaction. parents(table, ids) -> {id: row}
    reads the rows a rule's rooms_of_parent names that the transaction did not change itself."""
    changes = list(changes)
    stale = StaleAfterCommit()
    parent_rows = _parent_rows(changes, parents)
    changed = _changed_columns(changes)
    for change in changes:
        rule = INVALIDATION_MAP.get(change.table)
        if rule is None:
            continue
        if change.kind == "bulk":
            stale.everything = True  # e.g. the seed's bulk inserts: no rows to reason about
            continue
        templates = rule.tags + (rule.tags_on_update if change.kind != "insert" else ())
        if rule.counts_as_parent:
            table, column = rule.counts_as_parent
            parent_rule = INVALIDATION_MAP[table]
            for row in change.rows:
                parent = parent_rows.get((table, row.get(column)))
                if parent is not None:
                    _add_row(stale, parent_rule, parent, parent_rule.tags + parent_rule.tags_on_update, parent_rows)
            continue
        for row in change.rows:
            columns = changed.get((change.table, row.get("id")), set())
            if rule.session_column and rule.session_column in columns:
                stale.ended_sessions.add(row["id"])
                if columns == {rule.session_column}:  # a sign-out, nothing any list shows
                    values = {k: ("none" if v is None else v) for k, v in row.items()}
                    stale.prefixes.update(_format_each(rule.session_prefixes, values))
                    continue
            _add_row(stale, rule, row, templates, parent_rows, added_or_removed=change.kind != "update")
    return stale


def _add_row(stale: StaleAfterCommit, rule: Rule, row: dict, templates: tuple[str, ...],
             parent_rows: dict[tuple[str, object], dict], added_or_removed: bool = False) -> None:
    """What one row snapshot makes stale under `rule` (tags from `templates`), and who hears it
    (added_or_removed: the row was inserted or deleted, for parent_tag_scope)."""
    values = {k: ("none" if v is None else v) for k, v in row.items()}
    prefixes = _format_each(rule.prefixes, values)
    tags = _format_each(templates, values) + (list(rule.tags_of(row)) if rule.tags_of else [])
    stale.prefixes.update(prefixes)
    stale.tags.update(tags)
    rooms = _format_each(rule.rooms, values) + (list(rule.rooms_of(row)) if rule.rooms_of else [])
    scoped: list[tuple[str, str]] = []  # (tag, the tag a room must hear to hear it)
    if rule.rooms_of_parent:
        table, column = rule.rooms_of_parent
        parent = parent_rows.get((table, row.get(column)))
        parent_rule = INVALIDATION_MAP[table]
        if parent is not None and parent_rule.rooms_of:
            rooms += list(parent_rule.rooms_of(parent))
        if parent is not None and rule.parent_tag_scope and added_or_removed:
            parent_values = {k: ("none" if v is None else v) for k, v in parent.items()}
            parent_tags = _format_each(parent_rule.tags, parent_values) + (
                list(parent_rule.tags_of(parent)) if parent_rule.tags_of else [])
            scoped = [(f"{rule.parent_tag_scope}:{t}", t) for t in parent_tags]
            stale.tags.update(t for t, _ in scoped)
    for room in rooms:
        stale.rooms.setdefault(room, set()).update(prefixes + [t for t in tags if visibility.hears(room, t)]
                                                   + [t for t, heard in scoped if visibility.hears(room, heard)])


def _parent_rows(changes: list[Change], parents: Callable[[str, set], dict] | None) -> dict[tuple[str, object], dict]:
    """(table, id) -> the row as it is now, for every parent a rooms_of_parent rule names: from this
    transaction's own snapshots (the last one is the row after it), else read by `parents`."""
    wanted: dict[str, set] = {}
    for change in changes:
        rule = INVALIDATION_MAP.get(change.table)
        for named in (rule.rooms_of_parent, rule.counts_as_parent) if rule and change.kind != "bulk" else ():
            if named:
                table, column = named
                wanted.setdefault(table, set()).update(r.get(column) for r in change.rows if r.get(column) is not None)
    found: dict[tuple[str, object], dict] = {}
    for change in changes:
        if change.table in wanted and change.kind != "bulk":
            for row in change.rows:
                if row.get("id") in wanted[change.table]:
                    found[(change.table, row["id"])] = row
    for table, ids in wanted.items():
        missing = {i for i in ids if (table, i) not in found}
        if missing and parents is not None:
            for ident, row in parents(table, missing).items():
                found[(table, ident)] = row
    return found


def _read_parents(session: Session) -> Callable[[str, set], dict]:
    """Rows by id, read on a connection of their own: the committed session can't run SQL."""
    def read(table: str, ids: set) -> dict:
        model_table = _TABLES[table]
        with session.get_bind().connect() as connection:
            return {r["id"]: dict(r) for r in connection.execute(
                select(*model_table.columns).where(model_table.c.id.in_(sorted(ids)))).mappings()}
    return read


def _tables() -> dict:
    from .extensions import db

    return db.metadata.tables


class _LazyTables(dict):
    def __missing__(self, key):
        return _tables()[key]


_TABLES = _LazyTables()


def _changed_columns(changes: list[Change]) -> dict[tuple[str, object], set[str]]:
    """(table, id) -> the columns whose value differs between the row's snapshots (as it was
    and as it is) in this transaction; only for tables whose rule watches a session column."""
    snapshots: dict[tuple[str, object], list[dict]] = {}
    for change in changes:
        rule = INVALIDATION_MAP.get(change.table)
        if rule and rule.session_column and change.kind == "update":
            for row in change.rows:
                snapshots.setdefault((change.table, row.get("id")), []).append(row)
    return {key: {column for column in rows[0] if any(r.get(column) != rows[0][column] for r in rows)}
            for key, rows in snapshots.items()}


def _format_each(templates: Iterable[str], values: dict) -> list[str]:
    out = []
    for template in templates:
        try:
            out.append(template.format(**values))
        except KeyError:
            continue  # a snapshot without that column (e.g. a partial bulk UPDATE)
    return out


def apply(stale: StaleAfterCommit) -> None:
    """Invalidate first, then tell the browsers: a refetch prompted by the event is fresh."""
    if stale.everything:
        smart_cache.clear()
        push.publish({"agents": {"*"}})
    else:
        for prefix in sorted(stale.prefixes):
            smart_cache.invalidate(prefix + "*")
        for tag in sorted(stale.tags):
            smart_cache.invalidate_tag(tag)
        push.publish(stale.rooms)
    # After the invalidation, so a browser that reconnects at once is already signed out.
    push.end_sessions(stale.ended_sessions)


def has_pending_writes(session: Session) -> bool:
    """Inside a transaction that changed rows: reads must neither use nor fill the cache."""
    registry = getattr(session, "registry", None)  # a scoped session (db.session)
    if registry is not None and not registry.has():
        return False  # no session in this scope yet (a cache hit needs none): nothing written
    return bool(session.info.get(WROTE) or session.new or session.dirty or session.deleted)


# -- collecting changes -------------------------------------------------------------------
def _snapshot(obj, before: bool) -> dict:
    """Column values of an ORM object, as committed (before) or as flushed (after)."""
    state = inspect(obj)
    row = {}
    for attr in state.mapper.column_attrs:
        hist = state.attrs[attr.key].history
        if before and hist.deleted:
            row[attr.key] = hist.deleted[0]
        elif hist.added:
            row[attr.key] = hist.added[0]
        else:
            row[attr.key] = hist.unchanged[0] if hist.unchanged else getattr(obj, attr.key, None)
    return row


def _record(session: Session, change: Change) -> None:
    session.info.setdefault(CHANGES, []).append(change)
    session.info[WROTE] = True


def _before_flush(session: Session, _context, _instances) -> None:
    with session.no_autoflush:
        _collect_before(session)


def _collect_before(session: Session) -> None:
    for kind, objects in (("insert", session.new), ("update", session.dirty), ("delete", session.deleted)):
        for obj in objects:
            if kind == "update" and not session.is_modified(obj):
                continue
            table = obj.__table__.name
            rows = [_snapshot(obj, before=True)] if kind != "insert" else []
            _record(session, Change(table, kind, rows))
            if kind == "update" and table == "users" and _departments_changed(obj):
                _record(session, Change("user_departments", "update", [{"user_id": obj.id}]))
            if kind != "delete":
                session.info.setdefault("chat.after_flush", []).append((table, kind, obj))


def _departments_changed(user) -> bool:
    return bool(inspect(user).attrs.departments.history.has_changes())


def _after_flush(session: Session, _context) -> None:
    # Snapshots after the flush carry generated ids and the new column values.
    for table, kind, obj in session.info.pop("chat.after_flush", []):
        _record(session, Change(table, kind, [_snapshot(obj, before=False)]))


def _do_orm_execute(state) -> object | None:
    """Bulk INSERT/UPDATE/DELETE statements (the domain's conditional updates, the seed)."""
    if not (state.is_update or state.is_delete or state.is_insert):
        return None
    session = state.session
    session.info[WROTE] = True
    table = state.statement.table.name
    if table not in INVALIDATION_MAP:
        return None
    if state.is_insert:
        _record(session, Change(table, "bulk"))
        return None
    model = state.bind_mapper.class_ if state.bind_mapper else None
    where = state.statement.whereclause
    if model is None or where is None:
        _record(session, Change(table, "bulk"))
        return None
    # Rows as they are before the statement, then the same rows after it: both can be stale.
    columns = [c for c in model.__table__.columns]
    before = [dict(r._mapping) for r in session.execute(select(*columns).where(where))]
    result = state.invoke_statement()
    if before and getattr(result, "rowcount", 1) != 0:
        ids = [r["id"] for r in before if "id" in r]
        after = [dict(r._mapping) for r in session.execute(
            select(*columns).where(model.__table__.c.id.in_(ids)))] if ids else []
        _record(session, Change(table, "update", before + after))
    return result


def _after_commit(session: Session) -> None:
    changes = session.info.pop(CHANGES, [])
    session.info.pop(WROTE, None)
    if changes:
        apply(stale_after(changes, _read_parents(session)))


def _after_rollback(session: Session) -> None:
    session.info.pop(CHANGES, None)
    session.info.pop(WROTE, None)
    session.info.pop("chat.after_flush", None)


def init_app(_app) -> None:
    """Listen on every session (idempotent: listeners are registered once per process)."""
    if not event.contains(Session, "after_commit", _after_commit):
        event.listen(Session, "before_flush", _before_flush)
        event.listen(Session, "after_flush", _after_flush)
        event.listen(Session, "do_orm_execute", _do_orm_execute)
        event.listen(Session, "after_commit", _after_commit)
        event.listen(Session, "after_soft_rollback", lambda s, _t: _after_rollback(s))
