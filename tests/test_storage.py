"""Attachment storage, every behaviour on both backends: a directory under tmp_path, and a real
S3-compatible server (moto's, in this process on a free loopback port), reached through the
client S3Storage builds itself (its timeouts and retries) with dummy credentials from the
environment, as in production. Each S3 test has a bucket of its own, emptied and dropped after.
"""
from __future__ import annotations

import os
import re
import threading
import time
import uuid
from contextlib import contextmanager

import boto3
import pytest
from flask import Flask
from moto.server import ThreadedMotoServer

from chat.storage import DiskStorage, S3Storage, StorageError, from_config, init_app, storage

REGION = "us-east-1"
PREFIX = "inbox-test"
KEY = "attachments/12/abc.jpg"
BINARY = bytes(range(256)) * 4 + b"\0\r\n\x1a"


@contextmanager
def moto_server():
    """A moto S3 server on a port the OS picks (port=0: no race for a "free" port), stopped on exit."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def s3_url():
    with moto_server() as url:
        yield url


def admin_client(url):
    """A plain client for looking behind the backend (list, head, create and drop buckets)."""
    return boto3.client("s3", endpoint_url=url, region_name=REGION,
                        aws_access_key_id="test", aws_secret_access_key="test")


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    """Dummy credentials in the environment; nothing from a developer's ~/.aws leaks in."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@contextmanager
def throwaway_bucket(url):
    client, bucket = admin_client(url), f"chat-test-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=bucket)
    try:
        yield bucket
    finally:  # only this test's bucket, and only what is in it
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=bucket, Key=obj["Key"])
        client.delete_bucket(Bucket=bucket)


@pytest.fixture
def bucket(s3_url):
    with throwaway_bucket(s3_url) as name:
        yield name


@pytest.fixture
def s3_store(s3_url, bucket, aws_env):
    return S3Storage(bucket, endpoint_url=s3_url, region=REGION, prefix=PREFIX)


@pytest.fixture(params=["disk", "s3"])
def store(request, tmp_path):
    if request.param == "disk":
        return DiskStorage(tmp_path / "attachments")
    return request.getfixturevalue("s3_store")


def test_round_trip_of_binary_data(store):
    store.put(KEY, BINARY, "image/jpeg")
    assert store.get(KEY) == BINARY
    assert store.size(KEY) == len(BINARY)
    assert b"".join(store.stream(KEY)) == BINARY


def test_a_megabyte_streams_in_chunks(store):
    data = os.urandom(1024 * 1024)
    store.put(KEY, data, "application/octet-stream")
    chunks = list(store.stream(KEY, chunk_size=64 * 1024))
    assert len(chunks) >= 16 and max(map(len, chunks)) <= 64 * 1024
    assert b"".join(chunks) == data


def test_put_overwrites(store):
    store.put(KEY, b"old bytes, longer than the new", "text/plain")
    store.put(KEY, b"new", "text/plain")
    assert store.get(KEY) == b"new"
    assert store.size(KEY) == 3


@pytest.mark.parametrize("op", ["get", "stream", "size"])
def test_a_missing_key_is_a_key_error(store, op):
    store.put("attachments/1/other.txt", b"x", "text/plain")
    with pytest.raises(KeyError):
        getattr(store, op)("attachments/1/missing.txt")  # stream too: at the call, before iterating
    with pytest.raises(KeyError):
        getattr(store, op)("attachments")  # a "directory" of keys is no key


def test_delete_is_idempotent(store):
    store.put(KEY, b"x", "text/plain")
    store.delete(KEY)
    with pytest.raises(KeyError):
        store.get(KEY)
    store.delete(KEY)
    store.delete("attachments/never/was.txt")


def test_a_reader_during_overwrites_sees_old_or_new_never_partial(store):
    old, new = b"o" * 512 * 1024, b"n" * 700 * 1024
    store.put(KEY, old, "application/octet-stream")
    done, seen = threading.Event(), []

    def overwrite():
        for i in range(20):
            store.put(KEY, new if i % 2 == 0 else old, "application/octet-stream")
        done.set()

    writer = threading.Thread(target=overwrite)
    writer.start()
    while not done.is_set():
        seen.append(store.get(KEY))
    writer.join()
    assert seen and all(data in (old, new) for data in seen)


