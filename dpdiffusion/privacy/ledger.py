"""`PrivacyLedger`: a persistent, crash-safe per-subject privacy budget that refuses overspending.

Every release of the weighted Gaussian mechanism is, after whitening, one Gaussian mechanism with noise multiplier
m at unit sensitivity (`dpdiffusion.privacy.mechanism`), i.e. one `GaussianDpEvent(m)`. The ledger stores the
multiplier of each release of each subject and composes them exactly: Gaussian mechanisms compose to one Gaussian
mechanism with multiplier (sum_j m_j^-2)^(-1/2) (Gaussian DP, Dong, Roth & Su 2019, Corollary 3.3), whose epsilon at
the ledger's delta is exact (`gaussian_epsilon`, Balle & Wang 2018). This is tighter than RDP composition and equal
to what an ideal PLD accountant gives.

Neighbouring relation. Composition is only meaningful under one relation, so a subject's relation is fixed by its
first release: attribute-neighbours for the first release's attribute set S (scope "attributes"), or any pair of
images (scope "latent"). A later release must be DP for that relation: scope "latent" always is; scope "attributes"
is if it protects a superset of S (pairs differing only in S also differ only in the superset), and never after a
"latent" first release.

Guarantees. Each release records its guarantee ("formal", "heuristic" for a DDIM-inverted stochastic code,
"none (reproducible noise)" for seeded noise; "none (epsilon = inf)" is never recorded, since a release without noise
costs an infinite epsilon and is always refused). Every release counts towards the budget, whatever its guarantee (the
budget is never overspent), but the totals are reported separately: `spent(subject)` composes all of a subject's
releases, `spent(subject, guarantee="formal")` only its formal ones, and `guarantee(subject)` is the weakest
guarantee among its releases, the one that qualifies the composed total. Releases recorded by a ledger older than
this column are "unrecorded" and qualify the total like a heuristic one.

Storage: sqlite in WAL mode with synchronous=FULL; each charge runs in one `BEGIN IMMEDIATE` transaction (read the
subject's releases, check the budget, insert), so concurrent processes are serialised and can never together
overspend, and a crash leaves either the whole release recorded or nothing. The budget and delta are stored in the
database; reopening with different values is an error. The storage lives in `ledger_store`, the records
(`Release`, `BudgetExceededError`) and argument checks in `ledger_records`.
"""

from __future__ import annotations

import json
import math
import os
from datetime import datetime, timezone
from typing import List, Optional, Sequence

from .accounting import compose_noise_multipliers, gaussian_epsilon
from .ledger_records import (
    GUARANTEE_RANK,
    BudgetExceededError,
    Release,
    check_attributes,
    check_guarantee,
    check_multiplier,
    check_real,
    check_relation,
    check_subject,
)
from .ledger_store import connect, open_store, read_multipliers, transaction
from .spec import SCOPES, PrivacySpec

__all__ = ["BudgetExceededError", "PrivacyLedger", "Release"]


