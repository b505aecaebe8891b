"""Optional triggers that make the control-plane database announce its own
changes to every resolver (``controlplane-resolver triggers install``).

They are never installed silently: installing triggers on a platform's
database is an operator's decision. Each trigger sends
``NOTIFY controlplane_resolver_invalidate, '<kind>:<id>'`` (see
protocol.py) for the old and the new row, so moves between organizations
or environments invalidate both sides. ``uninstall`` removes exactly what
``install`` created; both are idempotent.
"""

from __future__ import annotations

import psycopg

from controlplane_resolver.invalidation.protocol import CHANNEL

FUNCTION = "controlplane_resolver_notify"

#: (table, kind, id column) — what changes where.
WATCHED: tuple[tuple[str, str, str], ...] = (
    ("RuntimeEnvironment", "environment", "id"),
    ("Organization", "organization", "id"),
    ("Project", "project", "id"),
    # A promotion (or a new dev worker, or a deployment whose worker or type
    # changes) changes which worker version an environment runs.
    ("WorkerDeploymentPromotion", "worker_versions", "environmentId"),
    ("BackgroundWorker", "worker_versions", "runtimeEnvironmentId"),
    ("WorkerDeployment", "worker_versions", "environmentId"),
    # A global flag row (e.g. the mint flag's fallback for every organization).
    ("FeatureFlag", "flag", "key"),
)


def _trigger_name(table: str) -> str:
    return f"controlplane_resolver_notify_{table.lower()}"


FUNCTION_SQL = f"""
CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  kind text := TG_ARGV[0];
  col text := TG_ARGV[1];
  old_id text;
  new_id text;
BEGIN
  IF TG_OP <> 'INSERT' THEN
    old_id := to_jsonb(OLD) ->> col;
    PERFORM pg_notify('{CHANNEL}', kind || ':' || old_id);
  END IF;
  IF TG_OP <> 'DELETE' THEN
    new_id := to_jsonb(NEW) ->> col;
    IF old_id IS DISTINCT FROM new_id THEN
      PERFORM pg_notify('{CHANNEL}', kind || ':' || new_id);
    END IF;
  END IF;
  RETURN NULL;
END
$$
"""


def install(dsn: str) -> list[str]:
    """Create (or replace) the function and one trigger per watched table.
    Returns the trigger names. Runs in one transaction."""
    names = []
    with psycopg.connect(dsn) as conn:
        conn.execute(FUNCTION_SQL)
        for table, kind, column in WATCHED:
            name = _trigger_name(table)
            conn.execute(f'DROP TRIGGER IF EXISTS {name} ON "{table}"')
            conn.execute(
                f'CREATE TRIGGER {name} AFTER INSERT OR UPDATE OR DELETE ON "{table}" '
                f"FOR EACH ROW EXECUTE FUNCTION {FUNCTION}('{kind}', '{column}')"
            )
            names.append(name)
    return names


def uninstall(dsn: str) -> list[str]:
    """Drop the triggers and the function. Returns the trigger names."""
    names = []
    with psycopg.connect(dsn) as conn:
        for table, _kind, _column in WATCHED:
            name = _trigger_name(table)
            exists = conn.execute("SELECT to_regclass(%s)", (f'"{table}"',)).fetchone()
            if exists and exists[0] is not None:
                conn.execute(f'DROP TRIGGER IF EXISTS {name} ON "{table}"')
            names.append(name)
        conn.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}()")
    return names
