"""The embedded Ray cluster is reachable only from this machine and requires Ray's token."""


def test_dashboard_binds_loopback_and_token_auth_is_on(ray_cluster):
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    ray = ray_cluster
    node = ray._private.worker.global_worker.node
    assert node.address_info["webui_url"].startswith("127.0.0.1:")
    assert is_token_auth_enabled()