def test_disk_put_leaves_only_the_final_files(tmp_path):
    disk = DiskStorage(tmp_path / "attachments")
    disk.put(KEY, b"one", "image/jpeg")
    disk.put(KEY, b"two", "image/jpeg")
    disk.put("attachments/13/def.pdf", b"three", "application/pdf")
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["attachments/attachments/12/abc.jpg", "attachments/attachments/13/def.pdf"]


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/abs", "a//b", "a/", "./a", "a\\b", "", "a\0b"])
def test_disk_refuses_keys_that_leave_its_root(tmp_path, key):
    disk = DiskStorage(tmp_path / "root")
    for call in (lambda: disk.put(key, b"x", "text/plain"), lambda: disk.get(key), lambda: disk.delete(key)):
        with pytest.raises(ValueError, match="storage key"):
            call()
    assert list(tmp_path.iterdir()) == []


def test_disk_failure_is_a_storage_error(tmp_path):
    (tmp_path / "a-file").write_bytes(b"not a directory")
    disk = DiskStorage(tmp_path / "a-file")
    with pytest.raises(StorageError, match="cannot write 'attachments/12/abc.jpg' under .*a-file"):
        disk.put(KEY, b"x", "image/jpeg")


@pytest.mark.parametrize("config, message", [
    ({"ATTACHMENT_STORAGE": "ftp"}, "ATTACHMENT_STORAGE='ftp': use one of disk, s3"),
    ({"ATTACHMENT_STORAGE": "s3"}, "ATTACHMENT_S3_BUCKET is required when ATTACHMENT_STORAGE=s3"),
    ({"ATTACHMENT_STORAGE": "disk"}, "ATTACHMENT_DIR is required when ATTACHMENT_STORAGE=disk"),
])
def test_from_config_says_what_is_wrong(config, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        from_config(config)


@pytest.mark.parametrize("settings", [{}, {"ATTACHMENT_DIR": None}])  # None: chat/config.py, env unset
def test_init_app_defaults_to_disk_under_the_instance_folder(tmp_path, settings):
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(settings)
    init_app(app)
    with app.app_context():
        assert storage().name == "disk"
        assert storage().describe() == f"disk: {tmp_path / 'instance' / 'attachments'}"
        storage().put(KEY, b"x", "image/jpeg")
    assert (tmp_path / "instance" / "attachments" / KEY).read_bytes() == b"x"


def test_from_config_builds_s3_from_settings_and_environment(s3_url, bucket, aws_env):
    s3 = from_config({"ATTACHMENT_STORAGE": "s3", "ATTACHMENT_S3_BUCKET": bucket,
                      "ATTACHMENT_S3_ENDPOINT_URL": s3_url, "ATTACHMENT_S3_REGION": REGION,
                      "ATTACHMENT_S3_PREFIX": "/tenant-7/"})
    s3.put(KEY, BINARY, "image/jpeg")
    assert s3.get(KEY) == BINARY
    assert s3.describe() == f"s3: {bucket}/tenant-7/ at {s3_url}"
    assert "test" not in s3.describe().replace(bucket, "")  # no credentials in it


def test_s3_keys_carry_the_prefix_and_the_content_type(s3_store, s3_url, bucket):
    s3_store.put(KEY, b"jpeg bytes", "image/jpeg")
    client = admin_client(s3_url)
    assert [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]] == [f"{PREFIX}/{KEY}"]
    assert client.head_object(Bucket=bucket, Key=f"{PREFIX}/{KEY}")["ContentType"] == "image/jpeg"


def test_s3_missing_bucket_is_a_storage_error_not_a_missing_key(s3_url, aws_env):
    s3 = S3Storage(f"chat-test-never-created-{uuid.uuid4().hex[:12]}", endpoint_url=s3_url, region=REGION)
    with pytest.raises(StorageError, match="NoSuchBucket"):
        s3.put(KEY, b"x", "image/jpeg")
    with pytest.raises(StorageError, match="NoSuchBucket"):
        s3.get(KEY)


def test_s3_server_down_is_a_storage_error_within_seconds(aws_env):
    with moto_server() as url:
        with throwaway_bucket(url) as name:
            s3 = S3Storage(name, endpoint_url=url, region=REGION)
            s3.put(KEY, b"x", "image/jpeg")
            assert s3.get(KEY) == b"x"
        # leaving the block stops the server: its port now refuses connections
    calls = {"put": lambda: s3.put(KEY, b"y", "image/jpeg"), "get": lambda: s3.get(KEY),
             "stream": lambda: s3.stream(KEY), "size": lambda: s3.size(KEY), "delete": lambda: s3.delete(KEY)}
    for op, call in calls.items():
        started = time.monotonic()
        with pytest.raises(StorageError, match=f"s3: \\w+ 'attachments/12/abc.jpg' in bucket '{name}' failed"):
            call()
        assert time.monotonic() - started < 10, f"{op} took {time.monotonic() - started:.1f} s"
