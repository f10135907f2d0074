"""Log options an operator sets in the environment: JSON lines, a log path of their own,
the worker on every line, and route lines without the Patient ID."""

from __future__ import annotations

import json

from routing.simulators.synthetic import write_study
from tests.harness import send_files, wait_for


def test_json_lines_to_a_chosen_file_with_the_worker_and_without_the_patient_id(cluster, tmp_path):
    backend = cluster.backend("node-a")
    log_file = tmp_path / "logs-of-my-own" / "synthiq.jsonl"
    proxy = cluster.proxy(cluster.config([backend]), extra_args=["--workers", "2"],
                          extra_env={"LOG_FORMAT": "json", "LOG_FILE": str(log_file),
                                     "SYNTHIQ_LOG_PATIENT_ID": "false"})
    suid, files = write_study(tmp_path / "s", count=2)
    assert [s.status for s in send_files(proxy.port, files)] == [0, 0]

    def route_line() -> dict | None:
        if not log_file.exists():
            return None
        lines = [json.loads(line) for line in log_file.read_text().splitlines()]  # every line is JSON
        return next((x for x in lines if x["message"].startswith("route pool=main")), None)

    route = wait_for(route_line, timeout=10, what="the route line in the log file")
    assert f"study={suid}" in route["message"] and "patient_id" not in route["message"]
    assert route["worker"] in ("0", "1") and isinstance(route["pid"], int) and route["level"] == "INFO"
    assert "patient_id" not in proxy.process.log()


def test_plain_lines_name_the_worker_and_carry_the_patient_id_by_default(cluster, tmp_path):
    backend = cluster.backend("node-a")
    proxy = cluster.proxy(cluster.config([backend]), extra_args=["--workers", "2"])
    suid, files = write_study(tmp_path / "s", count=1)
    assert send_files(proxy.port, files)[0].status == 0
    line = wait_for(lambda: next((x for x in proxy.process.log().splitlines() if f"study={suid}" in x), None),
                    timeout=10, what="the route line")
    tag = line.split("[", 1)[1].split("]", 1)[0]
    assert tag.split("/w")[1] in ("0", "1") and "patient_id=" in line
