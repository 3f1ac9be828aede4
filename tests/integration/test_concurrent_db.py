"""@concurrent on a database read-modify-write: lost at READ COMMITTED, kept with FOR UPDATE."""

from __future__ import annotations

import pytest

from tests.integration.test_db_fixtures import LOCAL_DSN, local_server_up

TESTS = '''
import uuid, pytest

@pytest.fixture
def account(db_pool_probe):
    pool = db_pool_probe.pool(max_size=4, timeout=10)
    table = "acct_" + uuid.uuid4().hex[:8]
    with pool.connection() as conn:
        conn.execute(f"create table {table} (id int primary key, balance int not null)")
        conn.execute(f"insert into {table} values (1, 0)")
    yield pool, table
    with pool.connection() as conn:
        (balance,) = conn.execute(f"select balance from {table} where id = 1").fetchone()
        conn.execute(f"drop table {table}")
    assert balance == 40, f"lost update: balance {balance}, expected 40 after 4 deposits of 10"

def deposit(pool, table, lock):
    with pool.connection() as conn:
        with conn.transaction():
            row = conn.execute(f"select balance from {table} where id = 1" + lock).fetchone()
            new_balance = row[0] + 10
            conn.execute(f"update {table} set balance = %s where id = 1", (new_balance,))

@pytest.mark.concurrent(workers=4)
def test_read_committed_read_modify_write(account):
    deposit(*account, lock="")

@pytest.mark.concurrent(workers=4)
def test_select_for_update(account):
    deposit(*account, lock=" for update")
'''


@pytest.mark.skipif(not local_server_up(), reason=f"no PostgreSQL at {LOCAL_DSN}")
def test_lost_update_is_exposed_and_for_update_fixes_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_balance=TESTS)
    result = pytester.runpytest_subprocess(f"--stressguard-dsn={LOCAL_DSN}", "--count=5",
                                           "-p", "no:randomly", timeout=180)
    outcomes = result.parseoutcomes()
    # Every FOR UPDATE run passes; the unlocked read-modify-write loses updates in most runs.
    result.stdout.no_fnmatch_line("*test_select_for_update*lost update*")
    assert outcomes.get("errors", 0) >= 3, result.stdout.str()[-3000:]
    result.stdout.fnmatch_lines([
        "*AssertionError: lost update: balance *, expected 40 after 4 deposits of 10",
        "*test_select_for_update*5*100%*",
    ])
