"""The embedded Ray cluster opens no dashboard (no HTTP endpoint at all) and requires Ray's token."""


def test_no_dashboard_is_started_and_token_auth_is_on(ray_cluster):
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    ray = ray_cluster
    node = ray._private.worker.global_worker.node
    assert not node.address_info.get("webui_url")
    assert is_token_auth_enabled()