class PrivacyLedger:
    r"""Per-subject privacy budget in an sqlite file; refuses any release that would exceed the budget.

    Args:
        path (`str` or `os.PathLike`):
            The sqlite file (created if missing).
        budget_epsilon (`float`, *optional*):
            Total epsilon each subject may spend, finite and > 0. Required for a new ledger; for an existing one
            it may be omitted, and must equal the stored value if given.
        delta (`float`, *optional*):
            The delta at which spending is measured, in (0, 1). Same rules as `budget_epsilon`.

    Raises:
        ValueError: on out-of-range arguments, or if they differ from those stored in an existing ledger.

    Example:

    ```py
    >>> import tempfile, os
    >>> from dpdiffusion.privacy.ledger import PrivacyLedger, BudgetExceededError
    >>> from dpdiffusion.privacy.accounting import gaussian_sigma
    >>> path = os.path.join(tempfile.mkdtemp(), "ledger.sqlite")
    >>> ledger = PrivacyLedger(path, budget_epsilon=1.5, delta=1e-5)
    >>> m = gaussian_sigma(epsilon=1.0, delta=1e-5)       # one release at epsilon = 1
    >>> round(ledger.charge("alice", noise_multiplier=m, attributes=["dark_skin"]), 4)
    0.5
    >>> round(ledger.charge("alice", noise_multiplier=m, attributes=["dark_skin"]), 4)   # two compose to 1.4652
    0.0348
    >>> try:
    ...     ledger.charge("alice", noise_multiplier=m, attributes=["dark_skin"])
    ... except BudgetExceededError:
    ...     print("refused")
    refused

    ```
    """

    def __init__(self, path, budget_epsilon: Optional[float] = None, delta: Optional[float] = None):
        if not isinstance(path, (str, bytes, os.PathLike)):
            raise ValueError(f"path must be a file path, got path={path!r}")
        self._path = os.fsdecode(path)
        if self._path == ":memory:" or not self._path:
            raise ValueError(f"path must be a file path (the ledger is shared between processes), got {self._path!r}")
        folder = os.path.dirname(os.path.abspath(self._path))
        if os.path.isdir(self._path) or not os.path.isdir(folder):
            raise ValueError(f"path must name a file in an existing folder, got path={self._path!r}")
        if budget_epsilon is not None:
            budget_epsilon = check_real("budget_epsilon", budget_epsilon)
            if not 0.0 < budget_epsilon < math.inf:
                raise ValueError(f"budget_epsilon must be finite and > 0, got budget_epsilon={budget_epsilon}")
        if delta is not None:
            delta = check_real("delta", delta)
            if not 0.0 < delta < 1.0:
                raise ValueError(f"delta must be in (0, 1), got delta={delta}")
        if not os.path.exists(self._path) and (budget_epsilon is None or delta is None):
            raise ValueError(f"a new ledger needs budget_epsilon and delta; {self._path} does not exist")

        self._budget_epsilon, self._delta = open_store(self._path, budget_epsilon, delta)

    # -- properties ---------------------------------------------------------------------------------------------

    @property
    def path(self) -> str:
        """The sqlite file."""
        return self._path

    @property
    def budget_epsilon(self) -> float:
        """Total epsilon each subject may spend."""
        return self._budget_epsilon

    @property
    def delta(self) -> float:
        """The delta at which epsilon is measured."""
        return self._delta

    # -- sqlite plumbing ----------------------------------------------------------------------------------------

    def _connect(self):
        return connect(self._path)  # a fresh connection per operation: safe across threads and forked processes

    def _epsilon_of(self, multipliers: Sequence[float]) -> float:
        if not multipliers:
            return 0.0
        return gaussian_epsilon(sigma=compose_noise_multipliers(multipliers), delta=self._delta)

    # -- queries ------------------------------------------------------------------------------------------------

    def spent(self, subject_id: str, *, guarantee: Optional[str] = None) -> float:
        """Epsilon the subject has spent at the ledger's delta (0.0 for an unknown subject).

        Args:
            subject_id (`str`): the subject.
            guarantee (`str`, *optional*): compose only the releases with this guarantee (e.g. `"formal"`); by
                default all of them, the total the budget is checked against.

        Returns:
            `float`: exact composed epsilon of the selected releases.
        """
        subject_id = check_subject(subject_id)
        if guarantee is not None:
            guarantee = check_guarantee(guarantee, allow_unrecorded=True)
        with self._connect() as conn:
            return self._epsilon_of(read_multipliers(conn, subject_id, guarantee))

    def guarantee(self, subject_id: str) -> Optional[str]:
        """The weakest guarantee among the subject's releases (`None` before its first release): the guarantee that
        qualifies `spent(subject_id)`."""
        subject_id = check_subject(subject_id)
        with self._connect() as conn:
            kinds = {r[0] for r in conn.execute(
                "SELECT DISTINCT guarantee FROM releases WHERE subject_id = ?", (subject_id,)).fetchall()}
        return max(kinds, key=GUARANTEE_RANK.__getitem__) if kinds else None

    def remaining(self, subject_id: str) -> float:
        """Epsilon the subject has left: max(0, budget_epsilon - spent)."""
        return max(0.0, self._budget_epsilon - self.spent(subject_id))

    def preview(self, subject_id: str, *, noise_multiplier: float) -> float:
        """Total epsilon the subject would have spent after a release with `noise_multiplier` (nothing written).

        Args:
            subject_id (`str`): the subject.
            noise_multiplier (`float`): multiplier m >= 0 of the hypothetical release (0 gives `inf`).

        Returns:
            `float`: epsilon after the release, at the ledger's delta.
        """
        subject_id = check_subject(subject_id)
        m = check_multiplier(noise_multiplier)
        with self._connect() as conn:
            return self._epsilon_of(read_multipliers(conn, subject_id) + [m])

    def would_exceed(self, subject_id: str, *, noise_multiplier: float) -> bool:
        """Whether a release with `noise_multiplier` would be refused (nothing written)."""
        return self.preview(subject_id, noise_multiplier=noise_multiplier) > self._budget_epsilon

    def min_noise_multiplier(self, subject_id: str) -> float:
        """Smallest multiplier the subject's next release may have and still fit the budget (`inf` if spent).

        The strongest next release: with m returned, `charge(subject_id, noise_multiplier=m, ...)` succeeds (unless
        another process charges first).

        Returns:
            `float`: the multiplier.
        """
        from .accounting import gaussian_sigma

        subject_id = check_subject(subject_id)
        with self._connect() as conn:
            multipliers = read_multipliers(conn, subject_id)
        total = gaussian_sigma(epsilon=self._budget_epsilon, delta=self._delta)
        used = math.fsum(1.0 / (m * m) for m in multipliers)
        left = 1.0 / (total * total) - used
        if left <= 0.0:
            return math.inf
        m = 1.0 / math.sqrt(left)
        step = 2.0**-52
        while self._epsilon_of(multipliers + [m]) > self._budget_epsilon:
            m *= 1.0 + step
            step *= 2.0
            if m == math.inf:
                break
        return m

    def history(self, subject_id: str) -> List[Release]:
        """The subject's recorded releases, oldest first."""
        subject_id = check_subject(subject_id)
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT release_id, subject_id, noise_multiplier, epsilon, spent_after, attributes, scope, note, "
                "created_at, guarantee FROM releases WHERE subject_id = ? ORDER BY release_id",
                (subject_id,),
            ).fetchall()
        return [
            Release(r[0], r[1], float(r[2]), float(r[3]), float(r[4]), tuple(json.loads(r[5])), r[6], r[7], r[8], r[9])
            for r in rows
        ]

    def subjects(self) -> List[str]:
        """All subjects with at least one release."""
        with self._connect() as conn:
            return [r[0] for r in conn.execute("SELECT subject_id FROM subjects ORDER BY subject_id").fetchall()]

    # -- charging -----------------------------------------------------------------------------------------------

    def charge(
        self,
        subject_id: str,
        *,
        noise_multiplier: float,
        attributes: Sequence[str],
        scope: str = "attributes",
        note: Optional[str] = None,
        guarantee: str = "formal",
    ) -> float:
        """Record one release of `subject_id` and return the epsilon left; refuse it if it would exceed the budget.

        Runs in one `BEGIN IMMEDIATE` transaction: concurrent charges from any number of processes are serialised.

        Args:
            subject_id (`str`): the subject.
            noise_multiplier (`float`): multiplier m of the composed mechanism (`NoiseCalibration.noise_multiplier`).
            attributes (`Sequence[str]`): protected attributes of the release.
            scope (`str`, *optional*, defaults to `"attributes"`): `"attributes"` or `"latent"`.
            note (`str`, *optional*): free text stored with the release.
            guarantee (`str`, *optional*, defaults to `"formal"`): the release's guarantee, one of
                `dpdiffusion.privacy.spec.GUARANTEES` (e.g. `PrivacyReport.guarantee`); recorded with it.

        Returns:
            `float`: remaining epsilon of the subject after the release.

        Raises:
            BudgetExceededError: if the release would push the subject above `budget_epsilon` (including any
                release with noise_multiplier=0, whose cost is infinite); nothing is written.
            ValueError: on bad arguments, or if the release does not protect the subject's neighbouring relation
                (see the module docstring).
        """
        return self.charge_many([subject_id], noise_multiplier=noise_multiplier, attributes=attributes, scope=scope,
                                note=note, guarantee=guarantee)[0]

    def charge_many(
        self,
        subject_ids: Sequence[str],
        *,
        noise_multiplier: float,
        attributes: Sequence[str],
        scope: str = "attributes",
        note: Optional[str] = None,
        guarantee: str = "formal",
    ) -> List[float]:
        """Record one release for each entry of `subject_ids` (e.g. a batch of images), all or nothing.

        One `BEGIN IMMEDIATE` transaction: if any subject cannot afford its release (or its neighbouring relation
        is not protected) nothing at all is recorded. A subject listed twice is charged twice.

        Args:
            subject_ids (`Sequence[str]`): one subject per released image.
            noise_multiplier, attributes, scope, note, guarantee: as in `charge`, shared by all releases.

        Returns:
            `list[float]`: remaining epsilon of each listed subject after the whole batch, in order.

        Raises:
            BudgetExceededError, ValueError: as `charge`; nothing is written.
        """
        if isinstance(subject_ids, str):
            raise ValueError(f"subject_ids must be a sequence of str, not one string; use [{subject_ids!r}]")
        subject_ids = [check_subject(s) for s in subject_ids]
        if not subject_ids:
            raise ValueError("subject_ids must be non-empty")
        m = check_multiplier(noise_multiplier)
        attributes = check_attributes(attributes)
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got scope={scope!r}")
        if note is not None and not isinstance(note, str):
            raise ValueError(f"note must be None or a str, got note={note!r}")
        guarantee = check_guarantee(guarantee)
        release_epsilon = self._epsilon_of([m])

        with self._connect() as conn, transaction(conn):
            pending = {}  # subject -> multipliers including this batch's releases so far
            rows = []
            for subject_id in subject_ids:
                if subject_id not in pending:
                    row = conn.execute(
                        "SELECT scope, attributes FROM subjects WHERE subject_id = ?", (subject_id,)
                    ).fetchone()
                    if row is not None:
                        check_relation(subject_id, row[0], tuple(json.loads(row[1])), scope, attributes)
                    pending[subject_id] = (row is None, read_multipliers(conn, subject_id))
                is_new, multipliers = pending[subject_id]
                spent = self._epsilon_of(multipliers)
                after = self._epsilon_of(multipliers + [m])
                if not after <= self._budget_epsilon:
                    raise BudgetExceededError(
                        subject_id=subject_id,
                        budget_epsilon=self._budget_epsilon,
                        delta=self._delta,
                        spent_epsilon=spent,
                        release_epsilon=release_epsilon,
                        epsilon_after=after,
                        noise_multiplier=m,
                    )
                multipliers.append(m)
                rows.append((subject_id, after))
            now = datetime.now(timezone.utc).isoformat()
            conn.executemany(
                "INSERT INTO subjects (subject_id, scope, attributes, created_at) VALUES (?, ?, ?, ?)",
                [(s, scope, json.dumps(list(attributes)), now) for s, (is_new, _) in pending.items() if is_new],
            )
            conn.executemany(
                "INSERT INTO releases (subject_id, noise_multiplier, epsilon, spent_after, attributes, scope, note, "
                "created_at, guarantee) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(s, m, release_epsilon, after, json.dumps(list(attributes)), scope, note, now, guarantee)
                 for s, after in rows],
            )
        final = {s: self._epsilon_of(multipliers) for s, (_, multipliers) in pending.items()}
        return [max(0.0, self._budget_epsilon - final[s]) for s in subject_ids]

    def charge_spec(self, subject_id: str, spec: PrivacySpec, *, note: Optional[str] = None) -> float:
        """`charge` a release made with `spec` (multiplier `gaussian_sigma(spec.epsilon, spec.delta)`).

        The cost is measured at the ledger's delta, whatever `spec.delta` is. The release is recorded with
        `spec.guarantee` (a heuristic or seeded release costs the same epsilon but qualifies the total; see the
        module docstring).

        Returns:
            `float`: remaining epsilon of the subject.

        Raises:
            BudgetExceededError, ValueError: as `charge`.
        """
        if not isinstance(spec, PrivacySpec):
            raise ValueError(f"spec must be a PrivacySpec, got {type(spec).__name__}")
        return self.charge(
            subject_id, noise_multiplier=spec.noise_multiplier, attributes=spec.attributes, scope=spec.scope, note=note,
            guarantee=spec.guarantee,
        )
