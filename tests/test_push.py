"""Push over Socket.IO: who may connect, which rooms hear what, and across processes."""
import time

from chat import catalog, domain
from chat.extensions import db
from chat.models import Conversation, User
from chat.push import socketio
from tests.conftest import REDIS_URL, redis_client
from tests.live import LiveServer, http


def connect(app, agent=None):
    return socketio.test_client(app, flask_test_client=agent.client if agent else None)


def events(client, wait: float = 1.0) -> list[list[str]]:
    """The key lists of the data:updated events received (waiting a little for stragglers)."""
    deadline = time.monotonic() + wait
    received = []
    while True:
        received += [e["args"][0]["keys"] for e in client.get_received() if e["name"] == "data:updated"]
        if received or time.monotonic() >= deadline:
            return received
        time.sleep(0.02)


def user(email):
    return db.session.query(User).filter_by(email=email).one()


def test_anonymous_connection_is_refused(app, world):
    assert not connect(app).is_connected()


def test_signed_in_connection_is_accepted(app, world, login):
    client = connect(app, login("ana@example.com"))
    assert client.is_connected()
    client.disconnect()


def test_events_go_to_the_rooms_that_may_see_the_change(app, world, login):
    ana, bruno, carla, admin = (connect(app, login(f"{n}@example.com")) for n in ("ana", "bruno", "carla", "admin"))
    for c in (ana, bruno, carla, admin):
        c.get_received()
    with app.app_context():
        domain.accept_conversation(world.pending_support, user("bruno@example.com"))
    expected = f"conversation:{world.pending_support}"
    for name, client in (("ana", ana), ("bruno", bruno), ("admin", admin)):
        keys = [k for event in events(client) for k in event]
        assert expected in keys, name
    assert events(carla, wait=0.3) == []  # Billing never saw it: not even its id
    ana_keys = {k for event in events(ana, wait=0.1) for k in event}
    assert "convs:dept:%d" % world.billing not in ana_keys


def test_event_names_the_stale_keys(app, world, login):
    ana = connect(app, login("ana@example.com"))
    ana.get_received()
    with app.app_context():
        domain.send_reply(world.active_ana, user("ana@example.com"), "hi")
    keys = {k for event in events(ana) for k in event}
    # "conversation:<id>" is a prefix: it covers the pane and its messages fragment
    assert {f"conversation:{world.active_ana}", f"convs:user:{world.ana}"} <= keys
    assert "convs:all" not in keys  # the admins' tag goes to the admins' room only


def test_clients_cannot_choose_rooms(app, world, login):
    carla = connect(app, login("carla@example.com"))
    carla.emit("join", {"room": f"dept:{world.support}"})
    carla.emit("join_room", f"dept:{world.support}")
    carla.get_received()
    with app.app_context():
        domain.receive_inbound("+551100000001", "support only")
    assert all(f"conversation:{world.pending_support}" not in e for e in events(carla, wait=0.3))


def test_rollback_pushes_nothing(app, world, login):
    ana = connect(app, login("ana@example.com"))
    ana.get_received()
    with app.app_context():
        conversation = db.session.get(Conversation, world.active_ana)
        conversation.last_message_body = "never"
        db.session.flush()
        db.session.rollback()
    assert events(ana, wait=0.3) == []


def test_directory_changes_reach_every_agent(app, world, login):
    carla = connect(app, login("carla@example.com"))
    carla.get_received()
    with app.app_context():
        catalog.save_department("Customer care", "#16a34a", world.support)
    assert any("directory" in e for e in events(carla))


# -- two processes sharing Redis ----------------------------------------------------------------
def test_event_raised_in_one_process_reaches_a_client_of_another(tmp_path):
    """Process A takes the webhook; the browser is connected to process B; Redis carries it."""
    import socketio as socketio_client

    redis_client()
    a = LiveServer(tmp_path, redis_url=REDIS_URL, seed=("--agents", "3", "--conversations", "10", "--messages", "20"))
    b = a.twin()
    client = socketio_client.Client(reconnection=False)
    try:
        a.start()
        b.start()
        session = http()
        page = session.get(f"{b.base}/login").text
        token = page.split('name="csrf-token" content="')[1].split('"')[0]
        session.post(f"{b.base}/login", allow_redirects=False,
                     data={"email": "ana@example.com", "password": "demo-pass", "csrf_token": token})
        cookie = "; ".join(f"{k}={v}" for k, v in session.cookies.items())
        received = []
        client.on("data:updated", lambda data: received.append(data["keys"]))
        client.connect(b.base, headers={"Cookie": cookie}, transports=["polling"], wait_timeout=5)
        conversation_id = a.inbound(phone="+5511977770000", body="via A", external_id="two-1")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(
                f"conversation:{conversation_id}" in keys for keys in received):
            time.sleep(0.05)
        assert any(f"conversation:{conversation_id}" in keys for keys in received), received
    finally:
        if client.connected:
            client.disconnect()
        b.stop()
        a.cleanup()
