"""CI: fail unless the PostgreSQL server the tests use answers (127.0.0.1:5432, trust auth)."""

import os
import sys

from sqlalchemy import create_engine, text

url = os.environ.get("SLIMTUNE_TEST_POSTGRES_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
try:
    engine = create_engine(url, connect_args={"connect_timeout": 5})
    with engine.connect() as connection:
        version = connection.execute(text("SHOW server_version")).scalar()
except Exception as error:  # any reason at all: CI must not go on without it
    sys.exit(f"CI needs a PostgreSQL server at {url}: {str(error).strip().splitlines()[0]}")
print(f"PostgreSQL {version} answers at {engine.url.render_as_string(hide_password=True)}")
