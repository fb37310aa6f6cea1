"""Hostile archives are refused before anything is written."""

from __future__ import annotations

import gzip
import io
import tarfile

import pytest

from multitask_serve.modelrepo.archive import ArchiveError, pack_head, unpack_head
from tests.unit.test_spec import HEAD

MODEL = b"\x08\x07fake-onnx-bytes"


def tar_gz(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def member(name: str, type_: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.linkname = link
    return info


def test_pack_then_unpack_round_trips_and_is_deterministic():
    data = pack_head(HEAD, MODEL)
    assert unpack_head(data, 1 << 20) == (HEAD, MODEL)
    assert pack_head(HEAD, MODEL) == data


SPEC = HEAD.to_json().encode()


@pytest.mark.parametrize(
    ("archive", "message"),
    [
        (
            tar_gz((member("../head.onnx"), MODEL), (member("head.json"), SPEC)),
            "unexpected archive member",
        ),
        (tar_gz((member("/etc/head.onnx"), MODEL)), "unexpected archive member"),
        (tar_gz((member("sub/head.onnx"), MODEL)), "unexpected archive member"),
        (tar_gz((member("head.onnx", tarfile.SYMTYPE, "/etc/passwd"), None)), "not a regular file"),
        (
            tar_gz(
                (member("head.json"), SPEC),
                (member("head.onnx", tarfile.LNKTYPE, "head.json"), None),
            ),
            "not a regular file",
        ),
        (tar_gz((member("head.onnx", tarfile.DIRTYPE), None)), "not a regular file"),
        (tar_gz((member("head.json"), SPEC), (member("head.json"), SPEC)), "appears twice"),
        (tar_gz((member("head.json"), SPEC)), "lacks head.onnx"),
        (b"PK\x03\x04 a zip file", "not a readable"),
        (b"", "not a readable"),
    ],
)
def test_unsafe_or_malformed_archives_are_refused(archive, message):
    with pytest.raises(ArchiveError, match=message):
        unpack_head(archive, 1 << 20)


def test_oversized_content_and_archive_bombs_are_refused_without_inflating_them():
    bomb = tar_gz((member("head.json"), SPEC), (member("head.onnx"), b"\0" * (8 << 20)))
    assert len(bomb) < 64 << 10  # compresses ~1000:1
    with pytest.raises(ArchiveError, match="exceeds the limit"):
        unpack_head(bomb, 1 << 20)


def test_a_truncated_gzip_stream_is_refused():
    data = pack_head(HEAD, MODEL * 1000)
    with pytest.raises(ArchiveError):
        unpack_head(data[: len(data) // 2], 1 << 20)


def test_unknown_schema_version_in_an_archive_is_refused():
    spec = SPEC.replace(b'"schema_version": 1', b'"schema_version": 99')
    with pytest.raises(ArchiveError, match="schema_version 99"):
        unpack_head(tar_gz((member("head.json"), spec), (member("head.onnx"), MODEL)), 1 << 20)


def test_plain_gzip_that_is_not_tar_is_refused():
    with pytest.raises(ArchiveError):
        unpack_head(gzip.compress(b"hello"), 1 << 20)
