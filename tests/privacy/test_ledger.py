"""Tests for dpdiffusion.privacy.ledger.PrivacyLedger."""

import doctest
import math
import os
import sqlite3
import subprocess
import sys
import textwrap
import time

import dp_accounting
import pytest
from dp_accounting.pld import PLDAccountant

from dpdiffusion.privacy import ledger as ledger_module
from dpdiffusion.privacy.accounting import compose_noise_multipliers, gaussian_epsilon, gaussian_sigma
from dpdiffusion.privacy.ledger import BudgetExceededError, PrivacyLedger
from dpdiffusion.privacy.spec import PrivacySpec

DELTA = 1e-5


@pytest.fixture
def ledger(tmp_path):
    return PrivacyLedger(tmp_path / "ledger.sqlite", budget_epsilon=3.0, delta=DELTA)


def test_doctests():
    result = doctest.testmod(ledger_module)
    assert result.attempted > 0 and result.failed == 0


def test_charge_composes_exactly(ledger):
    multipliers = [4.0, 2.71828, 6.0]
    for m in multipliers:
        remaining = ledger.charge("alice", noise_multiplier=m, attributes=["dark_skin"])
    spent = ledger.spent("alice")
    assert spent == gaussian_epsilon(sigma=compose_noise_multipliers(multipliers), delta=DELTA)
    assert remaining == pytest.approx(3.0 - spent, rel=1e-15)
    assert ledger.remaining("alice") == remaining
    # oracles: dp_accounting's analytic Gaussian on the composed multiplier, and its PLD accountant on the events
    exact = dp_accounting.get_epsilon_gaussian(sum(m**-2 for m in multipliers) ** -0.5, DELTA, tol=1e-15)
    assert spent == pytest.approx(exact, rel=1e-9)
    pld = PLDAccountant(value_discretization_interval=1e-4)
    for m in multipliers:
        pld.compose(dp_accounting.GaussianDpEvent(m))
    assert spent <= pld.get_epsilon(DELTA) + 1e-12
    assert pld.get_epsilon(DELTA) - spent <= 1e-6
    # other subjects are independent
    assert ledger.spent("bob") == 0.0 and ledger.remaining("bob") == 3.0


def test_history_records_releases(ledger):
    ledger.charge("alice", noise_multiplier=5.0, attributes=["a"], note="first")
    ledger.charge("alice", noise_multiplier=4.0, attributes=["a", "b"], scope="latent")
    history = ledger.history("alice")
    assert [h.noise_multiplier for h in history] == [5.0, 4.0]
    assert history[0].note == "first" and history[1].note is None
    assert history[1].attributes == ("a", "b") and history[1].scope == "latent"
    assert history[0].epsilon == gaussian_epsilon(sigma=5.0, delta=DELTA)
    assert history[1].spent_after == ledger.spent("alice")
    assert history[0].release_id < history[1].release_id
    assert ledger.subjects() == ["alice"]


def test_overspend_refused_and_nothing_written(ledger):
    m = gaussian_sigma(epsilon=2.5, delta=DELTA)
    ledger.charge("alice", noise_multiplier=m, attributes=["a"])
    before = (ledger.spent("alice"), ledger.history("alice"))
    with pytest.raises(BudgetExceededError) as info:
        ledger.charge("alice", noise_multiplier=m, attributes=["a"])
    err = info.value
    assert isinstance(err, ValueError)
    message = str(err)
    assert "budget epsilon=3" in message and "already spent 2.5" in message
    assert "epsilon=2.5 on its own" in message and "Nothing was recorded" in message
    assert f"only {3.0 - before[0]:.6g} is left" in message
    assert err.epsilon_after > 3.0 and err.spent_epsilon == before[0]
    assert (ledger.spent("alice"), ledger.history("alice")) == before


