"""Message search: what the search box finds in what was written, on SQLite and PostgreSQL.

The conversation list's search (queries.list_conversations) asks this module three things:

- `conversation_matches(q)`: WHERE clauses, OR'ed with the contact's name and phone, saying a
  conversation has a message (customer's, reply or private note) with every word typed, the last
  one as a prefix ("orde" finds "order"), or, when `q` looks like a phone number, that the
  contact's phone has its digits (`+55 (61) 9123-4567` finds `+556191234567`);
- `snippets(q, conversation_ids)`: the newest matching message's excerpt for each, as HTML:
  the message's text escaped, only the matching words in `<mark>`;
- `list_tags(tags, q)`: a search list's cache tags. What a new message makes stale is scoped
  (invalidation.Rule.parent_tag_scope): a note touches no conversation row, so a search list
  must hear new messages where a plain list need not.

The index, one per dialect, with `create_index(connection)` / `drop_index(connection)` (the
migration calls them; they also ride on the messages table's CREATE and DROP, so `db.create_all()`
builds them):

- SQLite: an FTS5 table `messages_fts` over messages.body (external content: the text is read
  from messages, not stored twice; tokenizer `unicode61 remove_diacritics 2`, so "acao" finds
  "ação"), kept in step by triggers on insert, delete and an update of the body. A bulk insert
  (the seed) may index its rows in one statement instead: `bulk_insert`.
- PostgreSQL: a generated column `messages.search_vector` (tsvector) with a GIN index, through the
  text-search configuration `chat_search`: a copy of SEARCH_LANGUAGE ('simple' by default) with
  the `unaccent` extension in front when the server has it. Queries name `chat_search` as well,
  so the index and the queries always agree; SEARCH_LANGUAGE is read when the index is built.

None of these objects is in the models' metadata: `include_name` keeps Alembic's comparison
(autogenerate, tests/test_migrations.py) from reporting them.

A migration that rebuilds the messages table on SQLite (batch mode: copy, drop, rename) drops
its triggers: it must call `create_index` again afterwards (every statement is IF NOT EXISTS).
"""
from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from flask import current_app, has_app_context
from markupsafe import escape
from sqlalchemy import Connection, event, exists, func, literal_column, select, text
from sqlalchemy.sql import ColumnElement, column, table

from .extensions import db
from .models import Contact, Conversation, Message

log = logging.getLogger(__name__)

DEFAULT_LANGUAGE = "simple"
MAX_WORDS = 8  # words of a query used (the box takes 100 characters; more words only cost)
MIN_PREFIX = 2  # a last word this long or longer also matches as a prefix
# A query made only of these, with this many digits, is compared with phones digit for digit.
PHONE_LIKE = re.compile(r"[\d\s+\-().]+")
PHONE_MIN_DIGITS = 6
WORD = re.compile(r"[^\W_]+")  # letters and digits: what both tokenizers index
# Highlight markers: control characters never stored (domain.reject_control_characters refuses
# them), so they cannot come from a message; only these become <mark>.
START, STOP = "\x02", "\x03"
SNIPPET_WORDS = 16  # words of a snippet, from a few before the first match
SNIPPET_BEFORE = 4
ELLIPSIS = "…"

# The scope of the tags a new message makes stale: "<scope>:<a tag of its conversation>".
TAG_SCOPE = "search"

FTS = "messages_fts"
SQLITE_TABLES = frozenset({FTS, f"{FTS}_data", f"{FTS}_idx", f"{FTS}_docsize", f"{FTS}_config"})
SQLITE_TRIGGERS = ("messages_fts_insert", "messages_fts_delete", "messages_fts_update")
PG_CONFIG = "chat_search"
PG_COLUMN = "search_vector"
PG_INDEX = "ix_messages_search"
# Token types of PostgreSQL's default parser that may hold accented letters: unaccent goes first.
PG_ACCENTED_TOKENS = ("word", "hword", "hword_part", "numword", "numhword", "hword_numpart")

