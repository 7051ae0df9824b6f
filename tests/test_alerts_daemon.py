"""The daemon raises the alerts: a run its safety limit stops is posted to the lab's webhook."""

from __future__ import annotations

from protocol_texts import E1_TWO_CYCLES
from test_alerts import TOKEN, WebServer, web  # noqa: F401 - `web` is the fixture
from typer.testing import CliRunner

from cyclerd.cli.main import app
from cyclerd.store.database import Store

LAB = """
lab = "alerting"
database = "lab.db"

[[channels]]
name = "ch1"
sim = "mgagsn"
seed = 1

[alerts]
on = ["safety"]

[[alerts.webhooks]]
url = "{url}"
"""


def test_a_run_the_daemon_stops_on_a_safety_limit_is_posted_to_the_webhook(
    tmp_path,
    web: WebServer,  # type: ignore[no-untyped-def]  # noqa: F811
) -> None:
    (tmp_path / "lab.toml").write_text(LAB.format(url=web.url()))
    # E1 with a voltage floor that plating Li crosses (its overpotential): stopped by safety.
    tripping = E1_TWO_CYCLES.replace("steps:\n", "safety: {voltage_min: -0.005 V}\nsteps:\n", 1)
    assert "voltage_min" in tripping
    Store(tmp_path / "lab.db").close()
    (tmp_path / "e1.yaml").write_text(tripping)
    cli = CliRunner()
    submit = ["submit", str(tmp_path / "e1.yaml"), "--channel", "ch1", "--db", str(tmp_path / "lab.db")]
    assert cli.invoke(app, submit).exit_code == 0
    served = cli.invoke(app, ["serve", "--config", str(tmp_path / "lab.toml"), "--until-idle"])
    assert served.exit_code == 0, served.output
    post = web.posts.get(timeout=10.0)  # sent before serve returned: the alerts close with it
    assert post.path == f"/services/{TOKEN}"
    text = post.body["text"]
    assert "run 1" in text
    assert "ch1" in text
    assert "safety" in text