def test_release_at_exactly_the_budget_fits(tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.sqlite", budget_epsilon=1.0, delta=DELTA)
    remaining = ledger.charge_spec("alice", PrivacySpec(epsilon=1.0, delta=DELTA, attributes=["a"]))
    assert 0.0 <= remaining < 1e-9
    assert ledger.would_exceed("alice", noise_multiplier=1e6)  # anything more is refused


def test_zero_multiplier_is_never_charged(ledger):
    with pytest.raises(BudgetExceededError, match="total to inf"):
        ledger.charge("alice", noise_multiplier=0.0, attributes=["a"])
    with pytest.raises(BudgetExceededError):
        ledger.charge_spec("alice", PrivacySpec(epsilon=float("inf"), delta=DELTA, attributes=["a"]))
    assert ledger.history("alice") == [] and ledger.subjects() == []


def test_preview_and_would_exceed_do_not_write(ledger):
    m = gaussian_sigma(epsilon=2.5, delta=DELTA)
    assert ledger.preview("alice", noise_multiplier=m) == gaussian_epsilon(sigma=m, delta=DELTA)
    assert not ledger.would_exceed("alice", noise_multiplier=m)
    ledger.charge("alice", noise_multiplier=m, attributes=["a"])
    after = ledger.preview("alice", noise_multiplier=m)
    assert after == gaussian_epsilon(sigma=compose_noise_multipliers([m, m]), delta=DELTA)
    assert ledger.would_exceed("alice", noise_multiplier=m)
    assert ledger.preview("alice", noise_multiplier=0.0) == math.inf
    assert len(ledger.history("alice")) == 1


def test_min_noise_multiplier_spends_the_rest(ledger):
    ledger.charge("alice", noise_multiplier=3.0, attributes=["a"])
    m = ledger.min_noise_multiplier("alice")
    assert not ledger.would_exceed("alice", noise_multiplier=m)
    assert ledger.would_exceed("alice", noise_multiplier=m * (1 - 1e-6))  # and it is the smallest
    assert ledger.charge("alice", noise_multiplier=m, attributes=["a"]) == pytest.approx(0.0, abs=1e-9)
    assert ledger.min_noise_multiplier("alice") > 1e4  # essentially nothing left
    assert ledger.min_noise_multiplier("bob") == pytest.approx(gaussian_sigma(epsilon=3.0, delta=DELTA), rel=1e-12)


def test_charge_many_is_all_or_nothing(ledger):
    m = gaussian_sigma(epsilon=2.5, delta=DELTA)
    remaining = ledger.charge_many(["alice", "bob"], noise_multiplier=m, attributes=["a"])
    assert remaining == pytest.approx([0.5, 0.5], rel=1e-9)
    with pytest.raises(BudgetExceededError, match="'alice'"):
        ledger.charge_many(["carol", "alice"], noise_multiplier=m, attributes=["a"])  # alice cannot afford it
    assert ledger.history("carol") == [] and len(ledger.history("alice")) == 1  # carol was not charged either
    # a subject listed twice is charged twice
    m_small = gaussian_sigma(epsilon=1.0, delta=DELTA)
    remaining = ledger.charge_many(["dave", "dave", "erin"], noise_multiplier=m_small, attributes=["a"])
    two = gaussian_epsilon(sigma=compose_noise_multipliers([m_small, m_small]), delta=DELTA)
    assert remaining == pytest.approx([3.0 - two, 3.0 - two, 2.0], rel=1e-9)
    assert len(ledger.history("dave")) == 2
    with pytest.raises(ValueError, match="not one string"):
        ledger.charge_many("dave", noise_multiplier=m, attributes=["a"])
    with pytest.raises(ValueError, match="non-empty"):
        ledger.charge_many([], noise_multiplier=m, attributes=["a"])


def test_charge_spec_uses_the_spec(ledger):
    spec = PrivacySpec(epsilon=1.0, delta=1e-6, attributes=["a", "b"], scope="latent")
    ledger.charge_spec("alice", spec, note="ui")
    (release,) = ledger.history("alice")
    assert release.noise_multiplier == gaussian_sigma(epsilon=1.0, delta=1e-6)
    assert release.scope == "latent" and release.attributes == ("a", "b") and release.note == "ui"
    # cost measured at the ledger delta (1e-5 > 1e-6, so a little less than 1)
    assert release.epsilon == gaussian_epsilon(sigma=release.noise_multiplier, delta=DELTA) < 1.0


def test_reopen_persists(tmp_path):
    path = tmp_path / "ledger.sqlite"
    PrivacyLedger(path, budget_epsilon=2.0, delta=DELTA).charge("alice", noise_multiplier=3.0, attributes=["a"])
    again = PrivacyLedger(path, budget_epsilon=2.0, delta=DELTA)
    assert again.spent("alice") == gaussian_epsilon(sigma=3.0, delta=DELTA)
    stored = PrivacyLedger(str(path))  # budget and delta read from the file
    assert (stored.budget_epsilon, stored.delta) == (2.0, DELTA)
    with pytest.raises(ValueError, match="created with budget_epsilon=2.0"):
        PrivacyLedger(path, budget_epsilon=2.5, delta=DELTA)
    with pytest.raises(ValueError, match="cannot change"):
        PrivacyLedger(path, budget_epsilon=2.0, delta=1e-6)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_neighbouring_relation_superset_rule(ledger):
    ledger.charge("alice", noise_multiplier=10.0, attributes=["a"])
    ledger.charge("alice", noise_multiplier=10.0, attributes=["b", "a"])  # superset: fine
    ledger.charge("alice", noise_multiplier=10.0, attributes=["c"], scope="latent")  # latent covers everything
    with pytest.raises(ValueError, match=r"omits \['a'\]"):
        ledger.charge("alice", noise_multiplier=10.0, attributes=["b"])
    assert len(ledger.history("alice")) == 3

    ledger.charge("carol", noise_multiplier=10.0, attributes=["a"], scope="latent")
    with pytest.raises(ValueError, match="scope='latent'"):
        ledger.charge("carol", noise_multiplier=10.0, attributes=["a", "b"])
    ledger.charge("carol", noise_multiplier=10.0, attributes=["a"], scope="latent")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(noise_multiplier=-1.0), "noise_multiplier must be finite and >= 0"),
        (dict(noise_multiplier=float("nan")), "noise_multiplier must be finite and >= 0"),
        (dict(noise_multiplier=float("inf")), "noise_multiplier must be finite and >= 0"),
        (dict(attributes="a"), "not one string"),
        (dict(attributes=[]), "non-empty"),
        (dict(attributes=["a", "a"]), "unique"),
        (dict(scope="image"), "scope must be one of"),
        (dict(note=3), "note must be None or a str"),
    ],
)
def test_charge_rejects(ledger, kwargs, match):
    base = dict(noise_multiplier=2.0, attributes=["a"])
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ledger.charge("alice", **base)
    assert ledger.history("alice") == []