_fts = table(FTS, column("rowid"), column("body"))
_search_vector = literal_column(f"{Message.__tablename__}.{PG_COLUMN}")
_pg_config = literal_column(f"'{PG_CONFIG}'::regconfig")
# The whole text, every match marked (HighlightAll also keeps what looks like HTML tags, which
# a headline would drop): snippet_html cuts the excerpt, the same way on both databases.
_headline_options = f'StartSel="{START}", StopSel="{STOP}", HighlightAll=true'


# -- what was typed ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Terms:
    words: tuple[str, ...]  # lower case, letters and digits only
    prefix: bool  # the last word also matches longer words
    phone_digits: str | None  # the query is a phone number: its digits


def terms(q: str) -> Terms:
    """What a query asks for. Words are letters and digits only, so nothing typed is syntax in
    either database's query language."""
    q = (q or "").strip()
    words = tuple(WORD.findall(q.lower()))[:MAX_WORDS]
    digits = re.sub(r"\D", "", q) if PHONE_LIKE.fullmatch(q) else ""
    return Terms(words, bool(words) and len(words[-1]) >= MIN_PREFIX,
                 digits if len(digits) >= PHONE_MIN_DIGITS else None)


def fts5_query(t: Terms) -> str:
    """SQLite FTS5: every word (implicit AND), each a quoted string, the last one a prefix."""
    quoted = [f'"{w}"' for w in t.words]
    if t.prefix:
        quoted[-1] += "*"
    return " ".join(quoted)


def tsquery(t: Terms) -> str:
    """PostgreSQL to_tsquery: every word (&), the last one a prefix (:*)."""
    words = list(t.words)
    if t.prefix:
        words[-1] += ":*"
    return " & ".join(words)


def digits_only(value: ColumnElement[str]) -> ColumnElement[str]:
    """A phone without the characters people write between its digits (domain.clean_phone's, and +)."""
    for character in (" ", "-", "(", ")", ".", "+"):
        value = func.replace(value, character, "")
    return value


# -- the queries -------------------------------------------------------------------------------
def _dialect() -> str:
    return db.session.get_bind().dialect.name


def _message_matches(t: Terms, dialect: str) -> ColumnElement[bool]:
    """PostgreSQL: the `messages` row has every word; SQLite: the `messages_fts` row has."""
    if dialect == "postgresql":
        return _search_vector.op("@@")(func.to_tsquery(_pg_config, tsquery(t)))
    return _fts.c.body.match(fts5_query(t))


def _is_match(t: Terms, dialect: str) -> ColumnElement[bool]:
    """The `messages` row matches `t`. On SQLite the FTS table's matches are read once into a list,
    and `+ 0` keeps the planner from probing messages by id with each of them when another index
    finds far fewer rows (a page's conversations)."""
    if dialect == "postgresql":
        return _message_matches(t, dialect)
    return (Message.id + 0).in_(select(_fts.c.rowid).where(_message_matches(t, dialect)).correlate(None))


def conversation_matches(q: str) -> list[ColumnElement[bool]]:
    """What, beside the contact's name and phone as typed (queries.contact_matches), makes a
    conversation match `q`; the caller joins Contact. Empty when `q` has no word and no phone.

    SQLite reads the matching messages' conversations once (cost: the matches), then walks the
    list newest first as without a search. PostgreSQL gets EXISTS: it plans both that and a hashed
    set of the matches and picks one (an IN would be planned to find one row fast: a scan of every
    message instead of the GIN index)."""
    t = terms(q)
    found = []
    if t.words:
        dialect = _dialect()
        if dialect == "postgresql":
            found.append(exists().where(Message.conversation_id == Conversation.id, _message_matches(t, dialect)))
        else:
            found.append(Conversation.id.in_(
                select(Message.conversation_id).select_from(_fts)
                .join(Message, Message.id == _fts.c.rowid).where(_message_matches(t, dialect))))
    if t.phone_digits:
        found.append(digits_only(Contact.phone).contains(t.phone_digits, autoescape=True))
    return found


