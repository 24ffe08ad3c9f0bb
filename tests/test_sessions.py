"""The session cookie's signature is checked once per cookie value (chat/sessions.py), and
every rule Flask applies to it still holds on every request: a forged or altered cookie signs
nobody in, even right after the genuine one was verified; an expired one signs nobody in, even
when its data are kept; and what one request does to its session never leaks into the next
request carrying the same cookie."""
import time

from flask import request, session

from chat import sessions


def _cookie(agent) -> str:
    return agent.client.get_cookie("session").value


def test_a_signed_in_agent_is_served_and_an_altered_cookie_is_not(app, world, login):
    ana = login("ana@example.com")
    assert ana.get("/inbox/list?tab=pending", htmx=True).status_code == 200
    genuine = _cookie(ana)
    assert ana.get("/inbox/list?tab=pending", htmx=True).status_code == 200  # from the verified cookie
    payload, stamp, signature = genuine.rsplit(".", 2)
    # (Not the signature's last character: its unused low bits decode the same.)
    for forged in (f"{payload}.{stamp}.{'A' if signature[0] != 'A' else 'B'}{signature[1:]}",
                   f"{payload[:-2]}xx.{stamp}.{signature}", f"{payload}.{stamp}.", genuine + "x"):
        client = app.test_client()
        client.set_cookie("session", forged)
        response = client.get("/inbox/list?tab=pending", headers={"HX-Request": "true"})
        assert response.status_code == 401, forged
    client = app.test_client()
    client.set_cookie("session", genuine)
    assert client.get("/inbox/list?tab=pending", headers={"HX-Request": "true"}).status_code == 200


def test_an_expired_cookie_signs_nobody_in_though_its_data_are_kept(app, world, login, monkeypatch):
    ana = login("ana@example.com")
    assert ana.get("/inbox/list?tab=pending", htmx=True).status_code == 200  # verified and kept
    lifetime = app.permanent_session_lifetime.total_seconds()
    now = time.time()
    monkeypatch.setattr(sessions.time, "time", lambda: now + lifetime + 5)
    assert ana.get("/inbox/list?tab=pending", htmx=True).status_code == 401


def test_what_a_request_does_to_its_session_stays_in_that_request(app):
    interface = app.session_interface
    assert isinstance(interface, sessions.VerifiedOnceSessionInterface)
    cookie = interface.get_signing_serializer(app).dumps({"_flashes": [["message", "saved"]], "n": 1})

    def opened():
        with app.test_request_context(headers={"Cookie": f"session={cookie}"}):
            return interface.open_session(app, request)

    opened()  # verified: the next ones are served from what it kept
    first = opened()
    first["_flashes"].append(["message", "only for this request"])  # as flask.flash does
    first["n"] = 2
    assert opened() == {"_flashes": [["message", "saved"]], "n": 1}
    with app.test_request_context():
        assert not session  # no cookie, no session
