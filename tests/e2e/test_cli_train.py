"""A head trained by ``mts train`` and hot-added to a running service answers predictions."""

from __future__ import annotations

import subprocess
import sys
import tarfile

import httpx

from tests.conftest import ADMIN_TOKEN


def test_cli_trained_head_is_hot_added_and_served(server, repo, tiny_encoder_dir, tmp_path):
    data = tmp_path / "reviews.jsonl"
    rows = [
        f'{{"text": "the film was {w} {i}", "label": "{lab}"}}'
        for i in range(40)
        for w, lab in (("great", "pos"), ("awful", "neg"))
    ]
    data.write_text("\n".join(rows) + "\n")
    archive = tmp_path / "reviews.tar.gz"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "multitask_serve",
            "train",
            "--task",
            "reviews",
            "--data",
            str(data),
            "--strategy",
            "top-1",
            "--repo",
            str(repo),
            "--encoder",
            str(tiny_encoder_dir),
            "--epochs",
            "2",
            "--max-length",
            "16",
            "--out",
            str(archive),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "wrote" in done.stdout and "tap 5" in done.stdout
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == ["head.json", "head.onnx"]

    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=server, timeout=30) as http:
        added = http.post("/admin/heads/reviews", content=archive.read_bytes(), headers=admin)
        assert added.status_code == 201, added.text
        answer = http.post("/predict/reviews", json={"inputs": ["the film was great"]})
        assert answer.status_code == 200
        assert answer.json()["outputs"][0]["label"] in {"pos", "neg"}
        assert answer.json()["version"] == 1


def test_cli_refuses_an_encoder_that_is_not_the_trunks(repo, other_encoder_dir, tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "multitask_serve",
            "train",
            "--task",
            "x",
            "--data",
            "sentiment",
            "--repo",
            str(repo),
            "--encoder",
            str(other_encoder_dir),
            "--out",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert "not the one" in done.stderr
