"""Downloading through torchvision, against a local HTTP server and an unreachable address."""

import functools
import hashlib
import http.server
import socket
import tarfile
import threading

import pytest

from backmatch.data.cifar import DatasetNotFoundError, load_split
from backmatch.data.download import prepare_dataset


@pytest.fixture
def archive_server(data_dir, tmp_path):
    """Serve a CIFAR-10 archive built from the real files on 127.0.0.1."""
    served = tmp_path / "served"
    served.mkdir()
    archive = served / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        tar.add(data_dir / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/cifar-10-python.tar.gz", md5
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_download_fills_missing_folder(archive_server, data_dir, tmp_path):
    url, md5 = archive_server
    target = tmp_path / "data"
    digests = prepare_dataset(target, "cifar10", url=url, md5=md5)
    assert (target / "cifar-10-batches-py" / "data_batch_5").is_file()
    assert digests["test"] == load_split(data_dir, "cifar10", train=False).digest


def test_download_rejects_wrong_md5(archive_server, tmp_path):
    url, _ = archive_server
    with pytest.raises(DatasetNotFoundError, match="failed"):
        prepare_dataset(tmp_path / "data", "cifar10", url=url, md5="0" * 32)


def test_offline_error_names_both_fixes(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/cifar-10-python.tar.gz"
    with pytest.raises(DatasetNotFoundError) as error:
        prepare_dataset(tmp_path / "data", "cifar10", url=url)
    message = str(error.value)
    assert "Download from" in message
    assert str(tmp_path / "data") in message
    assert "with network access" in message
    assert "offline" in message


def test_present_data_needs_no_network(data_dir):
    url = f"http://127.0.0.1:{_closed_port()}/never-fetched.tar.gz"
    digests = prepare_dataset(data_dir, "cifar10", url=url)
    assert set(digests) == {"train", "test"}
