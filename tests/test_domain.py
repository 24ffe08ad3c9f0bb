"""Domain functions: each changes rows and commits, and refuses what it must."""
import pytest
from sqlalchemy import func, select

from chat import domain
from chat.errors import Conflict, InvalidInput, NotFound
from chat.extensions import db
from chat.invalidation import CHANGES
from chat.models import ACTIVE, CLOSED, PENDING, Contact, Conversation, Message, User


def agent(email):
    return db.session.scalar(select(User).where(User.email == email))


def conv(cid):
    db.session.expire_all()
    return db.session.get(Conversation, cid)


def count(model):
    return db.session.scalar(select(func.count()).select_from(model))


def test_receive_inbound_creates_contact_conversation_and_message(app, world):
    with app.app_context():
        result = domain.receive_inbound("+55 (11) 91234-5678", "Hi there", name="New Person", external_id="x-1")
        assert result.created
        c = conv(result.conversation_id)
        assert (c.status, c.user_id, c.unread_count, c.last_message_body) == (PENDING, None, 1, "Hi there")
        assert c.contact.phone == "+5511912345678" and c.contact.name == "New Person"
        assert db.session.get(Message, result.message_id).body == "Hi there"


def test_receive_inbound_appends_to_open_conversation(app, world):
    with app.app_context():
        result = domain.receive_inbound("+551100000005", "Another question")
        assert result.conversation_id == world.active_ana
        c = conv(world.active_ana)
        assert (c.status, c.user_id, c.unread_count) == (ACTIVE, world.ana, 3)


def test_receive_inbound_reopens_closed_as_pending(app, world):
    with app.app_context():
        result = domain.receive_inbound("+551100000007", "I'm back")
        assert result.conversation_id == world.closed_ana
        c = conv(world.closed_ana)
        assert (c.status, c.user_id, c.unread_count) == (PENDING, None, 1)


def test_receive_inbound_is_idempotent_on_external_id(app, world):
    with app.app_context():
        first = domain.receive_inbound("+5511977776666", "once", external_id="ext-42")
        messages = count(Message)
        second = domain.receive_inbound("+5511977776666", "once", external_id="ext-42")
        assert not second.created
        assert (second.conversation_id, second.message_id) == (first.conversation_id, first.message_id)
        assert count(Message) == messages
        assert conv(first.conversation_id).unread_count == 1


def test_receive_inbound_updates_contact_name(app, world):
    with app.app_context():
        domain.receive_inbound("+551100000001", "hi", name="Paula P.")
        assert db.session.scalar(select(Contact.name).where(Contact.phone == "+551100000001")) == "Paula P."


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"phone": "+5511999", "body": ""}, "message body must not be empty"),
        ({"phone": "+5511999", "body": "   \n "}, "message body must not be empty"),
        ({"phone": "+5511999", "body": "x" * 4097}, "at most 4096 characters"),
        ({"phone": "+5511999", "body": None}, "message body must not be empty"),
        ({"phone": "12", "body": "hi"}, "phone must be 5 to 20 digits"),
        ({"phone": None, "body": "hi"}, "phone is required"),
        ({"phone": "abcdefg", "body": "hi"}, "phone must be 5 to 20 digits"),
        ({"phone": "+5511999", "body": "hi", "external_id": ""}, "external_id must be"),
        ({"phone": "+5511999", "body": "hi", "name": 5}, "name must be"),
    ],
)
def test_receive_inbound_rejects_bad_input_and_changes_nothing(app, world, kwargs, message):
    with app.app_context():
        before = (count(Contact), count(Conversation), count(Message))
        with pytest.raises(InvalidInput, match=message):
            domain.receive_inbound(**kwargs)
        assert (count(Contact), count(Conversation), count(Message)) == before


def test_body_of_exactly_the_limit_is_accepted(app, world):
    with app.app_context():
        assert domain.receive_inbound("+5511999", "x" * 4096).created


def test_accept_assigns_pending_to_agent(app, world):
    with app.app_context():
        domain.accept_conversation(world.pending_support, agent("bruno@example.com"))
        c = conv(world.pending_support)
        assert (c.status, c.user_id) == (ACTIVE, world.bruno)