def test_constructor_rejects(tmp_path):
    with pytest.raises(ValueError, match="budget_epsilon must be finite and > 0"):
        PrivacyLedger(tmp_path / "a.sqlite", budget_epsilon=0.0, delta=DELTA)
    with pytest.raises(ValueError, match="budget_epsilon must be finite and > 0"):
        PrivacyLedger(tmp_path / "a.sqlite", budget_epsilon=float("inf"), delta=DELTA)
    with pytest.raises(ValueError, match=r"delta must be in \(0, 1\)"):
        PrivacyLedger(tmp_path / "a.sqlite", budget_epsilon=1.0, delta=0.0)
    with pytest.raises(ValueError, match="a new ledger needs budget_epsilon and delta"):
        PrivacyLedger(tmp_path / "b.sqlite")
    assert not (tmp_path / "b.sqlite").exists()
    with pytest.raises(ValueError, match="subject_id must be a non-empty str"):
        PrivacyLedger(tmp_path / "c.sqlite", budget_epsilon=1.0, delta=DELTA).spent("")


_WORKER = textwrap.dedent(
    """
    import os, sys, time
    from dpdiffusion.privacy.ledger import BudgetExceededError, PrivacyLedger
    path, m, attempts, go = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    ledger = PrivacyLedger(path)
    open(go + "." + str(os.getpid()), "w").close()  # ready
    deadline = time.time() + 60
    while not os.path.exists(go) and time.time() < deadline:  # start together
        time.sleep(0.001)
    ok = 0
    for _ in range(attempts):
        try:
            ledger.charge("alice", noise_multiplier=m, attributes=["a"])
            ok += 1
        except BudgetExceededError:
            pass
    print(ok)
    """
)


def test_concurrent_processes_cannot_overspend(tmp_path):
    path, go = str(tmp_path / "shared.sqlite"), str(tmp_path / "go")
    m, fits, attempts = 20.0, 25, 15
    budget = gaussian_epsilon(sigma=compose_noise_multipliers([m] * fits), delta=DELTA)  # exactly 25 releases fit
    PrivacyLedger(path, budget_epsilon=budget, delta=DELTA)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    workers = [
        subprocess.Popen([sys.executable, "-c", _WORKER, path, str(m), str(attempts), go], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(3)
    ]
    deadline = time.time() + 60
    while len(list(tmp_path.glob("go.*"))) < len(workers) and time.time() < deadline:  # all workers ready
        time.sleep(0.01)
    open(go, "w").close()
    results = [w.communicate(timeout=120) for w in workers]
    assert all(w.returncode == 0 for w in workers), [err for _, err in results]
    successes = [int(out.strip()) for out, _ in results]
    assert sum(successes) == fits  # 45 attempts, exactly 25 recorded, whoever won them
    ledger = PrivacyLedger(path)
    assert len(ledger.history("alice")) == fits
    assert ledger.spent("alice") <= budget
