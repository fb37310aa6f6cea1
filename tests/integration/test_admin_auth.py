"""Admin auth: every admin route refuses without the token, admin is off without one unless
explicitly allowed, and tokens never reach the logs."""

from __future__ import annotations

import logging

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from multitask_serve.service import admin
from multitask_serve.service.app import create_app
from tests.conftest import ADMIN_TOKEN, make_settings
from tests.factories import outputs, tree


def admin_calls() -> list[tuple[str, str]]:
    """Every route of the admin router, so that a route added later is covered too."""
    calls = [
        (method, route.path.replace("{task}", "embed"))
        for route in admin.router.routes
        if isinstance(route, APIRoute)
        for method in route.methods
    ]
    assert len(calls) >= 5
    return calls


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", "Bearer wrong", f"Basic {ADMIN_TOKEN}", f"{ADMIN_TOKEN}"],
)
def test_every_admin_route_refuses_without_the_bearer_token_and_changes_nothing(
    client, repo, authorization
):
    headers = {} if authorization is None else {"Authorization": authorization}
    files, served = tree(repo), outputs(client)
    for method, path in admin_calls():
        r = client.request(method, path, headers=headers, json={"labels": ["a", "b"]})
        assert r.status_code == 401, (method, path, r.text)
        assert r.json()["error"]["code"] == "unauthorized"
    assert tree(repo) == files and outputs(client) == served


def test_without_a_token_admin_is_disabled_on_every_route(repo):
    settings = make_settings(repo)
    settings.admin_token = None
    with TestClient(create_app(settings, CollectorRegistry())) as client:
        for method, path in admin_calls():
            r = client.request(method, path, headers={"Authorization": "Bearer anything"})
            assert r.status_code == 403, (method, path)


def test_admin_without_a_token_only_when_explicitly_allowed_for_local_use(repo):
    settings = make_settings(repo, allow_unauthenticated_admin=True)
    settings.admin_token = None
    with TestClient(create_app(settings, CollectorRegistry())) as client:
        r = client.post("/admin/heads/mood/zero-shot", json={"labels": ["happy", "sad"]})
        assert r.status_code == 201, r.text


def test_a_configured_token_is_required_even_when_unauthenticated_admin_is_allowed(repo):
    settings = make_settings(repo, allow_unauthenticated_admin=True)
    with TestClient(create_app(settings, CollectorRegistry())) as client:
        assert client.delete("/admin/heads/embed").status_code == 401


def test_tokens_never_reach_the_logs_or_the_settings_repr(client, caplog):
    wrong = "wrong-token-that-must-not-be-logged"
    valid = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with caplog.at_level(logging.DEBUG):
        client.post("/admin/heads/mood/zero-shot", json={"labels": ["a", "b"]}, headers=valid)
        client.delete("/admin/heads/embed", headers={"Authorization": f"Bearer {wrong}"})
        client.post(
            "/admin/heads/x/rollback", content=b"{", headers={"Authorization": f"Bearer {wrong}"}
        )
    assert caplog.records  # something was logged, so the check below means something
    for secret in (ADMIN_TOKEN, wrong):
        assert secret not in caplog.text
    assert ADMIN_TOKEN not in repr(client.app.state.services.settings)