def snippets(q: str, conversation_ids: list[int]) -> dict[int, str]:
    """conversation id -> an excerpt of its newest message matching `q`, as safe HTML; one query.
    Conversations found by name or phone alone have none."""
    t = terms(q)
    if not t.words or not conversation_ids:
        return {}
    dialect = _dialect()
    newest = (select(func.max(Message.id))
              .where(Message.conversation_id.in_(conversation_ids), _is_match(t, dialect))
              .group_by(Message.conversation_id).correlate(None))
    if dialect == "postgresql":
        marked = func.ts_headline(_pg_config, Message.body, func.to_tsquery(_pg_config, tsquery(t)),
                                  _headline_options)
        stmt = select(Message.conversation_id, marked).where(Message.id.in_(newest))
    else:
        # highlight() reads the match of this very statement: the FTS table and MATCH belong here
        # too. `+ 0` again: FTS5 looking up each of a page's rowids in a prefix query's matches
        # costs more than filtering its matches by them.
        marked = func.highlight(literal_column(FTS), 0, START, STOP)
        stmt = (select(Message.conversation_id, marked)
                .select_from(_fts).join(Message, Message.id == _fts.c.rowid)
                .where(_message_matches(t, dialect), (_fts.c.rowid + 0).in_(newest)))
    return {conversation_id: snippet_html(text_) for conversation_id, text_ in db.session.execute(stmt)}


def snippet_html(marked: str) -> str:
    """A message's text with START/STOP around its matches -> the snippet's HTML: SNIPPET_WORDS
    words from a few before the first match, whitespace folded, an ellipsis where the message goes
    on; the text escaped, and only the marks become <mark>."""
    words = marked.split()
    first = next((i for i, word in enumerate(words) if START in word), 0)
    end = min(len(words), max(first - SNIPPET_BEFORE, 0) + SNIPPET_WORDS)
    begin = max(end - SNIPPET_WORDS, 0)
    cut = " ".join(words[:begin])
    opened = cut.rfind(START) > cut.rfind(STOP)  # a match that began before the excerpt
    excerpt = (START if opened else "") + " ".join(words[begin:end])
    out, open_ = [ELLIPSIS if begin else ""], False
    for part in re.split(f"([{START}{STOP}])", excerpt):
        if part == START:
            if not open_:
                out.append("<mark>")
            open_ = True
        elif part == STOP:
            if open_:
                out.append("</mark>")
            open_ = False
        else:
            out.append(str(escape(part)))
    if open_:
        out.append("</mark>")
    out.append(ELLIPSIS if end < len(words) else "")
    return "".join(out)


def list_tags(tags: tuple[str, ...], q: str) -> tuple[str, ...]:
    """A conversation list's cache tags: with a search, also each of its scope's tags under
    TAG_SCOPE, which a new message in a conversation of that scope makes stale."""
    if not (q or "").strip():
        return tags
    return tags + tuple(f"{TAG_SCOPE}:{tag}" for tag in tags if tag.startswith("convs:"))


# -- the index ---------------------------------------------------------------------------------
def language() -> str:
    """SEARCH_LANGUAGE: a PostgreSQL text-search configuration ('simple', 'english', 'portuguese',
    ...); on SQLite 'english' adds the porter stemmer, anything else indexes words as written."""
    name = current_app.config.get("SEARCH_LANGUAGE") if has_app_context() else None
    name = (name or DEFAULT_LANGUAGE).strip().lower()
    if not re.fullmatch(r"[a-z_]+", name):
        raise ValueError(f"SEARCH_LANGUAGE {name!r}: the name of a text search configuration, e.g. simple")
    return name


def sqlite_tokenizer(name: str) -> str:
    return ("porter " if name == "english" else "") + "unicode61 remove_diacritics 2"


def create_index(connection: Connection) -> None:
    """Build the search index of this database and fill it from the messages already there."""
    if connection.dialect.name == "postgresql":
        _create_postgresql(connection, language())
    elif connection.dialect.name == "sqlite":
        _create_sqlite(connection, language())