def test_accept_twice_is_a_conflict(app, world):
    with app.app_context():
        domain.accept_conversation(world.pending_support, agent("bruno@example.com"))
        with pytest.raises(Conflict, match="no longer pending"):
            domain.accept_conversation(world.pending_support, agent("ana@example.com"))
        assert conv(world.pending_support).user_id == world.bruno


def test_admin_accepting_an_active_conversation_gets_conflict(app, world):
    with app.app_context():
        with pytest.raises(Conflict, match="no longer pending"):
            domain.accept_conversation(world.active_bruno, agent("admin@example.com"))
        assert conv(world.active_bruno).user_id == world.bruno


def test_accept_other_departments_pending_is_not_found(app, world):
    with app.app_context():
        with pytest.raises(NotFound):
            domain.accept_conversation(world.pending_billing, agent("ana@example.com"))
        assert conv(world.pending_billing).status == PENDING


def test_send_reply_stores_message_and_updates_conversation(app, world):
    with app.app_context():
        message, created = domain.send_reply(world.active_ana, agent("ana@example.com"), "  On it!  ")
        assert created and message.idempotency_key is None
        assert (message.body, message.from_me, message.user_id) == ("On it!", True, world.ana)
        assert conv(world.active_ana).last_message_body == "On it!"


@pytest.mark.parametrize(
    "which, email, error, message",
    [
        ("pending_support", "ana@example.com", Conflict, "accept the conversation before replying"),
        ("closed_ana", "ana@example.com", Conflict, "conversation is closed"),
        ("active_bruno", "ana@example.com", NotFound, "not found"),
        ("active_ana", "ana@example.com", InvalidInput, "must not be empty"),
    ],
)
def test_send_reply_refusals_change_nothing(app, world, which, email, error, message):
    with app.app_context():
        before = count(Message)
        body = "" if error is InvalidInput else "hello"
        with pytest.raises(error, match=message):
            domain.send_reply(getattr(world, which), agent(email), body)
        assert count(Message) == before


def test_admin_can_reply_to_anyones_active_conversation(app, world):
    with app.app_context():
        domain.send_reply(world.active_bruno, agent("admin@example.com"), "Admin here")
        assert conv(world.active_bruno).last_message_body == "Admin here"


def test_close_active(app, world):
    with app.app_context():
        domain.close_conversation(world.active_ana, agent("ana@example.com"))
        c = conv(world.active_ana)
        assert (c.status, c.unread_count, c.user_id) == (CLOSED, 0, world.ana)


def test_close_refuses_pending_and_foreign(app, world):
    with app.app_context():
        with pytest.raises(Conflict, match="only an active conversation"):
            domain.close_conversation(world.pending_support, agent("ana@example.com"))
        with pytest.raises(NotFound):
            domain.close_conversation(world.active_bruno, agent("ana@example.com"))
        assert conv(world.active_bruno).status == ACTIVE


def test_transfer_to_agent_keeps_it_active(app, world):
    with app.app_context():
        domain.transfer_conversation(world.active_ana, agent("ana@example.com"), to_user_id=world.bruno)
        c = conv(world.active_ana)
        assert (c.status, c.user_id) == (ACTIVE, world.bruno)


def test_transfer_to_department_puts_it_back_in_the_queue(app, world):
    with app.app_context():
        domain.transfer_conversation(world.active_ana, agent("ana@example.com"), to_department_id=world.billing)
        c = conv(world.active_ana)
        assert (c.status, c.user_id, c.department_id) == (PENDING, None, world.billing)


@pytest.mark.parametrize(
    "kwargs, message",
    [({}, "choose an agent or a department"), ({"to_user_id": 999}, "unknown agent"),
     ({"to_department_id": 999}, "unknown department")],
)
def test_transfer_bad_input(app, world, kwargs, message):
    with app.app_context():
        with pytest.raises(InvalidInput, match=message):
            domain.transfer_conversation(world.active_ana, agent("ana@example.com"), **kwargs)
        assert conv(world.active_ana).user_id == world.ana


def test_transfer_closed_is_a_conflict(app, world):
    with app.app_context():
        with pytest.raises(Conflict):
            domain.transfer_conversation(world.closed_ana, agent("ana@example.com"), to_user_id=world.bruno)


def test_mark_read_only_for_the_assigned_agent(app, world):
    with app.app_context():
        domain.mark_read(world.active_ana, agent("admin@example.com"))
        assert conv(world.active_ana).unread_count == 2
        domain.mark_read(world.active_ana, agent("ana@example.com"))
        assert conv(world.active_ana).unread_count == 0


