"""Demo data: fixed logins plus as many contacts, conversations and messages as asked for.

Rows are inserted in large batches through SQLAlchemy Core, so 10,000 conversations with
200,000 messages load in seconds rather than minutes.
"""
from __future__ import annotations

import random
from datetime import timedelta
from typing import Callable

from sqlalchemy import func, insert, select
from werkzeug.security import generate_password_hash

from . import search
from .extensions import db
from .models import (
    ACTIVE,
    CLOSED,
    PENDING,
    Contact,
    Conversation,
    Department,
    Message,
    QuickReply,
    Tag,
    User,
    utcnow,
)

DEMO_PASSWORD = "demo-pass"
DEMO_USERS = (
    ("admin@example.com", "Alex Admin", "admin", ()),
    ("ana@example.com", "Ana Costa", "agent", ("Support", "Sales")),
    ("bruno@example.com", "Bruno Lima", "agent", ("Support",)),
)
DEPARTMENTS = (
    ("Support", "#16a34a"), ("Sales", "#2563eb"), ("Billing", "#d97706"),
    ("Onboarding", "#9333ea"), ("Returns", "#dc2626"), ("Partners", "#0891b2"),
)
FIRST = ("Maria", "João", "Lucas", "Sofia", "Pedro", "Julia", "Rafael", "Camila", "Mateus", "Laura",
         "Gabriel", "Beatriz", "Tiago", "Helena", "Diego", "Marta", "Paulo", "Clara", "Igor", "Lívia")
LAST = ("Silva", "Santos", "Oliveira", "Souza", "Pereira", "Ferreira", "Almeida", "Ribeiro",
        "Carvalho", "Gomes", "Martins", "Rocha", "Barbosa", "Teixeira", "Moreira")
INBOUND = ("Hi, I need help with my order", "Is anyone there?", "My invoice looks wrong",
           "Can I change my delivery address?", "The app keeps logging me out",
           "Thanks, that worked!", "When will my refund arrive?", "I'd like to upgrade my plan",
           "Do you ship to Portugal?", "The tracking link does not open",
           "Can you call me back tomorrow?", "I was charged twice this month")
OUTBOUND = ("Hello! Let me check that for you.", "Could you send me your order number?",
            "I've fixed it on our side, please try again.", "Your refund was issued today.",
            "Happy to help. Anything else?", "I'm transferring you to billing.",
            "The new address is saved.", "Sorry for the wait, looking into it now.")
QUICK_REPLIES = (("hello", "Hello! Thanks for reaching out. How can I help you today?"),
                 ("order", "Could you send me your order number, please?"),
                 ("bye", "Glad I could help. Have a great day!"))
TAGS = (("urgent", "#dc2626"), ("vip", "#9333ea"), ("bug", "#ea580c"))
BATCH = 5000


def seed(
    agents: int = 6,
    contacts: int | None = None,
    conversations: int = 300,
    messages: int = 3000,
    departments: int = 3,
    progress: Callable[[int], None] = lambda n: None,
    rng: random.Random | None = None,
) -> dict:
    """Create the demo logins (idempotently) and add the requested volume of data."""
    rng = rng or random.Random(1234)
    contacts = max(contacts if contacts is not None else conversations, conversations)
    depts = _ensure_departments(max(departments, 2))
    password_hash = generate_password_hash(DEMO_PASSWORD)  # one hash for all demo users: fast
    users = _ensure_users(agents, depts, password_hash)
    _ensure_slow_data()
    db.session.commit()

    base = db.session.scalar(select(func.count()).select_from(Contact)) or 0
    now = utcnow()
    contact_rows = [
        {
            "name": f"{rng.choice(FIRST)} {rng.choice(LAST)}",
            "phone": f"+5511{9 * 10**8 + base + i:09d}",
            "avatar_url": None,
            "created_at": now - timedelta(days=30),
        }
        for i in range(contacts)
    ]
    _insert(Contact, contact_rows, progress)
    contact_ids = list(db.session.scalars(
        select(Contact.id).order_by(Contact.id.desc()).limit(contacts)))[::-1]

    agent_ids = [u.id for u in users if u.role == "agent"] or [users[0].id]
    members = {d.id: [u.id for u in users if d in u.departments] for d in depts}
    plans = []
    per_conv = _spread(messages, conversations, rng)
    for index, contact_id in enumerate(contact_ids[:conversations]):
        dept = rng.choice(depts + [None]) if index % 7 else None
        status = (PENDING, ACTIVE, CLOSED)[index % 3] if index < 30 else rng.choices(
            (PENDING, ACTIVE, CLOSED), weights=(3, 3, 4))[0]
        owner = None
        if status != PENDING:
            pool = (members.get(dept.id) if dept else None) or agent_ids
            owner = pool[index % len(pool)] if index < 30 else rng.choice(pool)
        start = now - timedelta(minutes=rng.randint(10, 60 * 24 * 20))
        plans.append((contact_id, dept.id if dept else None, status, owner, start, per_conv[index]))

    conversation_rows, bodies = [], []
    for contact_id, dept_id, status, owner, start, count in plans:
        # A thread spans up to six hours but never past now: a seeded row dated in the future
        # would sit above every real message that arrives after seeding.
        span = min(3600 * 6, int((now - start).total_seconds()))
        stamps = sorted(start + timedelta(seconds=rng.randint(0, span)) for _ in range(count))
        thread = []
        for n, stamp in enumerate(stamps):
            from_me = n > 0 and status != PENDING and rng.random() < 0.45
            thread.append((rng.choice(OUTBOUND if from_me else INBOUND), from_me, stamp))
        if not thread:
            thread.append((rng.choice(INBOUND), False, start))
        trailing_inbound = 0
        for body, from_me, _ in reversed(thread):
            if from_me:
                break
            trailing_inbound += 1
        conversation_rows.append({
            "contact_id": contact_id, "department_id": dept_id, "status": status, "user_id": owner,
            "last_message_at": thread[-1][2], "last_message_body": thread[-1][0],
            "unread_count": 0 if status == CLOSED else trailing_inbound,
            "created_at": start,
        })
        bodies.append((owner, thread))
    _insert(Conversation, conversation_rows, progress)
    conversation_ids = list(db.session.scalars(
        select(Conversation.id).order_by(Conversation.id.desc()).limit(len(conversation_rows))))[::-1]

    message_rows = [
        {"conversation_id": cid, "body": body, "from_me": from_me,
         "user_id": owner if from_me else None, "created_at": stamp}
        for cid, (owner, thread) in zip(conversation_ids, bodies)
        for body, from_me, stamp in thread
    ]
    with search.bulk_insert(db.session.connection()):  # indexed for search at once, not row by row
        _insert(Message, message_rows, progress)
    db.session.commit()
    return {"contacts": len(contact_rows), "conversations": len(conversation_rows),
            "messages": len(message_rows), "agents": len(users)}