def drop_index(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text(f"DROP INDEX IF EXISTS {PG_INDEX}"))
        connection.execute(text(f"ALTER TABLE messages DROP COLUMN IF EXISTS {PG_COLUMN}"))
        connection.execute(text(f"DROP TEXT SEARCH CONFIGURATION IF EXISTS {PG_CONFIG}"))
        # unaccent stays: other things may use the extension.
    elif connection.dialect.name == "sqlite":
        for trigger in SQLITE_TRIGGERS:
            connection.execute(text(f"DROP TRIGGER IF EXISTS {trigger}"))
        connection.execute(text(f"DROP TABLE IF EXISTS {FTS}"))


def _create_sqlite(connection: Connection, name: str) -> None:
    # prefix='2 3': prefix queries of 2 and 3 characters read an index of their own.
    connection.execute(text(
        f"CREATE VIRTUAL TABLE IF NOT EXISTS {FTS} USING fts5(body, content='messages', content_rowid='id', "
        f"tokenize='{sqlite_tokenizer(name)}', prefix='2 3')"))
    _create_insert_trigger(connection)
    connection.execute(text(
        f"CREATE TRIGGER IF NOT EXISTS messages_fts_delete AFTER DELETE ON messages BEGIN "
        f"INSERT INTO {FTS}({FTS}, rowid, body) VALUES ('delete', old.id, old.body); END"))
    connection.execute(text(
        f"CREATE TRIGGER IF NOT EXISTS messages_fts_update AFTER UPDATE OF body ON messages BEGIN "
        f"INSERT INTO {FTS}({FTS}, rowid, body) VALUES ('delete', old.id, old.body); "
        f"INSERT INTO {FTS}(rowid, body) VALUES (new.id, new.body); END"))
    connection.execute(text(f"INSERT INTO {FTS}({FTS}) VALUES ('rebuild')"))  # the rows already there


def _create_insert_trigger(connection: Connection) -> None:
    connection.execute(text(
        f"CREATE TRIGGER IF NOT EXISTS messages_fts_insert AFTER INSERT ON messages BEGIN "
        f"INSERT INTO {FTS}(rowid, body) VALUES (new.id, new.body); END"))


@contextmanager
def bulk_insert(connection: Connection) -> Iterator[None]:
    """Around many messages inserted at once in one transaction (the seed): SQLite indexes them
    in one statement at the end instead of row by row in its trigger (5x less time for 200,000);
    the trigger is gone only inside this transaction, which holds SQLite's one write lock, so no
    other writer's message can miss it. PostgreSQL computes its column anyway: it only analyzes
    the table afterwards, so the planner knows how common the words are."""
    dialect = connection.dialect.name
    if dialect == "sqlite" and not connection.execute(text("SELECT 1 FROM sqlite_master WHERE name = :name"),
                                                      {"name": FTS}).first():
        dialect = "none"  # a database without the index (not upgraded yet): nothing to keep in step
    if dialect != "sqlite":
        yield
        if dialect == "postgresql":
            connection.execute(text("ANALYZE messages"))
        return
    # A failure inside rolls the transaction back, the DROP with it (SQLite's DDL is transactional).
    before = connection.execute(select(func.max(Message.id))).scalar() or 0
    connection.execute(text("DROP TRIGGER IF EXISTS messages_fts_insert"))
    yield
    connection.execute(text(f"INSERT INTO {FTS}(rowid, body) SELECT id, body FROM messages WHERE id > :before"),
                       {"before": before})
    _create_insert_trigger(connection)


