"""The storage commitment transactions SynthIQ passed on, shared by every runproxy process
and host through the database: a backend's report for one may reach any of them."""

from __future__ import annotations

import datetime as dt
import json

from routing.models import CommitmentReport, CommitmentTransaction
from routing.relay.commitment import Report, Transaction

# A transaction nobody closed (its process stopped while gathering) is forgotten after this.
TRANSACTIONS_KEPT = dt.timedelta(days=1)


class DatabaseCommitmentStore:
    """``routing.relay.commitment.CommitmentStore`` on the database."""

    def open(self, transaction: Transaction) -> None:
        CommitmentReport.objects.filter(transaction_uid=transaction.transaction_uid).delete()
        CommitmentTransaction.objects.update_or_create(
            transaction_uid=transaction.transaction_uid,
            defaults={"pool_id": transaction.pool_id, "requester_ae": transaction.requester_ae,
                      "called_ae": transaction.called_ae, "merged": transaction.merged,
                      "created_utc": dt.datetime.now(dt.UTC)})

    def get(self, transaction_uid: str) -> Transaction | None:
        row = CommitmentTransaction.objects.filter(transaction_uid=transaction_uid).first()
        if row is None:
            return None
        return Transaction(row.transaction_uid, row.pool_id, row.requester_ae, row.called_ae, row.merged)

    def add_report(self, transaction_uid: str, report: Report) -> None:
        CommitmentReport.objects.create(transaction_uid=transaction_uid, backend=report.backend[:64],
                                        committed=json.dumps(report.committed), failed=json.dumps(report.failed),
                                        received_utc=dt.datetime.now(dt.UTC))

    def reports(self, transaction_uid: str) -> list[Report]:
        return [Report(row.backend, [(c, i) for c, i in json.loads(row.committed)],
                       [(c, i, int(r)) for c, i, r in json.loads(row.failed)])
                for row in CommitmentReport.objects.filter(transaction_uid=transaction_uid).order_by("id")]

    def close(self, transaction_uid: str) -> None:
        CommitmentReport.objects.filter(transaction_uid=transaction_uid).delete()
        CommitmentTransaction.objects.filter(transaction_uid=transaction_uid).delete()


def commitments_purge(*, now: dt.datetime) -> int:
    """Forget transactions older than TRANSACTIONS_KEPT and their reports."""
    old = list(CommitmentTransaction.objects.filter(created_utc__lt=now - TRANSACTIONS_KEPT)
               .values_list("transaction_uid", flat=True)[:10000])
    CommitmentReport.objects.filter(transaction_uid__in=old).delete()
    deleted, _ = CommitmentTransaction.objects.filter(transaction_uid__in=old).delete()
    CommitmentReport.objects.filter(received_utc__lt=now - TRANSACTIONS_KEPT).delete()
    return deleted