def total_rows(agents: int, contacts: int | None, conversations: int, messages: int) -> int:
    """How many rows seed() will report through `progress`: what a progress bar needs."""
    contact_rows = max(contacts if contacts is not None else conversations, conversations)
    message_rows = max(messages, conversations) if conversations else 0  # messages need a conversation
    return contact_rows + conversations + message_rows


def _spread(total: int, buckets: int, rng: random.Random) -> list[int]:
    """Split `total` messages over conversations, at least one each, unevenly like real life."""
    if buckets == 0:
        return []
    counts = [1] * buckets
    for _ in range(max(total - buckets, 0)):
        counts[min(int(rng.expovariate(1.0) * buckets / 3), buckets - 1)] += 1
    rng.shuffle(counts)
    return counts


def _insert(model, rows: list[dict], progress: Callable[[int], None]) -> None:
    for start in range(0, len(rows), BATCH):
        chunk = rows[start:start + BATCH]
        db.session.execute(insert(model), chunk)
        progress(len(chunk))


def _ensure_departments(count: int) -> list[Department]:
    wanted = DEPARTMENTS[:count] if count <= len(DEPARTMENTS) else DEPARTMENTS + tuple(
        (f"Team {n}", "#475569") for n in range(len(DEPARTMENTS) + 1, count + 1))
    existing = {d.name: d for d in db.session.scalars(select(Department))}
    for name, color in wanted:
        if name not in existing:
            existing[name] = Department(name=name, color=color)
            db.session.add(existing[name])
    db.session.flush()
    return [existing[name] for name, _ in wanted]


def _ensure_users(agents: int, depts: list[Department], password_hash: str) -> list[User]:
    by_name = {d.name: d for d in depts}
    existing = {u.email: u for u in db.session.scalars(select(User))}
    specs = list(DEMO_USERS) + [
        (f"agent{n}@example.com", f"{FIRST[n % len(FIRST)]} Agent{n}", "agent",
         (depts[n % len(depts)].name,))
        for n in range(1, max(agents - len(DEMO_USERS), 0) + 1)  # `agents` counts the demo logins
    ]
    users = []
    for email, name, role, dept_names in specs:
        user = existing.get(email)
        if user is None:
            user = User(email=email, name=name, role=role, password_hash=password_hash)
            user.departments = [by_name[d] for d in dept_names if d in by_name]
            db.session.add(user)
        users.append(user)
    db.session.flush()
    return users


def _ensure_slow_data() -> None:
    if not db.session.scalar(select(func.count()).select_from(QuickReply)):
        db.session.add_all(QuickReply(shortcut=s, body=b) for s, b in QUICK_REPLIES)
    if not db.session.scalar(select(func.count()).select_from(Tag)):
        db.session.add_all(Tag(name=n, color=c) for n, c in TAGS)

