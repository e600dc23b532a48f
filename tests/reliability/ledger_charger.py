"""Charge a `PrivacyLedger` in a loop until killed, acknowledging each committed release on stdout.

Usage: ``python ledger_charger.py LEDGER_PATH SUBJECT NOISE_MULTIPLIER``. Release j carries ``note=str(j)``; j starts
at the number of releases the subject already has (so a rerun after a kill continues the sequence). The line
``j`` is printed and flushed only after ``charge`` has returned, i.e. after the transaction committed.
"""

from __future__ import annotations

import sys

from dpdiffusion.privacy.ledger import PrivacyLedger


def main() -> None:
    path, subject, multiplier = sys.argv[1], sys.argv[2], float(sys.argv[3])
    ledger = PrivacyLedger(path)
    j = len(ledger.history(subject))
    print(f"start {j}", flush=True)
    while True:
        ledger.charge(subject, noise_multiplier=multiplier, attributes=["dark_skin"], note=str(j))
        print(j, flush=True)  # acknowledged: committed before this line was written
        j += 1


if __name__ == "__main__":
    main()
