from chat import create_app
from tests.conftest import make_config


def test_config_mapping_is_used(database_url):
    app = create_app(make_config(database_url, PAGE_SIZE=7))
    assert app.testing and app.config["PAGE_SIZE"] == 7


def test_postgres_urls_use_psycopg3():
    app = create_app(make_config("postgresql://u@localhost/x"))
    assert app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql+psycopg://")


def test_secrets_are_generated_once_into_instance(tmp_path, monkeypatch):
    import chat

    monkeypatch.setattr(chat, "ROOT", tmp_path)
    first = create_app({"SQLALCHEMY_DATABASE_URI": "sqlite://"})
    second = create_app({"SQLALCHEMY_DATABASE_URI": "sqlite://"})
    assert first.config["SECRET_KEY"] == second.config["SECRET_KEY"]
    assert first.config["INBOUND_TOKEN"] == second.config["INBOUND_TOKEN"]
    assert (tmp_path / "instance" / "inbound_token").read_text().strip() == first.config["INBOUND_TOKEN"]
