from segflow.local.cli import build_parser


def test_config_is_accepted_before_or_after_the_subcommand():
    parser = build_parser()
    assert parser.parse_args(["--config", "a.yml", "run", "--as-of", "2026-01-01"]).config == "a.yml"
    args = parser.parse_args(["run", "--config", "b.yml", "--as-of", "2026-01-01"])
    assert args.config == "b.yml" and args.as_of == "2026-01-01" and args.retrain == "auto"
    assert parser.parse_args(["summary"]).config is None


def test_generate_defaults_match_the_demo():
    args = build_parser().parse_args(["generate"])
    assert (args.users, args.days, args.seed, args.dirty_rate) == (10_000, 180, 42, 0.0)


def test_env_prints_exports_under_the_project(capsys, tmp_path, monkeypatch):
    from segflow.local.cli import main

    monkeypatch.setenv("SEGFLOW__AIRFLOW__HOME", str(tmp_path / "af"))
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert f"export AIRFLOW_HOME='{tmp_path / 'af'}'" in out
    assert "AIRFLOW__CORE__DAGS_FOLDER=" in out and "SEGFLOW_WAREHOUSE_PATH=" in out


def test_version(capsys):
    import pytest

    from segflow.local.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == "segflow 0.1.0"
