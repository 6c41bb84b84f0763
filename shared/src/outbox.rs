//! Outbox: every external effect, claimed with a lease, retried with back-off, dead-lettered.
