"""The committed Grafana dashboards and PrometheusRule are what deploy/monitoring/generate.py
makes: regenerating them changes nothing.
"""

import json
import subprocess
import sys

from tests.ops.monitoring import DASHBOARDS, MONITORING, REPO


def test_the_committed_files_are_what_the_generator_makes() -> None:
    result = subprocess.run(
        [sys.executable, str(MONITORING / "generate.py"), "--check"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, (
        f"run `make dashboards` and commit the result:\n{result.stdout}{result.stderr}"
    )


def test_the_four_dashboards_query_prometheus_through_their_datasource_variable() -> None:
    boards = {path.stem: json.loads(path.read_text()) for path in DASHBOARDS}
    assert set(boards) == {"fleet", "accounts", "tracking", "infrastructure"}
    uids = {board["uid"] for board in boards.values()}
    assert len(uids) == len(boards)
    for name, board in boards.items():
        variables = board["templating"]["list"]
        assert [(v["name"], v["type"], v["query"]) for v in variables] == [
            ("datasource", "datasource", "prometheus")
        ], name
        panels = [panel for panel in board["panels"] if panel["type"] != "row"]
        assert panels, name
        for panel in panels:
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, (
                name, panel["title"],
            )  # fmt: skip
            assert panel["targets"], (name, panel["title"])
            assert all(target["expr"] for target in panel["targets"]), (name, panel["title"])
