"""The schema's layout on PostgreSQL: a broker refuses a schema laid out by
a newer broker (it would misread tables it does not know), with exit status
2 and a message naming the version, and changes nothing in it; it starts on
a schema of its own version; and brokers booting together on an empty schema
all start."""

from __future__ import annotations

from broker.api.server import serve_forever
from broker.models.schema import SCHEMA_VERSION, SCHEMA_VERSION_KEY
from tests.conftest import POSTGRES_URL
from tests.integration.helpers import EXIT_TIMEOUT
from tests.multibroker.fleet import SERVING, schema_of

BOOTING = 3
BOOT_ROUNDS = 3


def schema_state(admin, schema: str) -> tuple[list, list]:
    """The schema's tables and its setting rows."""
    with admin.cursor() as cursor:
        cursor.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s"
            " ORDER BY table_name",
            (schema,),
        )
        tables = [row[0] for row in cursor.fetchall()]
        cursor.execute(f'SELECT "name", "value" FROM "{schema}"."setting" ORDER BY "name"')
        return tables, cursor.fetchall()


def test_a_broker_refuses_a_schema_of_a_newer_version(fleet, postgres_admin, postgres_url):
    schema = schema_of(postgres_url)
    fleet.kill(fleet.start())  # a broker of this version lays the schema out
    with postgres_admin.cursor() as cursor:
        cursor.execute(
            f'SELECT "value" FROM "{schema}"."setting" WHERE "name" = %s', (SCHEMA_VERSION_KEY,)
        )
        assert cursor.fetchall() == [(str(SCHEMA_VERSION),)]
        newer = SCHEMA_VERSION + 1
        cursor.execute(
            f'UPDATE "{schema}"."setting" SET "value" = %s WHERE "name" = %s',
            (str(newer), SCHEMA_VERSION_KEY),
        )
    before = schema_state(postgres_admin, schema)

    process = fleet.spawn()
    status = process.wait(EXIT_TIMEOUT)

    assert status == 2, process.stderr
    assert f"schema is version {newer}" in process.stderr, process.stderr
    assert str(SCHEMA_VERSION) in process.stderr, process.stderr
    assert "Traceback" not in process.stderr
    assert schema_state(postgres_admin, schema) == before


def test_a_broker_starts_on_a_schema_of_its_own_version(fleet, postgres_admin, postgres_url):
    """The other side of the check: restarting on the schema it wrote works."""
    fleet.kill(fleet.start())
    broker = fleet.start()

    _, settings = schema_state(postgres_admin, schema_of(postgres_url))
    assert broker.health_status() == SERVING
    assert ("schema_version", str(SCHEMA_VERSION)) in settings


def test_brokers_booting_together_on_a_fresh_schema_all_start(
    make_fleet, postgres_admin, postgres_url
):
    """Several brokers started at once on an empty schema (a fleet booting
    together) all lay it out, or find it laid out, and serve. The race is
    short, so it is run on a few fresh schemas."""
    for round_ in range(BOOT_ROUNDS):
        schema = f"{schema_of(postgres_url)}_boot{round_}"
        with postgres_admin.cursor() as cursor:
            cursor.execute(f'CREATE SCHEMA "{schema}"')
        fleet = make_fleet(database_url=postgres_url.replace(schema_of(postgres_url), schema))
        try:
            brokers = fleet.start_many(BOOTING, together=True)

            _, settings = schema_state(postgres_admin, schema)
            assert len({broker.address for broker in brokers}) == BOOTING
            assert ("schema_version", str(SCHEMA_VERSION)) in settings
        finally:
            fleet.stop_all()
            with postgres_admin.cursor() as cursor:
                cursor.execute(f'DROP SCHEMA "{schema}" CASCADE')


def test_a_schema_that_does_not_exist_stops_start_up_naming_the_key(
    postgres_admin, tmp_path, capsys
):
    config = tmp_path / "rotest.yml"
    config.write_text(f"database:\n  url: {POSTGRES_URL}?schema=no_such_schema_here\n")

    assert serve_forever(str(config), "127.0.0.1:0") == 2
    error = capsys.readouterr().err
    assert "database.url" in error
    assert "no schema" in error
