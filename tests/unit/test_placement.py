"""Whether a joined Ray cluster can place a job: the arithmetic behind the refusal."""

from orchestrator.launch.ray_cluster import placeable

ONE_CPU_NODES = [{"CPU": 1.0}, {"CPU": 1.0}]


def test_workers_spread_over_nodes_that_hold_them():
    assert placeable({"CPU": 1, "GPU": 0}, 2, ONE_CPU_NODES) is None
    assert placeable({"CPU": 4, "GPU": 1}, 16, [{"CPU": 64, "GPU": 8}, {"CPU": 64, "GPU": 8}]) is None


def test_a_worker_no_node_holds_names_the_largest_node():
    assert placeable({"CPU": 2, "GPU": 0}, 1, ONE_CPU_NODES) == \
        "one worker needs 2 CPU, but no node has that (the largest has 1 CPU)"
    assert placeable({"CPU": 1, "GPU": 1}, 1, ONE_CPU_NODES) == \
        "one worker needs 1 CPU + 1 GPU, but no node has that (the largest has 1 CPU, 0 GPU)"


def test_more_workers_than_the_cluster_holds_gives_the_count():
    assert placeable({"CPU": 1}, 3, ONE_CPU_NODES) == "3 workers of 1 CPU each, but the cluster's 2 node(s) hold only 2"
    # GPUs bind per node: 3 GPUs each fit twice on an 8-GPU node, not 8/3 rounded over the cluster.
    assert placeable({"CPU": 1, "GPU": 3}, 5, [{"CPU": 64, "GPU": 8}, {"CPU": 64, "GPU": 8}]) == \
        "5 workers of 1 CPU + 3 GPU each, but the cluster's 2 node(s) hold only 4"