KEY = "outbox-0001-abcd"


def test_send_reply_with_a_used_key_returns_that_message_and_changes_nothing(app, world):
    with app.app_context():
        ana = agent("ana@example.com")
        first, created = domain.send_reply(world.active_ana, ana, "On it!", idempotency_key=KEY)
        assert created and first.idempotency_key == KEY
        before = (count(Message), conv(world.active_ana).last_message_at)
        again, created = domain.send_reply(world.active_ana, ana, "  On it!  ", idempotency_key=KEY)
        assert not created and again.id == first.id
        assert (count(Message), conv(world.active_ana).last_message_at) == before
        assert not db.session.info.get(CHANGES)  # nothing to commit, so nothing to invalidate


def test_a_reply_delivered_before_the_conversation_closed_is_still_a_repeat(app, world):
    """The answer was lost, the conversation closed meanwhile: the retry learns it was delivered."""
    with app.app_context():
        ana = agent("ana@example.com")
        first, _ = domain.send_reply(world.active_ana, ana, "Bye!", idempotency_key=KEY)
        domain.close_conversation(world.active_ana, ana)
        again, created = domain.send_reply(world.active_ana, ana, "Bye!", idempotency_key=KEY)
        assert (again.id, created) == (first.id, False)


@pytest.mark.parametrize("which, body", [("active_ana", "Something else"), ("active_bruno", "On it!")],
                         ids=["other body", "other conversation"])
def test_a_key_reused_for_another_message_is_a_conflict(app, world, which, body):
    with app.app_context():
        admin = agent("admin@example.com")  # may reply to both conversations
        domain.send_reply(world.active_ana, admin, "On it!", idempotency_key=KEY)
        before = (count(Message), conv(getattr(world, which)).last_message_at)
        with pytest.raises(Conflict, match="this idempotency key was already used for another message"):
            domain.send_reply(getattr(world, which), admin, body, idempotency_key=KEY)
        assert (count(Message), conv(getattr(world, which)).last_message_at) == before


def test_keys_are_unique_per_agent(app, world):
    with app.app_context():
        before = count(Message)
        _, ana_created = domain.send_reply(world.active_ana, agent("ana@example.com"), "hi", idempotency_key=KEY)
        _, admin_created = domain.send_reply(world.active_ana, agent("admin@example.com"), "hi", idempotency_key=KEY)
        assert ana_created and admin_created and count(Message) == before + 2


def test_a_retry_racing_the_original_returns_the_winners_message(app, world, monkeypatch):
    """The window between looking the key up and committing: the unique constraint decides."""
    with app.app_context():
        ana = agent("ana@example.com")
        winner, _ = domain.send_reply(world.active_ana, ana, "On it!", idempotency_key=KEY)
        winner_id, stamp, before = winner.id, conv(world.active_ana).last_message_at, count(Message)
        looked_up = []
        real = domain._sent_with_key

        def not_yet_committed(*args):  # the first lookup ran before the winner's commit
            looked_up.append(args)
            return None if len(looked_up) == 1 else real(*args)

        monkeypatch.setattr(domain, "_sent_with_key", not_yet_committed)
        again, created = domain.send_reply(world.active_ana, ana, "On it!", idempotency_key=KEY)
        assert (again.id, created, len(looked_up)) == (winner_id, False, 2)
        assert count(Message) == before
        assert conv(world.active_ana).last_message_at == stamp  # the loser's UPDATE was rolled back


@pytest.mark.parametrize("key", ["short", "x" * 65, "has space here", "dots.are.not.ok", "ключ-ключ-ключ",
                                 "", "newline-at-end\n", 12345678])
def test_bad_idempotency_keys_are_refused_and_change_nothing(app, world, key):
    with app.app_context():
        before = count(Message)
        with pytest.raises(InvalidInput, match="idempotency key must be 8 to 64 characters"):
            domain.send_reply(world.active_ana, agent("ana@example.com"), "hi", idempotency_key=key)
        assert count(Message) == before


@pytest.mark.parametrize("key", ["A1_b2-C3", "k" * 64])
def test_idempotency_keys_of_8_and_64_characters_are_accepted(app, world, key):
    with app.app_context():
        assert domain.send_reply(world.active_ana, agent("ana@example.com"), "hi", idempotency_key=key).created