def _create_postgresql(connection: Connection, name: str) -> None:
    if not connection.execute(text("SELECT 1 FROM pg_ts_config WHERE cfgname = :name"), {"name": name}).first():
        raise ValueError(f"SEARCH_LANGUAGE {name!r} is not a text search configuration of this PostgreSQL "
                         "(SELECT cfgname FROM pg_ts_config lists them)")
    exists = connection.execute(text("SELECT 1 FROM pg_ts_config WHERE cfgname = :name AND "
                                     "pg_ts_config_is_visible(oid)"), {"name": PG_CONFIG}).first()
    if not exists:
        connection.execute(text(f'CREATE TEXT SEARCH CONFIGURATION {PG_CONFIG} (COPY = "{name}")'))
        unaccent = _unaccent_schema(connection)
        if unaccent:
            _unaccent_first(connection, unaccent)
        else:
            log.warning("search: the unaccent extension is not available; accents must be typed as written")
    # A stored generated column: computed for every row already there (the backfill) and on
    # every insert, bulk ones included; to_tsvector(regconfig, text) is immutable.
    connection.execute(text(
        f"ALTER TABLE messages ADD COLUMN IF NOT EXISTS {PG_COLUMN} tsvector "
        f"GENERATED ALWAYS AS (to_tsvector('{PG_CONFIG}'::regconfig, body)) STORED"))
    connection.execute(text(f"CREATE INDEX IF NOT EXISTS {PG_INDEX} ON messages USING gin ({PG_COLUMN})"))


def _unaccent_schema(connection: Connection) -> str | None:
    """The schema of the unaccent extension, created if this role may (it is a trusted extension
    since PostgreSQL 13: a database owner may), or None."""
    try:
        with connection.begin_nested():
            connection.execute(text("CREATE EXTENSION IF NOT EXISTS unaccent"))
    except Exception as exc:  # noqa: BLE001 - not installed, or not allowed: search works without it
        log.warning("search: CREATE EXTENSION unaccent failed: %s", str(exc).splitlines()[0])
    return connection.execute(text(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = 'unaccent'")).scalar()


def _unaccent_first(connection: Connection, schema: str) -> None:
    """Put unaccent in front of the dictionaries of every token type that may hold accents."""
    mapping = connection.execute(text(
        "SELECT t.alias, array_agg(d.dictname::text ORDER BY m.mapseqno) "
        "FROM pg_ts_config_map m JOIN pg_ts_config c ON c.oid = m.mapcfg "
        "JOIN pg_ts_dict d ON d.oid = m.mapdict "
        "JOIN ts_token_type(c.cfgparser) t ON t.tokid = m.maptokentype "
        "WHERE c.oid = CAST(:config AS regconfig) AND t.alias = ANY(:aliases) GROUP BY t.alias"),
        {"config": PG_CONFIG, "aliases": list(PG_ACCENTED_TOKENS)}).all()
    for alias, dictionaries in mapping:
        chain = ", ".join([f'"{schema}".unaccent'] + [f'"{d}"' for d in dictionaries])
        connection.execute(text(f"ALTER TEXT SEARCH CONFIGURATION {PG_CONFIG} ALTER MAPPING FOR {alias} WITH {chain}"))


def own_tables(dialect: str) -> set[str]:
    """The tables the index adds beside the models' (SQLite's FTS5 table and its shadow tables)."""
    return set(SQLITE_TABLES) if dialect == "sqlite" else set()


def include_name(name: str | None, type_: str, parent_names: dict) -> bool:
    """Alembic's include_name: the search index's objects are this module's, not the models'."""
    if type_ == "table":
        return name not in SQLITE_TABLES
    if type_ == "column":
        return not (parent_names.get("table_name") == Message.__tablename__ and name == PG_COLUMN)
    if type_ == "index":
        return name != PG_INDEX
    return True


def _after_create(target, connection: Connection, **_kw) -> None:
    create_index(connection)


def _before_drop(target, connection: Connection, **_kw) -> None:
    drop_index(connection)


# The index rides on the messages table (db.create_all, db.drop_all). Imported by queries, so by
# every app; registered once per process.
if not event.contains(Message.__table__, "after_create", _after_create):
    event.listen(Message.__table__, "after_create", _after_create)
    event.listen(Message.__table__, "before_drop", _before_drop)
