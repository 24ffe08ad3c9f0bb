"""A Pending list is served as the merge of its queues' lists (fragments._list): each
department's pending queue, and the one of conversations without a department, cached on its
own and shared by everyone who sees it. The merge must be exactly what one query over the
viewer's whole Pending tab returns (queries.list_conversations): the same rows in the same
order, the same next cursor, at every page count and department filter, for every viewer, and
again after every kind of change, served from the cache.

Pages of 2 rows, so that merging cuts lists short; rows written in the same second, and some
at the same instant, so that the order's ties matter.
"""
from datetime import timedelta

import pytest
from sqlalchemy import select

from chat import domain, fragments, queries
from chat.extensions import db
from chat.models import PENDING, Conversation, Department, Tag, User, Viewer, utcnow
from tests.conftest import app_with_tables, make_config, make_conversation

EMAILS = ("admin@example.com", "ana@example.com", "bruno@example.com", "carla@example.com")


@pytest.fixture
def app(database_url, cache_config):
    yield from app_with_tables(make_config(database_url, PAGE_SIZE=2, **cache_config))


@pytest.fixture
def queues(app, world):
    """Nine more pending conversations over Support, Sales, Billing and none, several written
    at one instant."""
    with app.app_context():
        departments = {d.id: d for d in db.session.scalars(select(Department))}
        now = utcnow()
        for n in range(9):
            department = [departments[world.support], departments[world.sales], departments[world.billing], None][n % 4]
            conversation = make_conversation(f"+55119800000{n:02d}", f"Queued {n}", PENDING, department)
            conversation.last_message_at = now - timedelta(seconds=n // 3)  # three at each instant
        db.session.commit()
    return world


def viewer(email: str) -> Viewer:
    return Viewer.of(db.session.scalar(select(User).where(User.email == email)))


def assert_merged_is_one_query(app, world, cached: bool) -> None:
    with app.app_context():
        for email in EMAILS:
            who = viewer(email)
            for department in (None, world.support, world.billing):
                for pages in (1, 2, 3, 10):
                    args = fragments.list_args("pending", department, pages=pages)
                    merged = fragments.CONVERSATION_LIST.read(who, args) if cached else fragments._list(who, args)
                    truth = queries.list_conversations(who, "pending", department, pages=pages)
                    assert merged == truth, (email, department, pages)
            db.session.remove()


def test_the_merge_of_the_queues_is_the_one_query(app, queues):
    assert_merged_is_one_query(app, queues, cached=False)
    with app.app_context():
        every = queries.list_conversations(viewer("admin@example.com"), "pending", pages=10)
    assert len(every["items"]) == 13 and every["next_cursor"] is None  # the world's four and nine more
    with app.app_context():
        two = queries.list_conversations(viewer("admin@example.com"), "pending")
    assert len(two["items"]) == 2 and two["next_cursor"]  # and a next page


def _on_pending(world):
    return domain.receive_inbound("+551100000003", "billing again")  # Bill Billing's pending one


def _reply(world):
    domain.accept_conversation(world.pending_sales, db.session.get(User, world.ana))
    return domain.send_reply(world.pending_sales, db.session.get(User, world.ana), "on it")


def _label(world):
    db.session.add(Tag(name="vip", color="#9333ea"))
    db.session.commit()
    domain.add_label(world.pending_billing, db.session.get(User, world.admin), "vip")


def _rename_billing(world):
    db.session.get(Department, world.billing).name = "Invoices"
    db.session.commit()


def _move_to_support(world):
    db.session.get(Conversation, world.pending_billing).department_id = world.support
    db.session.commit()


CHANGES = {
    "a message in a pending conversation": _on_pending,
    "a new contact's conversation (no department)": lambda w: domain.receive_inbound("+5511977770000", "hello"),
    "a conversation accepted": lambda w: domain.accept_conversation(w.pending_support, db.session.get(User, w.bruno)),
    "a closed conversation reopened": lambda w: domain.receive_inbound("+551100000007", "it broke again"),
    "a reply": _reply,
    "a label": _label,
    "a department renamed": _rename_billing,
    "a conversation moved to another department": _move_to_support,
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_the_cached_merge_stays_the_one_query_after_every_change(app, queues, change):
    assert_merged_is_one_query(app, queues, cached=True)  # every entry filled
    with app.app_context():
        CHANGES[change](queues)
        db.session.remove()
    assert_merged_is_one_query(app, queues, cached=True)


def test_a_message_in_one_queue_refetches_that_queue_only(app, queues, monkeypatch):
    with app.app_context():
        for email in EMAILS:
            fragments.conversation_list(viewer(email), "pending")
        _on_pending(queues)
        db.session.remove()
    fetched = []
    real = queries.pending_queue
    monkeypatch.setattr(queries, "pending_queue",
                        lambda department_id, pages=1: fetched.append(department_id) or real(department_id, pages))
    with app.app_context():
        for email in EMAILS:
            fragments.conversation_list(viewer(email), "pending")
    # Billing's queue, once, for the admin and Carla; Ana's and Bruno's lists were still cached.
    assert fetched == [queues.billing], fetched



def test_a_list_refilled_between_a_commits_tag_bumps_is_not_stale(app, queues, monkeypatch):
    """A commit's tags are bumped one at a time (convs:all:pending before convs:dept:<id>). An
    admin's Pending list refilled between the two reads the queue's entry while it is still
    valid and old; it must not stay cached once the last bump is done."""
    from chat.cache import smart_cache

    with app.app_context():
        admin = viewer("admin@example.com")
        fragments.conversation_list(admin, "pending")  # the list and every queue's entry filled
        db.session.remove()
    bump = smart_cache.invalidate_tag

    def bump_then_read(tag):
        bump(tag)
        if tag == "convs:all:pending":  # the admin's list is stale; Billing's queue not yet
            with app.app_context():
                fragments.conversation_list(viewer("admin@example.com"), "pending")
                db.session.remove()

    monkeypatch.setattr(smart_cache, "invalidate_tag", bump_then_read)
    with app.app_context():
        domain.receive_inbound("+551100000003", "billing, again")  # Bill Billing's pending one
        db.session.remove()
    monkeypatch.undo()
    with app.app_context():
        listed = fragments.conversation_list(viewer("admin@example.com"), "pending")["items"]
    seen = {item["id"]: item["last_message"] for item in listed}
    assert seen.get(queues.pending_billing) == "billing, again", seen
