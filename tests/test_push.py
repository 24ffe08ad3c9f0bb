"""Push over Socket.IO: who may connect, which rooms hear what, and a stopping server closing its
sockets. Across processes: tests/test_two_processes.py and tests/test_cluster.py."""
import os
import signal
import time


from chat import catalog, domain
from chat.extensions import db
from chat.models import Conversation, User
from chat.push import socketio
from tests.live import LiveServer, engineio_websocket, sign_in, socket_client, wait_for


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


def test_one_event_per_socket_naming_what_each_of_its_rooms_may_hear(app, world, login):
    """A new contact writing in changes the directory (heard by the agents' room: every socket)
    and the unassigned queue (its own room): a socket in both gets one event naming both, not
    one per room (the fan-out's cost is per event per socket). Which room hears what is
    test_events_go_to_the_rooms_that_may_see_the_change's."""
    ana, carla = connect(app, login("ana@example.com")), connect(app, login("carla@example.com"))
    for client in (ana, carla):
        client.get_received()
    with app.app_context():
        found = domain.receive_inbound("+551100000077", "first words", name="Someone New")
    for client in (ana, carla):
        received = events(client, wait=0.5)
        assert len(received) == 1, received
        assert {"contacts", f"conversation:{found.conversation_id}"} <= set(received[0])


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


# -- signing out ends the agent's sockets ---------------------------------------------------------
def names(client) -> list[str]:
    """Names of the events received (get_received() refuses once the server disconnected it)."""
    received, client.queue[:] = list(client.queue), []
    return [e["name"] for e in received]


def test_sign_out_elsewhere_disconnects_the_agents_sockets(app, world, login):
    laptop, phone, bruno = login("ana@example.com"), login("ana@example.com"), login("bruno@example.com")
    ana_socket, bruno_socket = connect(app, phone), connect(app, bruno)
    ana_socket.get_received(), bruno_socket.get_received()
    laptop.post("/logout", htmx=False)
    assert not ana_socket.is_connected()
    assert names(ana_socket) == ["session:ended"]  # told why, before the disconnect
    assert bruno_socket.is_connected() and "session:ended" not in names(bruno_socket)
    with app.app_context():
        domain.receive_inbound("+551100000001", "after sign-out")  # Support's queue: Ana's and Bruno's
    assert events(bruno_socket) != []
    assert names(ana_socket) == []  # no further events reach the signed-out agent


def test_password_change_disconnects_the_agents_sockets(app, world, login):
    ana_socket = connect(app, login("ana@example.com"))
    with app.app_context():
        catalog.save_agent("ana@example.com", "Ana Costa", "agent", [world.support], password="another-pass",
                           agent_id=world.ana)
    assert not ana_socket.is_connected()


def test_deactivation_disconnects_the_agents_sockets(app, world, login):
    ana_socket = connect(app, login("ana@example.com"))
    with app.app_context():
        catalog.save_agent("ana@example.com", "Ana Costa", "agent", [world.support], active=False,
                           agent_id=world.ana)
    assert not ana_socket.is_connected()


def test_socket_with_a_signed_out_session_is_refused(app, world, login):
    laptop, phone = login("ana@example.com"), login("ana@example.com")
    laptop.post("/logout", htmx=False)
    assert not connect(app, phone).is_connected()


# -- a stopping server closes its sockets at once -------------------------------------------------
def test_graceful_stop_closes_sockets_within_two_seconds(tmp_path):
    """SIGTERM asks gunicorn for a graceful stop; open Socket.IO connections must not hold it up."""
    server = LiveServer(tmp_path, seed=("--agents", "2", "--conversations", "2", "--messages", "2"))
    received = []
    try:
        server.start()
        client = socket_client(server, sign_in(server)[1], received)
        assert client.connected
        stopped_at = time.monotonic()
        os.kill(server.process.pid, signal.SIGTERM)  # the master, as systemd or docker stop do
        assert wait_for(lambda: not client.connected, timeout=5)
        disconnected_at = next(t for t, name, _ in received if name == "disconnect")
        assert disconnected_at - stopped_at < 2, disconnected_at - stopped_at
        server.process.wait(timeout=10)  # and the graceful stop itself is quick now
    finally:
        server.cleanup()


def test_graceful_stop_closes_websockets_within_two_seconds(tmp_path):
    """The same over the websocket transport browsers use: an Engine.IO close ("1"), so the
    browser reconnects rather than taking it as a Socket.IO disconnect."""
    server = LiveServer(tmp_path, seed=("--agents", "2", "--conversations", "2", "--messages", "2"))
    try:
        server.start()
        with engineio_websocket(server.base, sign_in(server)[1]) as ws:
            # Setting up may wait (the other test worker can hold both cores); the stop may not.
            assert ws.recv(timeout=10).startswith("0")  # Engine.IO open
            ws.send("40")
            assert ws.recv(timeout=10).startswith("40")  # Socket.IO connected
            stopped_at = time.monotonic()
            os.kill(server.process.pid, signal.SIGTERM)
            closed = ws.recv(timeout=5)
            elapsed = time.monotonic() - stopped_at
        assert closed == "1", closed  # Engine.IO close
        assert elapsed < 2, elapsed
    finally:
        server.cleanup()


def test_each_event_says_how_many_sockets_heard_its_keys(app, world, login):
    """`audience`: the sockets of this process told of the event's most widely heard key. The
    browsers refetch at once when it is small and spread their refetches when it is a crowd."""
    ana, ana_again, bruno, admin, carla = (connect(app, login(f"{n}@example.com"))
                                           for n in ("ana", "ana", "bruno", "admin", "carla"))
    for client in (ana, ana_again, bruno, admin, carla):
        client.get_received()
    with app.app_context():
        domain.send_reply(world.active_ana, user("ana@example.com"), "told to few")

    def received(client):
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline:
            found = [e["args"][0] for e in client.get_received() if e["name"] == "data:updated"]
            if found:
                return found
            time.sleep(0.02)
        return []

    # Ana's two tabs and the admin may see her conversation: 3 sockets heard its key.
    for client in (ana, ana_again, admin):
        (event,) = received(client)
        assert f"conversation:{world.active_ana}" in event["keys"]
        assert event["audience"] == 3, event
    assert received(bruno) == [] and received(carla) == []
