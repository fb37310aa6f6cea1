"""Head archives: the .tar.gz that training produces and the admin API accepts.

An archive holds exactly two regular files at its root, ``head.json`` and ``head.onnx``. Unpacking
reads members into memory under a byte budget and refuses anything else (links, directories, paths,
duplicates, oversized or bomb-like content) before a single byte touches the repository. The
archive itself is read as a stream: from bytes, or from a file (the admin API stages uploads on
disk, so that the compressed archive is never held whole in memory).
"""

from __future__ import annotations

import gzip
import io
import tarfile
from typing import IO

from multitask_serve.modelrepo.repository import HEAD_MODEL, HEAD_SPEC
from multitask_serve.modelrepo.types import HeadSpec, SpecError


class ArchiveError(ValueError):
    """The upload is not a well-formed, safe head archive."""


def pack_head(spec: HeadSpec, model: bytes) -> bytes:
    buf = io.BytesIO()
    # mtime=0 and sorted members make the archive a pure function of its content.
    with (
        gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name, data in ((HEAD_SPEC, spec.to_json().encode()), (HEAD_MODEL, model)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def unpack_head(data: bytes, max_bytes: int) -> tuple[HeadSpec, bytes]:
    """Return the archive's spec and ONNX bytes, or raise ArchiveError saying what is wrong."""
    return unpack_head_file(io.BytesIO(data), max_bytes)


def unpack_head_file(file: IO[bytes], max_bytes: int) -> tuple[HeadSpec, bytes]:
    """``unpack_head`` reading the archive from a seekable binary file, from its current position.

    The file is read in small pieces as the members are decompressed; only the members' content
    (at most ``max_bytes`` in total) is held in memory. The file is left open.
    """
    files: dict[str, bytes] = {}
    budget = max_bytes
    try:
        with tarfile.open(fileobj=file, mode="r:*") as tar:
            for member in tar:
                if member.name not in (HEAD_SPEC, HEAD_MODEL):
                    raise ArchiveError(
                        f"unexpected archive member {member.name!r}: an archive holds only "
                        f"{HEAD_SPEC} and {HEAD_MODEL} at its root"
                    )
                if not member.isreg():
                    raise ArchiveError(f"archive member {member.name!r} is not a regular file")
                if member.name in files:
                    raise ArchiveError(f"archive member {member.name!r} appears twice")
                if member.size > budget:
                    raise ArchiveError(f"archive content exceeds the limit of {max_bytes} bytes")
                extracted = tar.extractfile(member)
                assert extracted is not None  # a regular file always has content
                content = extracted.read(member.size + 1)
                if len(content) != member.size:
                    raise ArchiveError(f"archive member {member.name!r} is truncated")
                budget -= member.size
                files[member.name] = content
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as exc:
        raise ArchiveError(f"not a readable .tar.gz head archive ({exc})") from exc
    missing = {HEAD_SPEC, HEAD_MODEL} - files.keys()
    if missing:
        raise ArchiveError(f"archive lacks {', '.join(sorted(missing))}")
    try:
        spec = HeadSpec.from_json(files[HEAD_SPEC])
    except SpecError as exc:
        raise ArchiveError(str(exc)) from exc
    return spec, files[HEAD_MODEL]
